"""Enqueue and execute against a real Redis: sync and async tasks, batches, results, delays."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from helpers import wait_for
from shoal import App, ResultTimeout, TaskFailed


def commandstats(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (INFO commandstats)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


@pytest.mark.every_topology
def test_sync_and_async_tasks_run(app: App, worker: Callable[..., Any]) -> None:
    seen: list[tuple[str, Any]] = []
    lock = threading.Lock()

    @app.task
    def add(a: int, b: int) -> None:
        with lock:
            seen.append(("sync", a + b))

    @app.task
    async def greet(name: str, *, punctuation: str = "!") -> None:
        seen.append(("async", f"hi {name}{punctuation}"))

    h1 = add.enqueue(2, 3)
    h2 = greet.enqueue("bob", punctuation="?")
    assert h1.id != h2.id
    assert app.measure(app.settings.default_queue).waiting == 2

    done = worker(app)

    assert sorted(seen) == [("async", "hi bob?"), ("sync", 5)]
    assert done.processed == 2
    stats = app.measure(app.settings.default_queue)
    assert (stats.waiting, stats.in_flight, stats.delayed, stats.dead) == (0, 0, 0, 0)
    assert (stats.enqueued, stats.completed) == (2, 2)


def test_enqueue_many_is_one_round_trip_and_all_run(
    app: App, worker: Callable[..., Any], redis_client: redis.Redis
) -> None:
    ran: list[int] = []
    lock = threading.Lock()

    @app.task(queue="batch")
    def square(n: int, *, offset: int = 0) -> None:
        with lock:
            ran.append(n * n + offset)

    # Given a producer whose connection and scripts are warm
    square.enqueue(0)
    before = commandstats(redis_client)

    # When it sends a batch of 50 (args tuples and a kwargs mapping)
    handles = square.enqueue_many([(n,) for n in range(1, 50)] + [{"n": 50, "offset": 1}])

    # Then exactly one command reached Redis: the enqueue script
    after = commandstats(redis_client)
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta = {k: v for k, v in delta.items() if v and k != "info"}
    assert delta.get("evalsha") == 1, delta
    # (commands run inside the script are counted too; none was sent on its own)
    assert set(delta) <= {
        "evalsha",
        "hexists",
        "hset",
        "lpush",
        "llen",
        "hincrby",
        "time",
        "publish",
    }
    assert len({h.id for h in handles}) == 50
    assert app.measure("batch").waiting == 51

    # And every message runs
    worker(app, ["batch"])
    assert sorted(ran) == sorted([0] + [n * n for n in range(1, 50)] + [2501])


def test_enqueue_many_of_nothing_sends_nothing(app: App) -> None:
    @app.task
    def noop() -> None: ...

    assert noop.enqueue_many([]) == []
    assert app.measure(app.settings.default_queue).enqueued == 0


@pytest.mark.every_topology
def test_results_are_stored_and_returned(app: App, worker: Callable[..., Any]) -> None:
    @app.task(store_result=True)
    def multiply(a: int, b: int) -> dict[str, int]:
        return {"product": a * b}

    @app.task(store_result=True)
    async def upper(s: str) -> str:
        return s.upper()

    h1 = multiply.enqueue(6, 7)
    h2 = upper.enqueue("shoal")
    worker(app)

    assert h1.result(timeout=5) == {"product": 42}
    assert h2.result(timeout=5) == "SHOAL"
    assert h1.result(timeout=5) == {"product": 42}, "reading a result does not consume it"


def test_result_of_a_dead_lettered_task_raises_task_failed(
    app: App, worker: Callable[..., Any]
) -> None:
    @app.task(store_result=True, max_retries=0)
    def broken() -> None:
        raise ValueError("no such user")

    handle = broken.enqueue()
    worker(app)
    with pytest.raises(TaskFailed, match="no such user"):
        handle.result(timeout=5)


def test_result_timeout_when_no_worker(app: App) -> None:
    @app.task(store_result=True)
    def never_run() -> int:
        return 1

    handle = never_run.enqueue()
    with pytest.raises(ResultTimeout) as info:
        handle.result(timeout=0.2)
    assert handle.id in str(info.value)
    assert app.measure(app.settings.default_queue).waiting == 1, "waiting did not consume it"


@pytest.mark.every_topology
def test_delayed_message_waits_in_redis_then_runs_once(
    app: App, worker: Callable[..., Any]
) -> None:
    ran: list[str] = []

    @app.task(queue="later")
    def remind(what: str) -> None:
        ran.append(what)

    remind.with_options(delay=0.3).enqueue("dentist")

    stats = app.measure("later")
    assert (stats.waiting, stats.delayed) == (0, 1)

    worker(app, ["later"])
    assert ran == ["dentist"]
    stats = app.measure("later")
    assert (stats.waiting, stats.delayed, stats.completed) == (0, 0, 1)


def test_per_message_timeout_override_is_carried(app: App, worker: Callable[..., Any]) -> None:
    outcomes: list[str] = []

    @app.task(queue="slowq", max_retries=0, timeout=30)
    async def sleepy() -> None:
        import asyncio

        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            outcomes.append("cancelled")
            raise

    sleepy.with_options(timeout=0.1).enqueue()
    worker(app, ["slowq"])
    assert outcomes == ["cancelled"]
    assert app.measure("slowq").dead == 1


@pytest.mark.parametrize(("sleep_s", "most_held"), [(0.03, 2), (0.0, 4)])
def test_a_worker_leases_ahead_only_for_short_tasks(
    app: App, worker: Callable[..., Any], sleep_s: float, most_held: int
) -> None:
    """Tasks over 5 ms: never more leased than slots (nothing waits in a busy worker while
    another could run it); short tasks: at most as many again, waiting a moment for a slot."""
    held: list[int] = []
    n = 40 if sleep_s else 400

    @app.task(queue="ahead")
    def job(i: int) -> None:
        held.append(running.worker.busy)  # leased by this worker and not yet finished
        time.sleep(sleep_s)

    job.enqueue_many([(i,) for i in range(n)])
    running = worker(app, ["ahead"], concurrency=2, burst=False)
    wait_for(lambda: app.measure("ahead").completed == n, message="every task to finish")
    running.stop()
    assert len(held) == n
    assert max(held) <= most_held
    if not sleep_s:
        assert max(held) > 2  # it did lease ahead


def test_a_sync_task_calling_sys_exit_fails_and_its_slot_goes_on(
    app: App, worker: Callable[..., Any]
) -> None:
    ran: list[int] = []

    @app.task(queue="exits", max_retries=0)
    def maybe_exit(i: int) -> None:
        if i == 0:
            sys.exit(3)
        ran.append(i)

    maybe_exit.enqueue_many([(i,) for i in range(5)])
    worker(app, ["exits"], concurrency=1)
    assert sorted(ran) == [1, 2, 3, 4]
    stats = app.measure("exits")
    assert (stats.dead, stats.in_flight, stats.waiting) == (1, 0, 0)
