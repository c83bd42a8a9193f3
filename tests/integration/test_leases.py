"""Lease ownership: every lease has an owner token, and only its owner may decide the message.

A worker whose lease lapsed (a partition, a long pause, a stalled Redis) and whose message was
recovered or delivered to another worker can no longer ack, retry, hand back, renew or
dead-letter it, and stops the task it was running (fencing)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from helpers import RunningWorker, wait_for
from shoal import App
from shoal.protocol import AsyncBroker
from shoal.worker import Worker


def owners(app: App, queue: str) -> dict[bytes, bytes]:
    return app.broker.redis.hgetall(app.broker.keys(queue).owners)  # type: ignore[return-value]


@pytest.mark.every_topology
def test_a_lapsed_lease_belongs_to_the_next_delivery(make_app: Callable[..., App]) -> None:
    app = make_app()
    keys = app.broker.keys("q")
    (handle,) = app.remote("job", queue="q").enqueue_many([()])

    async def scenario() -> None:
        a, b = AsyncBroker(app.settings), AsyncBroker(app.settings)
        # Given worker A holds delivery 1, pauses past its lease, and B gets delivery 2
        (first,) = (await a.fetch("q", 1)).messages
        assert (first.id, first.deliveries) == (handle.id, 1)
        app.broker.redis.zadd(keys.inflight, {handle.id: 0})  # A's lease lapsed
        (second,) = (await b.fetch("q", 1)).messages
        assert second.deliveries == 2
        assert second.owner != first.owner
        b_deadline = app.broker.redis.zscore(keys.inflight, handle.id)

        # When A wakes up and acts on its stale lease, nothing changes, and A learns so
        assert await a.retry("q", handle.id, 0, b"{}", first.owner) is False
        assert await a.handback("q", [(handle.id, first.owner)]) == 0
        assert (await a.renew("q", [(handle.id, first.owner)])).lost == [handle.id]
        assert await a.dead("q", handle.id, b"{}", None, None, (10, 60), first.owner) is False
        assert await a.ack("q", [(handle.id, first.owner, None, None)]) == (0, [handle.id])
        stats = app.measure("q")
        assert (stats.delayed, stats.waiting, stats.dead, stats.in_flight) == (0, 0, 0, 1)
        assert stats.completed == 0
        assert app.broker.redis.hexists(keys.messages, handle.id)
        assert app.broker.redis.zscore(keys.inflight, handle.id) == b_deadline

        # Then B's own lease works as usual
        app.broker.redis.zadd(keys.inflight, {handle.id: 5}, xx=True)
        assert (await b.renew("q", [(handle.id, second.owner)])).lost == []
        assert (app.broker.redis.zscore(keys.inflight, handle.id) or 0) > 5
        assert await b.ack("q", [(handle.id, second.owner, None, None)]) == (1, [])
        assert app.measure("q").completed == 1
        assert owners(app, "q") == {}
        await a.close()
        await b.close()

    asyncio.run(scenario())


@pytest.mark.every_topology
def test_one_fetch_and_one_ack_of_thousands_of_messages_keep_every_lease_apart(
    make_app: Callable[..., App],
) -> None:
    # Given more messages than one variadic command of the scripts takes (4,000 arguments)
    app = make_app()
    keys = app.broker.keys("q")
    n = 4100
    ids = {h.id for h in app.remote("job", queue="q").enqueue_many([()] * n)}
    before = int(app.broker.redis.hget(keys.stats, "leases") or 0)

    async def scenario() -> None:
        broker = AsyncBroker(app.settings)
        try:
            # When one fetch leases them all
            leased = (await broker.fetch("q", n)).messages
            # Then each has a lease of its own, numbered on from the counter, and is in flight
            assert {m.id for m in leased} == ids
            assert sorted(m.owner for m in leased) == list(range(before + 1, before + n + 1))
            assert {m.deliveries for m in leased} == {1}
            assert int(app.broker.redis.hget(keys.stats, "leases") or 0) == before + n
            held = owners(app, "q")
            assert {k.decode(): int(v) for k, v in held.items()} == {m.id: m.owner for m in leased}
            assert app.broker.redis.zcard(keys.inflight) == n

            # And one ack of them all finishes every one, and leaves nothing behind
            done = [(m.id, m.owner, None, None) for m in leased]
            assert await broker.ack("q", done) == (n, [])
        finally:
            await broker.close()
        stats = app.measure("q")
        assert (stats.completed, stats.in_flight, stats.waiting) == (n, 0, 0)
        for key in (keys.messages, keys.owners, keys.deliveries):
            assert app.broker.redis.hlen(key) == 0

    asyncio.run(scenario())


def test_an_ack_batch_holding_a_message_twice_finishes_it_once_and_refuses_nothing(
    make_app: Callable[..., App],
) -> None:
    # Given a message leased by A, lapsed, and leased again by B
    app = make_app()
    keys = app.broker.keys("q")
    (handle,) = app.remote("job", queue="q").enqueue_many([()])

    async def scenario() -> None:
        broker = AsyncBroker(app.settings)
        try:
            (first,) = (await broker.fetch("q", 1)).messages
            app.broker.redis.zadd(keys.inflight, {handle.id: 0})
            (second,) = (await broker.fetch("q", 1)).messages
            # When one ack batch holds B's verdict, then A's stale one for the same message
            done = [(handle.id, second.owner, None, None), (handle.id, first.owner, None, None)]
            # Then it is finished once, and the stale entry is not a refusal: it is gone
            assert await broker.ack("q", done) == (1, [])
        finally:
            await broker.close()
        assert app.measure("q").completed == 1

    asyncio.run(scenario())


def test_a_delivery_count_that_is_not_an_integer_counts_as_none(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    keys = app.broker.keys("q")
    (handle,) = app.remote("job", queue="q").enqueue_many([()])
    app.broker.redis.hset(keys.deliveries, handle.id, "many")  # written by something else

    async def scenario() -> None:
        broker = AsyncBroker(app.settings)
        try:
            (leased,) = (await broker.fetch("q", 1)).messages
        finally:
            await broker.close()
        assert leased.deliveries == 1
        assert app.broker.redis.hget(keys.deliveries, handle.id) == b"1"

    asyncio.run(scenario())


def test_a_handback_never_gives_a_lease_back_to_an_earlier_owner(
    make_app: Callable[..., App],
) -> None:
    """The delivery counter goes down on a handback (it is not a lost delivery), so it cannot
    name the owner: A's stale delivery number would match again after B hands back."""
    app = make_app()
    keys = app.broker.keys("q")
    (handle,) = app.remote("job", queue="q").enqueue_many([()])

    async def scenario() -> None:
        a, b = AsyncBroker(app.settings), AsyncBroker(app.settings)
        # Given A's lease lapsed, B took the message and handed it back (B shut down)
        (first,) = (await a.fetch("q", 1)).messages
        app.broker.redis.zadd(keys.inflight, {handle.id: 0})
        (second,) = (await b.fetch("q", 1)).messages
        assert await b.handback("q", [(handle.id, second.owner)]) == 1

        # When A comes back and acks, renews or retries with what it holds
        assert (await a.renew("q", [(handle.id, first.owner)])).lost == [handle.id]
        assert await a.ack("q", [(handle.id, first.owner, None, None)]) == (0, [handle.id])
        assert await a.retry("q", handle.id, 0, b"{}", first.owner) is False

        # Then the message still waits for its next delivery, untouched
        stats = app.measure("q")
        assert (stats.waiting, stats.in_flight, stats.completed, stats.delayed) == (1, 0, 0, 0)
        assert app.broker.redis.hexists(keys.messages, handle.id)
        await a.close()
        await b.close()

    asyncio.run(scenario())


