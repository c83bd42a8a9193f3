"""Drill: a SIGKILL storm under load. Whole workers (supervisor and worker process, as when a
pod or node is lost) are killed while they run tasks, each replaced at once; nothing may be
lost, and every task that ran twice must have run first in a killed worker."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import chaos_ledger
import pytest
from chaos_drills import Fleet, completed_at_least, delivery_problems, measure, settle
from chaos_tasks import QUEUE

from helpers import wait_for
from shoal import App
from shoal.protocol.server import LocalRedis

TASKS = 4000
TASK_S = 0.1
KILLS = 6
FLEET = 3
CONCURRENCY = 8
LEASE = {
    "SHOAL_LEASE": "3",
    "SHOAL_HEARTBEAT": "0.5",
    # The poison guard (a message whose workers keep vanishing is dead-lettered after 3) has
    # tests of its own; here it must not fire. A killed worker's leases come back together and
    # the next fetch takes them all, and the drill kills the oldest worker, which is often the
    # one that took them: on a loaded machine one message was in 4 of the 6 killed workers.
    "SHOAL_MAX_LOST_DELIVERIES": str(KILLS),
}


@pytest.mark.timeout(180)
def test_sigkill_storm_under_load_loses_nothing(
    chaos_redis: Callable[..., LocalRedis],
    producer_for: Callable[..., App],
    fleet: Fleet,
    ledger_dir: Path,
    figures: Callable[..., None],
) -> None:
    server = chaos_redis()
    producer = producer_for(server.url)
    started_at = time.time()

    # Given 4,000 tasks of 0.1 s and three worker supervisors running 8 at a time each
    ids = [f"k{n:05d}" for n in range(TASKS)]
    work = producer.remote("chaos.work", queue=QUEUE)
    for start in range(0, TASKS, 1000):
        work.enqueue_many([(i, TASK_S) for i in ids[start : start + 1000]])
    workers = [
        fleet.start(server.url, "--concurrency", str(CONCURRENCY), env=LEASE) for _ in range(FLEET)
    ]

    # When the oldest worker is SIGKILLed six times while the backlog drains, each replaced
    in_flight: list[int] = []
    killed: set[int] = set()
    for n in range(KILLS):
        target = TASKS * (n + 1) // (KILLS + 2)
        wait_for(
            completed_at_least(producer, QUEUE, target),
            timeout=60,
            interval=0.05,
            message=f"{target} completions before kill {n + 1}",
        )
        victim = workers.pop(0)
        wait_for(victim.child_pids, timeout=30, message="the victim's worker process")
        stats = measure(producer, QUEUE)
        in_flight.append(stats.in_flight if stats else 0)
        killed |= {victim.pid, *victim.child_pids()}
        fleet.kill(victim)
        workers.append(fleet.start(server.url, "--concurrency", str(CONCURRENCY), env=LEASE))

    # Then every task completes, none is dead-lettered, and every re-run is explained
    final, settled = settle(
        producer, QUEUE, lambda: not chaos_ledger.tally(ledger_dir, ids).lost, timeout=90
    )
    tally = chaos_ledger.tally(ledger_dir, ids, fleet.watch.deaths())
    grouped = chaos_ledger.by_id(chaos_ledger.read(ledger_dir))
    unexplained = [
        (i, runs[k - 1], runs[k])
        for i, runs in grouped.items()
        for k in range(1, len(runs))
        if runs[k - 1].pid not in killed
    ]
    killed_runs = [r for r in chaos_ledger.read(ledger_dir) if r.pid in killed]
    figures(
        **tally.figures(),
        kills=KILLS,
        workers=FLEET,
        concurrency=CONCURRENCY,
        lease_s=float(LEASE["SHOAL_LEASE"]),
        in_flight_at_kills=sum(in_flight),
        in_flight_per_kill=in_flight,
        killed_mid_run=sum(1 for r in killed_runs if r.end is None),
        dead=final.dead if final else None,
        recovered_leases=final.recovered if final else None,
        seconds=round(time.time() - started_at, 1),
    )
    problems = delivery_problems(
        tally, final, settled, sum(in_flight), fleet.watch.deaths(), started_at
    )
    problems += [
        f"{i} ran again after {chaos_ledger.describe(a, started_at)}, in a worker never killed; "
        f"then {chaos_ledger.describe(b, started_at)}"
        for i, a, b in unexplained[:5]
    ]
    assert not problems, "\n".join(problems)
