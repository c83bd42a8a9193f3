"""Drills on Redis itself: restarted mid-run (AOF, ``appendfsync always``), and paused for three
leases while long tasks run. Workers must ride both out in the same processes, lose nothing,
and never run one message on two workers at once."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import chaos_ledger
import pytest
import redis
from chaos_drills import Fleet, completed_at_least, delivery_problems, measure, settle
from chaos_tasks import QUEUE
from processes import WorkerProcess

from helpers import wait_for
from shoal import App
from shoal.protocol.server import LocalRedis

FAST_LEASE = {"SHOAL_LEASE": "2", "SHOAL_HEARTBEAT": "0.5"}
REDIS_TROUBLE = ("Redis unavailable", "Redis error", "failed (")
"""What a worker logs when Redis stops answering (fetch, heartbeat, ack)."""
WATCHDOG = "has not looped for"
"""The supervisor's log line when it kills a worker process whose loop stopped ticking."""
REPLACED = "starting a replacement"


def outage_over(
    fleet: Fleet, workers: list[WorkerProcess], sizes: list[int], until: float
) -> Callable[[], bool]:
    """It is ``until`` (epoch seconds) or later, and every worker has logged Redis trouble
    since its log had ``sizes`` characters."""

    def check() -> bool:
        return time.time() >= until and all(
            any(s in fleet.log(w)[size:] for s in REDIS_TROUBLE)
            for w, size in zip(workers, sizes, strict=True)
        )

    return check


