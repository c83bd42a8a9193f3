"""Delivery promises at process level: SIGKILL, SIGTERM, fairness, Redis restarts, health, registry.

Workers here are real ``python -m shoal worker tasks_for_tests:app`` supervisors (see
``processes.py``); the tasks record each completed run in Redis (``runs``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import psutil
import pytest
import redis
from processes import WorkerProcess, runs, worker_env

from helpers import http_status, start_local_redis, wait_for
from shoal import App
from shoal.protocol.keys import worker_key, workers_key
from shoal.protocol.server import LocalRedis, free_port

QUEUE = "delivery"
FAST_LEASE = {"SHOAL_LEASE": "2", "SHOAL_HEARTBEAT": "0.5"}


@pytest.fixture
def private_redis() -> Iterator[LocalRedis]:
    """A redis-server of this test's own, for tests that stop and restart it."""
    server = start_local_redis()
    try:
        yield server
    finally:
        server.stop()


def enqueue_slow(app: App, count: int, seconds: float) -> list[str]:
    ids = [f"t{i:03d}" for i in range(count)]
    app.remote("slow", queue=QUEUE).enqueue_many([(task_id, seconds) for task_id in ids])
    return ids


def started(client: redis.Redis) -> set[str]:
    return {k.decode() for k in client.hkeys("shoal:test:started")}


def assert_drained(producer: App, client: redis.Redis, count: int) -> None:
    """A worker stopped mid-backlog finished every task it started and handed back the rest:
    nothing is left leased, and some of the ``count`` still wait."""
    assert started(client) == set(runs(client)), "every started task finished"
    stats = producer.measure(QUEUE)
    assert stats.in_flight == 0, "what it held was handed back, not left to its lease"
    assert stats.completed + stats.waiting == count, stats
    assert stats.waiting > 0, "the test stopped the worker after the end of the backlog"


def orphan_its_worker(sup: WorkerProcess) -> psutil.Process:
    """SIGKILL the supervisor alone, leaving its one worker process behind: that process."""
    (child,) = wait_for(sup.child_pids, message="the worker process to start")
    orphan = psutil.Process(child)
    os.kill(sup.pid, signal.SIGKILL)
    sup.popen.wait(10)
    return orphan


def wait_exited(proc: psutil.Process) -> None:
    wait_for(
        lambda: not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE,
        timeout=20,
        message=f"worker process {proc.pid} to exit",
    )