class LongTasks:
    """An async and a sync task that run until stopped, recording start and stop."""

    def __init__(self, app: App) -> None:
        self.started = threading.Event()
        self.starts = 0
        self.stopped = threading.Event()
        self.stop_error: list[str] = []
        self.finished = threading.Event()

        @app.task(queue="long", name="long_async", timeout=60)
        async def long_async() -> None:
            self.starts += 1
            self.started.set()
            try:
                await asyncio.sleep(60)
            except BaseException as exc:
                self.stop_error.append(type(exc).__name__)
                self.stopped.set()
                raise
            self.finished.set()

        @app.task(queue="long", name="long_sync", timeout=60)
        def long_sync() -> None:
            self.starts += 1
            self.started.set()
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:  # pure Python between short sleeps
                    time.sleep(0.01)
            except BaseException as exc:
                self.stop_error.append(type(exc).__name__)
                self.stopped.set()
                raise
            self.finished.set()


@pytest.fixture
def lease_app(make_app: Callable[..., App]) -> App:
    return make_app(lease_s=2.0, heartbeat_s=0.5, shutdown_grace_s=1.0)


@pytest.fixture
def running(worker: Any) -> Iterator[Callable[[App], RunningWorker]]:
    yield lambda app: worker(app, ["long"], concurrency=2, burst=False)


@pytest.mark.parametrize("kind", ["long_async", "long_sync"])
def test_a_worker_stops_a_task_whose_lease_another_worker_took(
    lease_app: App, running: Callable[[App], RunningWorker], kind: str
) -> None:
    app = lease_app
    tasks = LongTasks(app)
    keys = app.broker.keys("long")
    (handle,) = app.remote(kind, queue="long").enqueue_many([()])
    w = running(app)
    assert tasks.started.wait(10)

    # Given the worker's lease lapsed (a pause) and another worker took the message
    async def steal() -> int:
        other = AsyncBroker(app.settings.with_overrides(lease_s=60))  # holds it for the test
        try:
            while True:  # the worker's heartbeat may renew in between: lapse it again
                app.broker.redis.zadd(keys.inflight, {handle.id: 0})
                taken = (await other.fetch("long", 1)).messages
                if taken:
                    return taken[0].owner
        finally:
            await other.close()

    thief = asyncio.run(steal())

    # When its next renewal learns so, the worker stops the task and never decides it
    wait_for(tasks.stopped.is_set, message="the worker to stop the task it lost")
    assert not tasks.finished.is_set()
    assert tasks.stop_error in (["CancelledError"], ["TaskStopped"])
    wait_for(lambda: w.worker.leases.lost == 1, message="the lost lease to be counted")
    assert owners(app, "long") == {handle.id.encode(): str(thief).encode()}
    stats = app.measure("long")
    assert (stats.in_flight, stats.completed, stats.dead, stats.delayed) == (1, 0, 0, 0)
    assert w.worker.leases.count() == 0
    w.stop()


