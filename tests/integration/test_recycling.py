"""Worker recycling (``--max-tasks-per-process``, ``--max-memory-per-process``): a process is
replaced between tasks and nothing is lost.

Real ``shoal worker`` supervisors run ``recycling_tasks``; each execution records the process
that ran it and the message's delivery count then (1 unless a lease lapsed: a handback does not
count a delivery)."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter
from collections.abc import Callable

import pytest
import redis
from processes import WorkerProcess
from recycling_tasks import QUEUE, deliveries_key, pids_key, runs_key

from helpers import RunningWorker, wait_for
from shoal import App
from shoal.protocol.server import free_port
from shoal.recycling import RecycleLimits
from shoal.worker import Worker

APP = "recycling_tasks:app"


def _executions(client: redis.Redis) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """Per task id: runs, the pid of the (last) process that ran it, its delivery count."""

    def read(key: str) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in client.hgetall(key).items()}

    return read(runs_key("shoal")), read(pids_key("shoal")), read(deliveries_key("shoal"))


def _whole_log(proc: WorkerProcess) -> str:
    proc.log()  # flushes
    return proc.log_path.read_text(errors="replace")


@pytest.mark.parametrize("task", ["recycling.record", "recycling.record_async"])
def test_recycling_replaces_a_process_after_n_tasks_with_nothing_lost(
    task: str,
    producer: App,
    redis_url: str,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    # Given 200 quick tasks and 2 worker processes, each replaced after 25 tasks
    ids = [f"t{i:03d}" for i in range(200)]
    producer.remote(task, queue=QUEUE).enqueue_many([(task_id,) for task_id in ids])
    concurrency = 4
    sup = worker_process(
        redis_url,
        "--processes", "2", "--concurrency", str(concurrency), "--queues", QUEUE,
        "--max-tasks-per-process", "25",
        app_spec=APP,
    )  # fmt: skip

    # When they have run them all
    wait_for(
        lambda: (
            len(_executions(redis_client)[0]) == len(ids) and not producer.measure(QUEUE).in_flight
        ),
        timeout=90,
        message="all 200 tasks to run",
    )

    # Then each ran exactly once, on its first delivery (no lease lapsed), in 8 processes or
    # more, none of which ran more than its 25 plus what its other slots were running
    runs, pids, deliveries = _executions(redis_client)
    assert runs == dict.fromkeys(ids, 1)
    assert deliveries == dict.fromkeys(ids, 1)
    per_process = Counter(pids.values())
    assert len(per_process) >= 8, per_process
    assert max(per_process.values()) <= 25 + concurrency - 1, per_process
    stats = producer.measure(QUEUE)
    assert (stats.completed, stats.waiting, stats.dead) == (200, 0, 0)
    # and the supervisor replaced them as recycles, not crashes
    log = _whole_log(sup)
    recycled = re.findall(r"of 2\) recycled after (\d+) tasks; starting a replacement", log)
    assert len(recycled) >= 6, log[-3000:]
    assert all(25 <= int(n) <= 25 + concurrency - 1 for n in recycled), recycled
    assert "exited with" not in log, log[-3000:]


def test_a_recycled_process_hands_back_what_it_leased_ahead_at_once(
    producer: App,
    redis_url: str,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    # Given one worker process (one slot: quick tasks are leased one ahead), replaced every 20
    # tasks, with a lease long enough that a message left to lapse would stall the run
    ids = [f"t{i:03d}" for i in range(100)]
    producer.remote("recycling.record", queue=QUEUE).enqueue_many([(t,) for t in ids])
    port = free_port()
    sup = worker_process(
        redis_url,
        "--processes", "1", "--concurrency", "1", "--queues", QUEUE,
        "--max-tasks-per-process", "20", "--metrics-port", str(port),
        app_spec=APP,
        SHOAL_LEASE="60", SHOAL_HEARTBEAT="2",
    )  # fmt: skip

    # When they have all run
    wait_for(
        lambda: (
            len(_executions(redis_client)[0]) == len(ids) and not producer.measure(QUEUE).in_flight
        ),
        timeout=45,
        message="all 100 tasks to run",
    )

    # Then what each recycled process had leased ahead was handed back and ran on its first
    # delivery in the replacement, never after its lease lapsed
    runs, pids, deliveries = _executions(redis_client)
    assert runs == dict.fromkeys(ids, 1)
    assert deliveries == dict.fromkeys(ids, 1)
    assert max(Counter(pids.values()).values()) == 20, (Counter(pids.values()), sup.log())
    log = _whole_log(sup)
    assert "handing back 1 message(s) leased ahead on recycling" in log, log[-3000:]
    assert len(re.findall(r"\(process 1 of 1\) recycled after 20 tasks; starting a", log)) >= 4
    # and Prometheus counts the recycles by reason
    scraped = wait_for(
        lambda: _scrape(port, 'shoal_worker_recycles_total{reason="tasks"}') >= 4,
        message="the recycles on /metrics",
    )
    assert scraped
    assert _scrape(port, 'shoal_worker_recycles_total{reason="memory"}') == 0


def _scrape(port: int, series: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return -1.0


def test_a_process_over_its_memory_limit_is_replaced_with_nothing_lost(
    producer: App,
    redis_url: str,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    # Given tasks that each leak 20 MiB, and processes replaced past 150 MiB
    ids = [f"t{i:03d}" for i in range(24)]
    producer.remote("recycling.leak", queue=QUEUE).enqueue_many([(t, 20) for t in ids])
    sup = worker_process(
        redis_url,
        "--processes", "1", "--concurrency", "2", "--queues", QUEUE,
        "--max-memory-per-process", "150",
        app_spec=APP,
    )  # fmt: skip

    # When they have all run
    wait_for(
        lambda: (
            len(_executions(redis_client)[0]) == len(ids) and not producer.measure(QUEUE).in_flight
        ),
        timeout=60,
        message="all 24 leaky tasks to run",
    )

    # Then the process was replaced as it grew, and each task ran once
    runs, pids, deliveries = _executions(redis_client)
    assert runs == dict.fromkeys(ids, 1)
    assert deliveries == dict.fromkeys(ids, 1)
    assert len(set(pids.values())) >= 2, pids
    log = _whole_log(sup)
    reached = re.findall(r"recycled after reaching (\d+) MiB \(limit 150\)", log)
    assert reached, log[-3000:]
    assert all(int(mib) > 150 for mib in reached), reached
    assert "exited with" not in log, log[-3000:]


def test_an_in_process_worker_returns_at_its_limit_and_hands_back_the_rest(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    ran: list[int] = []

    @app.task(queue="recycle-here")
    def job(n: int) -> None:
        ran.append(n)

    # Given 30 messages and a worker (4 slots) to be recycled after 5 tasks
    job.enqueue_many([(n,) for n in range(30)])
    limits = RecycleLimits(max_tasks=5)
    running = RunningWorker(Worker(app, ["recycle-here"], concurrency=4, recycle=limits))

    # When it runs
    worker = running.start().join(30)

    # Then it stopped by itself with the reason, having finished at most its slots' worth past
    # 5; at once, everything else waits again, nothing is left leased
    assert worker.recycled is not None
    assert (worker.recycled.reason, worker.recycled.limit) == ("tasks", 5)
    assert 5 <= len(ran) == worker.processed <= 5 + 4 - 1
    stats = app.measure("recycle-here")
    assert (stats.completed, stats.in_flight, stats.waiting) == (len(ran), 0, 30 - len(ran))