def test_sigkill_of_a_worker_process_loses_nothing(
    producer: App,
    redis_url: str,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    # Given 40 slow tasks and a supervisor with one worker process running 8 at a time
    ids = enqueue_slow(producer, 40, 0.3)
    sup = worker_process(
        redis_url, "--processes", "1", "--concurrency", "8", "--queues", QUEUE, **FAST_LEASE
    )
    (child,) = wait_for(sup.child_pids, message="the worker process to start")

    # When the worker process is SIGKILLed with tasks in flight
    wait_for(
        lambda: producer.measure(QUEUE).in_flight >= 4 and len(runs(redis_client)) >= 4,
        timeout=20,
        message="tasks in flight and some completed",
    )
    os.kill(child, signal.SIGKILL)
    lost_with_it = producer.measure(QUEUE).in_flight

    # Then the supervisor starts a replacement
    replacement = wait_for(
        lambda: sup.child_pids() - {child}, timeout=15, message="a replacement worker process"
    )
    assert child not in replacement
    assert sup.popen.poll() is None, sup.log()

    # And every task completes at least once: the leases of the dead process expired and
    # their messages ran again
    wait_for(lambda: set(runs(redis_client)) == set(ids), timeout=40, message="all 40 tasks to run")
    stats = wait_for(
        lambda: (s := producer.measure(QUEUE)).completed == 40 and s,
        timeout=10,
        message="40 completions",
    )
    assert (stats.waiting, stats.in_flight, stats.delayed, stats.dead) == (0, 0, 0, 0)
    assert lost_with_it >= 1
    assert stats.recovered >= 1, "the killed process's leases were recovered"
    assert all(n >= 1 for n in runs(redis_client).values())


def test_sigterm_drains_then_exits_zero_and_loses_nothing(
    producer: App,
    redis_url: str,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    # Given a supervisor busy with 40 slow tasks
    ids = enqueue_slow(producer, 40, 0.3)
    sup = worker_process(
        redis_url,
        "--processes", "1", "--concurrency", "4", "--queues", QUEUE,
        SHOAL_SHUTDOWN_GRACE="5",
    )  # fmt: skip
    wait_for(lambda: len(runs(redis_client)) >= 4, timeout=20, message="a few tasks to finish")

    # When it gets SIGTERM mid-run
    os.kill(sup.pid, signal.SIGTERM)

    # Then it exits 0 after finishing what it held, and nothing is left leased
    try:
        code = sup.popen.wait(45)
    except subprocess.TimeoutExpired:
        pytest.fail(f"supervisor ignored SIGTERM:\n{sup.log()}")
    assert code == 0, sup.log()
    assert sup.child_pids() == set()
    assert_drained(producer, redis_client, len(ids))

    # And a fresh burst worker runs the rest
    burst = worker_process(redis_url, "--burst", "--concurrency", "8", "--queues", QUEUE)
    assert burst.popen.wait(45) == 0, burst.log()
    assert set(runs(redis_client)) == set(ids)
    final = producer.measure(QUEUE)
    assert (final.completed, final.waiting, final.in_flight, final.dead) == (40, 0, 0, 0)


def test_a_worker_process_whose_supervisor_was_sigkilled_drains_and_exits(
    producer: App,
    redis_url: str,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    # Given a supervisor whose one worker process is busy with 40 slow tasks, under leases
    # long enough that a message left to lapse would still be in flight at the end
    ids = enqueue_slow(producer, 40, 0.3)
    sup = worker_process(
        redis_url,
        "--processes", "1", "--concurrency", "4", "--queues", QUEUE,
        SHOAL_LEASE="60", SHOAL_HEARTBEAT="2", SHOAL_SHUTDOWN_GRACE="5",
    )  # fmt: skip
    wait_for(lambda: len(runs(redis_client)) >= 4, timeout=20, message="a few tasks to finish")

    # When the supervisor alone is SIGKILLed (its worker process is left behind, an orphan)
    orphan = orphan_its_worker(sup)

    # Then the orphan notices, drains as on SIGTERM (finishes what it runs, hands back the
    # rest) and exits, instead of serving on with no supervisor to stop it
    wait_exited(orphan)
    assert "its supervisor" in sup.log() and "is gone" in sup.log(), sup.log()
    assert_drained(producer, redis_client, len(ids))


def test_a_worker_process_forked_as_its_supervisor_died_fetches_nothing(
    producer: App,
    redis_url: str,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    # Given tasks waiting, and a worker process still importing its task module (slowly)
    ids = enqueue_slow(producer, 5, 0.1)
    sup = worker_process(redis_url, "--processes", "1", "--queues", QUEUE, TEST_WORKER_BOOT_S="2")

    # When its supervisor is SIGKILLed before it has booted
    orphan = orphan_its_worker(sup)

    # Then it boots, sees it is an orphan before its first fetch, and exits having run nothing
    wait_exited(orphan)
    assert "is gone" in sup.log(), sup.log()
    assert runs(redis_client) == {}
    stats = producer.measure(QUEUE)
    assert (stats.waiting, stats.in_flight) == (len(ids), 0)


def test_a_busy_worker_does_not_starve_an_idle_one(
    make_app: Callable[..., App], worker: Callable[..., Any]
) -> None:
    # Two workers on one queue, in this process: A may run 1 task at a time, B several
    ran_by: dict[str, list[int]] = {"A": [], "B": []}
    release = threading.Event()
    a_busy = threading.Event()
    a_app, b_app = make_app(), make_app()

    def define(app: App, who: str) -> None:
        @app.task(name="long", queue="fair")
        def long() -> None:
            a_busy.set() if who == "A" else None
            assert release.wait(20)

        @app.task(name="short", queue="fair")
        def short(n: int) -> None:
            ran_by[who].append(n)

    define(a_app, "A")
    define(b_app, "B")
    a_held: list[int] = []

    # Given worker A busy on a long task
    a = worker(a_app, ["fair"], concurrency=1, burst=False)
    a_app.remote("long", queue="fair").enqueue()
    assert a_busy.wait(10)

    # When 20 short tasks arrive and worker B starts
    a_app.remote("short", queue="fair").enqueue_many([(n,) for n in range(20)])
    b = worker(b_app, ["fair"], concurrency=4, burst=False)

    # Then B runs all of them while A is still busy, and A never leases beyond its capacity
    def b_done() -> bool:
        a_held.append(a.worker.leases.count())
        return len(ran_by["B"]) == 20

    wait_for(b_done, timeout=20, message="worker B to run the 20 short tasks")
    assert not release.is_set()
    assert sorted(ran_by["B"]) == list(range(20))
    assert ran_by["A"] == []
    assert max(a_held) <= 1
    assert a_app.measure("fair").in_flight == 1

    release.set()
    wait_for(lambda: a_app.measure("fair").completed == 21, message="the long task to finish")
    a.stop()
    b.stop()


def test_worker_survives_a_redis_restart(
    private_redis: LocalRedis,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    url = private_redis.url
    app = App(redis_url=url, key_prefix="shoal")
    client = redis.Redis(port=private_redis.port)
    try:
        record = app.remote("record", queue=QUEUE)

        # Given a worker process that has run a task
        sup = worker_process(url, "--processes", "1", "--concurrency", "2", "--queues", QUEUE)
        record.enqueue("before")
        wait_for(lambda: "before" in runs(client), timeout=20, message="the first task")
        (child,) = sup.child_pids()

        # When Redis stops, and a new one starts on the same port
        private_redis.stop()
        restarted = LocalRedis(private_redis.port)
        private_redis.process, private_redis.dir = None, restarted.dir
        restarted.start()
        private_redis.process = restarted.process

        # Then the same worker process carries on with tasks enqueued after the restart
        ids = [f"after-{n}" for n in range(5)]
        record.enqueue_many([(i,) for i in ids])
        wait_for(
            lambda: set(ids) <= set(runs(client)), timeout=30, message="tasks after the restart"
        )
        assert sup.popen.poll() is None, sup.log()
        assert sup.child_pids() == {child}, "the worker process was not replaced"
    finally:
        client.close()
        app.close()


def test_health_endpoint(
    private_redis: LocalRedis, worker_process: Callable[..., WorkerProcess]
) -> None:
    port = free_port()
    sup = worker_process(
        private_redis.url, "--processes", "1", "--queues", QUEUE, "--health-port", str(port)
    )
    base = f"http://127.0.0.1:{port}"

    wait_for(sup.child_pids, timeout=15, message="the worker process")
    wait_for(lambda: http_status(f"{base}/livez") == 200, timeout=15, message="/livez 200")
    assert http_status(f"{base}/readyz") == 200
    assert http_status(f"{base}/nope") == 404

    private_redis.stop()
    wait_for(lambda: http_status(f"{base}/readyz") == 503, timeout=15, message="/readyz 503")
    assert sup.popen.poll() is None, sup.log()


def test_worker_registry_lists_live_workers(
    producer: App,
    redis_url: str,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    producer.remote("record", queue=QUEUE).enqueue("x")
    sup = worker_process(redis_url, "--processes", "1", "--queues", QUEUE)
    (child,) = wait_for(sup.child_pids, timeout=15, message="the worker process")

    # The registration: a ZSET entry and a JSON blob naming the queues
    (worker_id,) = wait_for(
        lambda: redis_client.zrange(workers_key("shoal"), 0, -1), message="a registered worker"
    )
    blob = redis_client.get(worker_key("shoal", worker_id.decode()))
    assert blob is not None
    registration = orjson.loads(blob)
    assert registration["queues"] == [QUEUE]
    assert registration["pid"] == child

    # `shoal info --workers` shows it
    env = worker_env(redis_url, COLUMNS="300")
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "info", "--workers", "--interval", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    row = next((line for line in done.stdout.splitlines() if str(child) in line), None)
    assert row is not None, done.stdout
    assert QUEUE in row

    # And a worker that stops deregisters
    os.kill(sup.pid, signal.SIGTERM)
    assert sup.popen.wait(30) == 0, sup.log()
    assert redis_client.zcard(workers_key("shoal")) == 0
    assert redis_client.get(worker_key("shoal", worker_id.decode())) is None
