"""Priorities (issue 18): lower runs first, nothing starves, the waiting list still counts
every ready message (KEDA reads its length), and every message runs exactly once."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from control_tasks import ran_key
from processes import WorkerProcess

from helpers import wait_for
from shoal import App
from shoal.errors import EnqueueError


def _ran(app: App) -> list[str]:
    return [i.decode() for i in app.broker.redis.lrange(ran_key(app.settings.key_prefix), 0, -1)]


def test_urgent_messages_enqueued_behind_low_ones_start_among_the_first_12(
    app: App, redis_url: str, key_prefix: str, worker_process: Callable[..., WorkerProcess]
) -> None:
    # Given 50 low-priority messages, then 10 urgent ones
    ranked = app.remote("ranked", queue="ranked")
    ranked.with_options(priority=9).enqueue_many([(f"low{i}",) for i in range(50)])
    ranked.with_options(priority=0).enqueue_many([(f"urgent{i}",) for i in range(10)])
    # (every one of them counts in the waiting list's length: what KEDA reads)
    assert app.broker.redis.llen(app.broker.keys("ranked").waiting) == 60

    # When a worker process runs the queue
    worker_process(
        redis_url,
        "--concurrency",
        "2",
        "--queues",
        "ranked",
        app_spec="control_tasks:app",
        SHOAL_KEY_PREFIX=key_prefix,
    )
    wait_for(lambda: len(_ran(app)) == 60, message="every message to run")

    # Then the urgent ones start among the first 12, and each message ran once
    order = _ran(app)
    assert {f"urgent{i}" for i in range(10)} <= set(order[:12]), order[:12]
    assert Counter(order) == Counter(
        [f"low{i}" for i in range(50)] + [f"urgent{i}" for i in range(10)]
    )
    # (a task records its run before its ack lands: wait for the acks)
    wait_for(lambda: app.measure("ranked").in_flight == 0, message="the last acks")
    assert app.measure("ranked").waiting == 0
    k = app.broker.keys("ranked")
    assert app.broker.redis.llen(k.waiting) == 0
    assert app.broker.redis.zcard(k.ready) == 0 and app.broker.redis.scard(k.stale) == 0


def test_order_is_by_priority_then_age_and_waiting_counts_exactly(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()
    order: list[str] = []

    @app.task(queue="order")
    def step(name: str) -> None:
        order.append(name)

    # Given plain messages around prioritized ones, all waiting
    step.enqueue("plain-a")
    step.with_options(priority=7).enqueue("p7-a")
    step.with_options(priority=2).enqueue("p2-a")
    step.enqueue("plain-b")
    step.with_options(priority=2).enqueue("p2-b")
    step.with_options(priority=5).enqueue("p5")  # the default: a plain message
    step.with_options(priority=9).enqueue("p9")
    assert app.measure("order").waiting == 7

    # When one worker slot runs them
    worker(app, ["order"], concurrency=1)

    # Then lower priorities first, the default among the plain ones, each in enqueue order
    assert order == ["p2-a", "p2-b", "plain-a", "plain-b", "p5", "p7-a", "p9"]
    assert app.measure("order").waiting == 0
    assert app.broker.redis.llen(app.broker.keys("order").waiting) == 0


def test_messages_of_one_priority_keep_their_enqueue_order_within_a_millisecond(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()
    order: list[int] = []

    @app.task(queue="same")
    def step(n: int) -> None:
        order.append(n)

    urgent = step.with_options(priority=1)
    urgent.enqueue_many([(n,) for n in range(50)])  # one script call: one millisecond
    for n in range(50, 80):
        urgent.enqueue(n)
    worker(app, ["same"], concurrency=1)
    assert order == list(range(80))


def test_a_random_mix_runs_exactly_once_and_leaves_nothing_behind(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()
    runs: Counter[int] = Counter()

    @app.task(queue="mix")
    def job(n: int) -> None:
        runs[n] += 1

    rng = random.Random(18)
    cancelled: set[int] = set()
    for n in range(400):
        priority = rng.choice([None, 0, 1, 5, 8, 9])
        sender = job if priority is None else job.with_options(priority=priority)
        if rng.random() < 0.1:
            sender = job.with_options(
                delay=0.05, **({} if priority is None else {"priority": priority})
            )
        handle = sender.enqueue(n)
        if rng.random() < 0.05 and handle.cancel() != "gone":
            cancelled.add(n)
    worker(app, ["mix"], concurrency=3)

    assert runs == Counter({n: 1 for n in range(400) if n not in cancelled})
    k = app.broker.keys("mix")
    redis = app.broker.redis
    assert (redis.llen(k.waiting), redis.zcard(k.ready), redis.scard(k.stale)) == (0, 0, 0)


def test_a_low_priority_message_is_not_starved_by_a_steady_urgent_stream(
    make_app: Callable[..., App], worker: Any
) -> None:
    # Given a producer whose priority levels are worth 50 ms of waiting each (SHOAL_PRIORITY_AGING)
    app = make_app(priority_aging_s=0.05)
    started: dict[str, float] = {}
    stored: dict[str, float] = {}
    """name -> when its enqueue had returned (it was in Redis by then)"""

    @app.task(queue="steady")
    def work(name: str) -> None:
        started[name] = time.monotonic()
        time.sleep(0.01)

    def urgent(names: list[str]) -> None:
        work.with_options(priority=0).enqueue_many([(n,) for n in names])
        now = time.monotonic()
        stored.update(dict.fromkeys(names, now))

    # And a backlog of urgent work (a second of it), one low message, and urgent ones arriving
    # steadily; one worker slot
    urgent([f"first{i}" for i in range(100)])
    work.with_options(priority=9).enqueue("low")
    stop = threading.Event()

    def stream() -> None:
        for i in range(10_000):
            if stop.wait(0.02):
                return
            urgent([f"u{i}-{j}" for j in range(4)])

    producer = threading.Thread(target=stream)
    producer.start()
    running = worker(app, ["steady"], concurrency=1, burst=False)
    try:
        wait_for(lambda: "low" in started, timeout=30, message="the low message to start")
    finally:
        stop.set()
        producer.join()
        running.stop()

    # Then it overtook urgent messages that were already waiting when it started: its age
    # outranked their priority (without aging it would wait for the stream to dry up)
    low = started["low"]
    overtaken = [n for n, at in stored.items() if at < low and started.get(n, float("inf")) > low]
    assert overtaken, "the low-priority message ran only once no urgent one was waiting"


def test_a_priority_outside_0_to_9_is_refused_naming_the_task(app: App) -> None:
    task = app.remote("x", queue="q")
    for bad in (-1, 10, 2.5, True, "1"):
        with pytest.raises(EnqueueError, match="priority must be an integer from 0"):
            task.with_options(priority=bad)  # type: ignore[arg-type]
