"""Poison input at the keys a worker reads: whatever the bytes, they end in the DLQ with a
reason, the worker runs on, and no other message is touched. The key is the identity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import pytest

from helpers import wait_for
from shoal import App
from shoal.message import Message

QUEUE = "q"


def envelope(message_id: str, task: str, args: Any = (), **fields: Any) -> bytes:
    raw = {
        "v": 1,
        "id": message_id,
        "task": task,
        "queue": QUEUE,
        "args": list(args),
        "kwargs": {},
        "enqueued_at": 0,
        **fields,
    }
    return orjson.dumps(raw)


def store(app: App, key: bytes | str, body: bytes) -> None:
    """Write a message straight into Redis, ready to run, as a foreign writer would."""
    keys = app.broker.keys(QUEUE)
    raw_key = key.encode() if isinstance(key, str) else key
    app.broker.redis.hset(keys.messages, raw_key, body)  # type: ignore[arg-type]
    app.broker.redis.lpush(keys.waiting, b"0:" + raw_key)


def reasons(app: App) -> list[str]:
    return sorted(e.reason for e in app.dlq(QUEUE).entries())


def recording_app(make_app: Callable[..., App]) -> tuple[App, list[Any]]:
    app = make_app()
    ran: list[Any] = []

    @app.task(queue=QUEUE, name="good", max_retries=2, min_backoff=0.01, max_backoff=0.01)
    def good(n: Any) -> None:
        ran.append(n)

    return app, ran


def test_a_waiting_token_that_is_not_utf8_is_dead_lettered(
    make_app: Callable[..., App], worker: Any
) -> None:
    app, ran = recording_app(make_app)
    app.broker.redis.lpush(app.broker.keys(QUEUE).waiting, b"\xff\xfe\x00 not a token")
    app.remote("good", queue=QUEUE).enqueue(1)
    worker(app, [QUEUE])
    assert ran == [1]
    assert reasons(app) == ["undecodable"]


@pytest.mark.parametrize(
    "bad_key",
    [b"bad-\xff\xfe-id", b"with\x1b[31mescape", b"x" * 10_000],
    ids=["not-utf8", "control-characters", "10-kB"],
)
def test_a_message_whose_id_is_not_a_valid_id_is_dead_lettered_once(
    make_app: Callable[..., App], worker: Any, bad_key: bytes
) -> None:
    app, ran = recording_app(make_app)
    store(app, bad_key, envelope("whatever", "good", [0]))
    app.remote("good", queue=QUEUE).enqueue(1)
    worker(app, [QUEUE])
    assert ran == [1]
    (entry,) = app.dlq(QUEUE).entries()
    assert entry.reason == "undecodable"
    assert "not printable UTF-8 text" in entry.error
    assert entry.id.isprintable() and len(entry.id) <= 128
    shown = app.dlq(QUEUE).get(entry.id)  # filed under a readable id
    assert shown is not None and shown.reason == "undecodable"
    keys = app.broker.keys(QUEUE)
    assert not app.broker.redis.hexists(keys.messages, bad_key)  # type: ignore[arg-type]
    stats = app.measure(QUEUE)
    assert (stats.waiting, stats.in_flight, stats.dead) == (0, 0, 1)


@pytest.mark.parametrize("dedupe_key", [True, None, 7, ["k"], {"k": 1}])
def test_a_dedupe_key_that_is_not_text_is_dead_lettered_and_the_worker_runs_on(
    make_app: Callable[..., App], worker: Any, dedupe_key: Any
) -> None:
    # the ack sends the dedupe key to Redis: a foreign writer's non-text one must not reach it
    app, ran = recording_app(make_app)
    store(app, "key-1", envelope("key-1", "good", ["poisoned"], options={"dedupe_key": dedupe_key}))
    app.remote("good", queue=QUEUE).enqueue(1)
    worker(app, [QUEUE])
    assert ran == [1]
    (entry,) = app.dlq(QUEUE).entries()
    assert (entry.id, entry.reason) == ("key-1", "undecodable")
    assert "dedupe_key" in entry.error
    stats = app.measure(QUEUE)
    assert (stats.waiting, stats.in_flight, stats.dead, stats.completed) == (0, 0, 1, 1)


def test_an_envelope_whose_id_differs_from_its_key_is_dead_lettered(
    make_app: Callable[..., App], worker: Any
) -> None:
    app, ran = recording_app(make_app)
    store(app, "key-1", envelope("not-key-1", "good", ["spoofed"]))
    worker(app, [QUEUE])
    assert ran == []
    (entry,) = app.dlq(QUEUE).entries()
    assert (entry.id, entry.reason) == ("key-1", "id_mismatch")
    stats = app.measure(QUEUE)
    assert (stats.waiting, stats.in_flight, stats.dead) == (0, 0, 1)


def test_a_spoofed_id_never_touches_the_message_it_names(
    make_app: Callable[..., App], worker: Any
) -> None:
    app, ran = recording_app(make_app)
    (victim,) = app.remote("good", queue=QUEUE).enqueue_many([("victim",)])
    # Given a foreign message claiming the victim's id, and a bare token naming the victim
    store(app, "forger", envelope(victim.id, "good", ["forged"]))
    app.broker.redis.lpush(app.broker.keys(QUEUE).waiting, victim.id.encode())
    worker(app, [QUEUE])
    # Then the victim ran once, the forgery never ran, and both bad entries are set aside
    assert ran == ["victim"]
    assert reasons(app) == ["id_mismatch", "undecodable"]
    assert app.dlq(QUEUE).get(victim.id) is None
    assert app.measure(QUEUE).completed == 1


def test_arguments_nested_deeper_than_the_encoder_allows_are_too_deep(
    make_app: Callable[..., App], worker: Any
) -> None:
    app, ran = recording_app(make_app)
    for depth in (300, 1000):
        nested = b"[" * depth + b"]" * depth
        body = envelope(f"deep-{depth}", "good", [0]).replace(b'"args":[0]', b'"args":' + nested)
        Message.decode(body)  # the decoder accepts it: only re-encoding it fails
        store(app, f"deep-{depth}", body)
    worker(app, [QUEUE])
    assert ran == []
    assert reasons(app) == ["too_deep", "too_deep"]


def test_arguments_that_do_not_fit_the_function_are_not_retried(
    make_app: Callable[..., App], worker: Any
) -> None:
    app, _ = recording_app(make_app)

    @app.task(queue=QUEUE, name="own_type_error", max_retries=1, min_backoff=0.01)
    def own_type_error(n: int) -> None:
        raise TypeError("the task's own bug")

    app.remote("good", queue=QUEUE).enqueue(1, 2, 3)  # good takes one argument
    own_type_error.enqueue(1)
    worker(app, [QUEUE])
    by_task = {e.task: e for e in app.dlq(QUEUE).entries()}
    assert by_task["good"].reason == "bad_arguments"
    assert by_task["good"].attempts == 1
    assert by_task["own_type_error"].reason == "retries_exhausted"
    assert by_task["own_type_error"].attempts == 2
    wait_for(lambda: app.measure(QUEUE).in_flight == 0)