@pytest.mark.timeout(150)
def test_redis_restarted_mid_run_with_aof_loses_nothing(
    chaos_redis: Callable[..., LocalRedis],
    producer_for: Callable[..., App],
    fleet: Fleet,
    ledger_dir: Path,
    figures: Callable[..., None],
) -> None:
    tasks, task_s = 3000, 0.05
    server = chaos_redis("--appendonly", "yes", "--appendfsync", "always")
    producer = producer_for(server.url)

    # Given 3,000 tasks of 50 ms and two worker supervisors on a Redis with an fsync'd AOF
    ids = [f"r{n:05d}" for n in range(tasks)]
    work = producer.remote("chaos.work", queue=QUEUE)
    for start in range(0, tasks, 1000):
        work.enqueue_many([(i, task_s) for i in ids[start : start + 1000]])
    workers = [fleet.start(server.url, "--concurrency", "8", env=FAST_LEASE) for _ in range(2)]
    children = [wait_for(w.child_pids, timeout=30, message="a worker process") for w in workers]

    # When Redis is stopped mid-run, once cleanly (SIGTERM) for 1 s and once killed (SIGKILL)
    # for 3 s (longer than the lease), and started again on the same port and data, each time
    # once every worker has noticed
    in_flight: list[int] = []
    outages: list[tuple[float, float]] = []
    for n, (how, outage_s) in enumerate(((signal.SIGTERM, 1.0), (signal.SIGKILL, 3.0))):
        wait_for(
            completed_at_least(producer, QUEUE, tasks * (n + 1) // 3),
            timeout=60,
            message=f"progress before the {how.name} of Redis",
        )
        stats = measure(producer, QUEUE)
        in_flight.append(stats.in_flight if stats else 0)
        log_sizes = [len(fleet.log(w)) for w in workers]
        assert server.process is not None
        os.kill(server.process.pid, how)
        server.process.wait(10)
        down_at = time.time()
        server.stop(keep_data=True)
        wait_for(
            outage_over(fleet, workers, log_sizes, down_at + outage_s),
            timeout=20,
            message=f"an outage of {outage_s} s that every worker noticed",
        )
        server.start()
        outages.append((down_at, time.time()))

    # Then the same worker processes finish every task, and nothing is lost
    final, settled = settle(
        producer, QUEUE, lambda: not chaos_ledger.tally(ledger_dir, ids).lost, timeout=60
    )
    deaths = fleet.watch.deaths()
    tally = chaos_ledger.tally(ledger_dir, ids, deaths)
    runs = chaos_ledger.read(ledger_dir)
    recovery = [
        round(min((r.start for r in runs if r.start > up), default=float("nan")) - up, 2)
        for _, up in outages
    ]
    logs = "".join(fleet.log(w) for w in workers)
    figures(
        **tally.figures(),
        restarts=["SIGTERM", "SIGKILL"],
        outage_s=[round(up - down, 2) for down, up in outages],
        first_task_after_restart_s=recovery,
        in_flight_at_restarts=sum(in_flight),
        in_flight_per_restart=in_flight,
        dead=final.dead if final else None,
        completed=final.completed if final else None,
        worker_replacements=logs.count(REPLACED),
    )
    problems = delivery_problems(tally, final, settled, sum(in_flight), deaths, outages[0][0])
    if final is not None and final.completed != tasks:
        problems.append(f"{final.completed} completions counted, not {tasks}: an ack was lost")
    if [w.child_pids() for w in workers] != children or REPLACED in logs:
        problems.append(f"a worker process was replaced ({logs.count(REPLACED)} time(s))")
    assert not problems, "\n".join(problems)


@pytest.mark.timeout(150)
def test_redis_paused_beyond_the_lease_runs_no_task_twice_at_once(
    chaos_redis: Callable[..., LocalRedis],
    producer_for: Callable[..., App],
    fleet: Fleet,
    ledger_dir: Path,
    figures: Callable[..., None],
) -> None:
    lease_s, pause_s, task_s = 2.0, 6.0, 8.0
    server = chaos_redis()
    producer = producer_for(server.url)

    # Given two workers with room to spare, running ten 8 s tasks (half sync, half async)
    workers = [fleet.start(server.url, "--concurrency", "8", env=FAST_LEASE) for _ in range(2)]
    children = [wait_for(w.child_pids, timeout=30, message="a worker process") for w in workers]
    ids = [f"p{n:02d}" for n in range(10)]
    producer.remote("chaos.work", queue=QUEUE).enqueue_many([(i, task_s) for i in ids[:5]])
    producer.remote("chaos.work_async", queue=QUEUE).enqueue_many([(i, task_s) for i in ids[5:]])
    wait_for(
        lambda: {r.id for r in chaos_ledger.read(ledger_dir)} == set(ids),
        timeout=30,
        message="all ten tasks to start",
    )
    stats = measure(producer, QUEUE)
    in_flight = stats.in_flight if stats else 0

    # When Redis pauses every client for three leases
    with redis.Redis(port=server.port, socket_timeout=30) as admin:
        admin.execute_command("CLIENT", "PAUSE", int(pause_s * 1000), "ALL")
        paused_at = time.time()
        admin.ping()  # answered once the pause is over
        resumed_at = time.time()

    # Then every task completes, no two runs of one task overlap, and no worker was killed
    final, settled = settle(
        producer, QUEUE, lambda: not chaos_ledger.tally(ledger_dir, ids).lost, timeout=60
    )
    deaths = fleet.watch.deaths()
    tally = chaos_ledger.tally(ledger_dir, ids, deaths)
    logs = "".join(fleet.log(w) for w in workers)
    figures(
        **tally.figures(),
        lease_s=lease_s,
        pause_s=round(resumed_at - paused_at, 1),
        task_s=task_s,
        in_flight_at_pause=in_flight,
        watchdog_kills=logs.count(WATCHDOG),
        worker_replacements=logs.count(REPLACED),
        dead=final.dead if final else None,
    )
    problems = delivery_problems(tally, final, settled, in_flight, deaths, paused_at)
    if WATCHDOG in logs:
        problems.append(
            f"the supervisor killed a worker process waiting on Redis {logs.count(WATCHDOG)} "
            f"time(s) ('{WATCHDOG}')"
        )
    if [w.child_pids() for w in workers] != children:
        problems.append(
            f"worker processes replaced: {children} -> {[w.child_pids() for w in workers]}"
        )
    assert not problems, "\n".join(problems)
