"""Bad input and failing tasks: clear errors at enqueue, poison messages set aside, retries."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis

from helpers import wait_for
from shoal import App, BrokerError, EnqueueError, Retry
from shoal.protocol.keys import queue_keys


def dead_entries(client: redis.Redis, app: App, queue: str) -> dict[str, dict[str, Any]]:
    raw = client.hgetall(queue_keys(app.settings.key_prefix, queue).dead_entries)
    return {k.decode(): orjson.loads(v) for k, v in raw.items()}


def body(app: App, queue: str, message_id: str) -> str:
    """What the DLQ kept of a dead letter's message (in ``dead:bodies``)."""
    entry = app.dlq(queue).get(message_id)
    assert entry is not None and entry.message is not None, f"{message_id} is not in the DLQ"
    return entry.message


def test_non_json_argument_is_refused_naming_task_and_argument(app: App) -> None:
    @app.task(queue="strict")
    def store(user_id: int, payload: object) -> None: ...

    with pytest.raises(EnqueueError) as info:
        store.enqueue(1, {1, 2, 3})
    message = str(info.value)
    assert store.name in message
    assert "args[1]" in message
    assert "set" in message

    with pytest.raises(EnqueueError, match=r"payload="):
        store.enqueue(1, payload=object())

    # Nothing was stored, not even for the good messages of a refused batch
    with pytest.raises(EnqueueError):
        store.enqueue_many([(1, "fine"), (2, object())])
    stats = app.measure("strict")
    assert (stats.waiting, stats.enqueued) == (0, 0)


def test_oversized_message_is_refused_naming_the_argument(
    make_app: Callable[..., App], redis_client: redis.Redis
) -> None:
    app = make_app(max_message_bytes=1000)

    @app.task(queue="small")
    def upload(name: str, blob: str) -> None: ...

    with pytest.raises(EnqueueError) as info:
        upload.enqueue("avatar.png", "x" * 5000)
    message = str(info.value)
    assert upload.name in message
    assert "args[1]" in message
    assert "1000-byte limit" in message
    assert app.measure("small").waiting == 0

    upload.enqueue("avatar.png", "x" * 100)
    assert app.measure("small").waiting == 1


def test_poison_messages_never_stop_a_worker(
    app: App, worker: Callable[..., Any], redis_client: redis.Redis
) -> None:
    ran: list[str] = []
    keys = queue_keys(app.settings.key_prefix, "poison")

    @app.task(queue="poison")
    def good(tag: str) -> None:
        ran.append(tag)

    # Given a queue holding, oldest first: a token that is not "<ms>:<id>", a token whose
    # envelope is not JSON, a message naming a task nobody defines, then a good message
    redis_client.lpush(keys.waiting, b"garbage")
    redis_client.hset(keys.messages, "someid", b"{not json")
    redis_client.lpush(keys.waiting, b"123:someid")
    app.remote("nobody.defines.this", queue="poison").enqueue(1)
    good.enqueue("behind the poison")

    # When a worker drains the queue
    worker(app, ["poison"], concurrency=1)

    # Then the good message ran, and each poison message is in the dead-letter queue with why
    assert ran == ["behind the poison"]
    entries = dead_entries(redis_client, app, "poison")
    reasons = {mid: e["reason"] for mid, e in entries.items()}
    garbage = [m for m in entries if "garbage" in body(app, "poison", m)]  # under its own id
    assert [entries[m]["reason"] for m in garbage] == ["undecodable"]
    assert reasons.get("someid") == "undecodable"
    unknown = [e for e in entries.values() if e["task"] == "nobody.defines.this"]
    assert len(unknown) == 1
    assert unknown[0]["reason"] == "unknown_task"
    assert "nobody.defines.this" in unknown[0]["error"]
    assert "{not json" in body(app, "poison", "someid")
    stats = app.measure("poison")
    assert (stats.dead, stats.waiting, stats.in_flight, stats.completed) == (3, 0, 0, 1)
    assert redis_client.zcard(keys.dead) == 3