@pytest.mark.parametrize("kind", ["long_async", "long_sync"])
def test_a_worker_that_cannot_renew_stops_its_task_before_the_lease_ends(
    lease_app: App,
    running: Callable[[App], RunningWorker],
    redis_client: redis.Redis,
    kind: str,
) -> None:
    app = lease_app
    tasks = LongTasks(app)
    (handle,) = app.remote(kind, queue="long").enqueue_many([()])
    w = running(app)
    assert tasks.started.wait(10)

    # Given Redis stalls every write (renewals included) for far longer than the lease
    redis_client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        # Then the worker stops the task while Redis is still stalled: by the time anyone
        # else could re-deliver it, it no longer runs here
        wait_for(tasks.stopped.is_set, timeout=15, message="the worker to stop its task")
        assert not tasks.finished.is_set()
        assert w.worker.leases.lost == 1
        assert w.thread.is_alive()
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
    # And once Redis is back, the worker hands the stopped message back (the lease was still
    # its own: not a lost delivery) and it runs again
    wait_for(lambda: tasks.starts == 2, message="the message to run again")
    deliveries = app.broker.redis.hget(app.broker.keys("long").deliveries, handle.id)
    assert deliveries == b"1"
    assert app.measure("long").recovered == 0
    w.stop()


def test_only_the_watch_loop_ticks_so_a_stalled_redis_is_not_a_blocked_loop(
    lease_app: App, redis_client: redis.Redis
) -> None:
    """The supervisor kills a child whose event loop stops ticking. A worker waiting on a
    stalled Redis must keep ticking; only a blocked event loop may stop the ticks."""
    ticks: list[float] = []
    w = RunningWorker(Worker(lease_app, ["long"], on_tick=lambda: ticks.append(1)))
    w.start()
    wait_for(lambda: len(ticks) > 3, message="the first ticks")
    redis_client.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
    try:
        before = len(ticks)
        wait_for(lambda: len(ticks) > before + 20, message="ticks while Redis is paused")
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
    w.stop()


def test_a_verdict_resent_after_its_reply_was_lost_is_not_a_lost_lease(
    make_app: Callable[..., App],
) -> None:
    """A worker resends a verdict whose reply it never got (a timeout in a stall). The first
    send landed; the resend must say so, not that another delivery owns the message."""
    app = make_app()
    handles = app.remote("job", queue="q").enqueue_many([(), (), ()])

    async def scenario() -> None:
        broker = AsyncBroker(app.settings)
        acked, retried, dead = (await broker.fetch("q", 3)).messages
        done = [(acked.id, acked.owner, None, None)]
        assert await broker.ack("q", done) == (1, [])
        assert await broker.ack("q", done) == (0, [])  # gone: finished, nothing to refuse
        assert await broker.retry("q", retried.id, 60, b"{}", retried.owner) is True
        assert await broker.retry("q", retried.id, 60, b"{}", retried.owner) is True
        entry = (b"{}", b"{}")
        assert await broker.dead("q", dead.id, entry, None, None, (10, 60), dead.owner) is True
        assert await broker.dead("q", dead.id, entry, None, None, (10, 60), dead.owner) is True
        stats = app.measure("q")
        assert (stats.completed, stats.retried, stats.dead_total) == (1, 1, 1)
        assert {m.id for m in (acked, retried, dead)} == {h.id for h in handles}
        await broker.close()

    asyncio.run(scenario())


def test_a_task_whose_code_returned_is_never_stopped_while_its_verdict_is_sent() -> None:
    from shoal.leases import Leases

    leases = Leases(["q"], lease_s=2.0)
    running = leases.take("q", "a", 1, sent_at=0.0)
    deciding = leases.take("q", "b", 2, sent_at=0.0)
    loop = asyncio.new_event_loop()
    try:
        running.task = loop.create_future()
        deciding.task = loop.create_future()
        deciding.deciding = True
        assert [mid for _, mid, _ in leases.overdue(now=10.0)] == ["a"]
        assert leases.running() == [running.task]
        leases.release("q", "a", owner=99)  # another lease's verdict: not this one
        assert (leases.get("q", "a") or running).owner == 1 and leases.get("q", "a") is running
    finally:
        loop.close()