def test_failing_task_is_retried_then_dead_lettered(
    app: App, worker: Callable[..., Any], redis_client: redis.Redis
) -> None:
    attempts: list[int] = []
    lock = threading.Lock()

    @app.task(queue="flaky", max_retries=2, min_backoff=0.01, max_backoff=0.02)
    def always_fails(n: int) -> None:
        with lock:
            attempts.append(n)
        raise RuntimeError(f"boom {n}")

    handle = always_fails.enqueue(7)
    worker(app, ["flaky"])

    assert attempts == [7, 7, 7], "the first run plus max_retries=2 retries"
    entry = dead_entries(redis_client, app, "flaky")[handle.id]
    assert entry["reason"] == "retries_exhausted"
    assert entry["attempts"] == 3
    assert entry["exception_type"] == "RuntimeError"
    assert "boom 7" in entry["error"]
    assert "RuntimeError" in entry["traceback"]
    assert orjson.loads(body(app, "flaky", handle.id))["attempt"] == 2
    stats = app.measure("flaky")
    assert (stats.retried, stats.dead_total, stats.dead, stats.completed) == (2, 1, 1, 0)


@pytest.mark.every_topology
def test_task_that_recovers_is_completed_once(app: App, worker: Callable[..., Any]) -> None:
    calls: list[int] = []

    @app.task(queue="flaky", max_retries=5, min_backoff=0.01, max_backoff=0.01)
    def fails_twice() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("transient")

    fails_twice.enqueue()
    worker(app, ["flaky"])
    assert len(calls) == 3
    stats = app.measure("flaky")
    assert (stats.retried, stats.completed, stats.dead) == (2, 1, 0)


def test_not_retryable_errors_go_straight_to_the_dlq(
    app: App, worker: Callable[..., Any], redis_client: redis.Redis
) -> None:
    calls: list[int] = []

    @app.task(queue="picky", max_retries=5, min_backoff=0.01, no_retry_on=(KeyError,))
    def lookup() -> None:
        calls.append(1)
        raise KeyError("missing")

    handle = lookup.enqueue()
    worker(app, ["picky"])
    assert len(calls) == 1
    assert dead_entries(redis_client, app, "picky")[handle.id]["reason"] == "not_retryable"


def test_retry_delay_is_honoured(
    app: App, worker: Callable[..., Any], redis_client: redis.Redis
) -> None:
    attempts: list[int] = []
    keys = queue_keys(app.settings.key_prefix, "polite")

    @app.task(queue="polite", max_retries=3)
    def rate_limited() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise Retry(delay=120)

    # Given a task that asks to be retried in 120 s
    handle = rate_limited.enqueue()
    running = worker(app, ["polite"], burst=False)

    # When its first attempt has failed
    def scheduled() -> float | None:
        return redis_client.zscore(keys.delayed, handle.id)

    due_ms = wait_for(scheduled, message="the retry to be scheduled")
    running.stop()

    # Then the retry waits in Redis, due 120 s after it was scheduled (not at the backoff)
    seconds, micros = redis_client.time()
    now_ms = seconds * 1000 + micros // 1000
    assert 110_000 < due_ms - now_ms <= 120_000
    stats = app.measure("polite")
    assert (stats.delayed, stats.waiting, stats.in_flight, stats.retried) == (1, 0, 0, 1)
    assert attempts == [1]

    # And when it falls due, it runs once more and completes
    redis_client.zadd(keys.delayed, {handle.id: now_ms})
    worker(app, ["polite"])
    assert attempts == [1, 1]
    assert app.measure("polite").completed == 1


def test_wrong_redis_url_gives_one_line_error_naming_it() -> None:
    app = App(redis_url="redis://127.0.0.1:1/0")

    @app.task
    def anything() -> None: ...

    for action in (anything.enqueue, lambda: app.measure("default")):
        with pytest.raises(BrokerError) as info:
            action()
        message = str(info.value)
        assert "redis://127.0.0.1:1/0" in message
        assert "\n" not in message
    app.close()


def test_broker_error_masks_the_password() -> None:
    app = App(redis_url="redis://:secret@127.0.0.1:1/0")

    @app.task
    def anything() -> None: ...

    with pytest.raises(BrokerError) as info:
        anything.enqueue()
    message = str(info.value)
    assert "secret" not in message
    assert "redis://:***@127.0.0.1:1/0" in message
    assert "\n" not in message
    app.close()
