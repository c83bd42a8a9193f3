"""The worker's script connections (:class:`shoal.protocol.direct.AsyncDirectScripts`): kept
between calls, yet a script Redis forgot is loaded again, a connection Redis closed while idle
is replaced, a call cancelled mid-reply never leaves its reply for the next caller, and calls
made at once each get their own connection and their own reply."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from shoal import App
from shoal.protocol.async_broker import AsyncBroker
from shoal.protocol.direct import AsyncDirectScripts, _can_read
from shoal.protocol.server import LocalRedis


def _filled(app: App, queue: str, n: int) -> None:
    @app.task(queue=queue)
    def job(i: int) -> None: ...

    job.enqueue_many([(i,) for i in range(n)])


async def _until_closed(conn: Any, timeout_s: float = 10.0) -> None:
    """Let the event loop read the server's close of ``conn`` (polled, with a deadline)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await _can_read(conn):
        assert asyncio.get_running_loop().time() < deadline, "the close never reached the loop"
        await asyncio.sleep(0.01)


def _direct(broker: AsyncBroker) -> AsyncDirectScripts:
    direct = broker._direct
    assert isinstance(direct, AsyncDirectScripts)
    return direct


@pytest.mark.every_topology
def test_a_fetch_after_redis_forgot_its_scripts_loads_them_and_leases_once(
    make_app: Callable[..., App], topology: Any
) -> None:
    app = make_app()
    _filled(app, "forgot", 4)

    async def run() -> tuple[int, int]:
        broker = AsyncBroker(app.settings)
        try:
            first = await broker.fetch("forgot", 1)
            topology.admin().script_flush()  # a restarted Redis: EVALSHA answers NOSCRIPT
            second = await broker.fetch("forgot", 10)
            return len(first.messages), len(second.messages)
        finally:
            await broker.close()

    assert asyncio.run(run()) == (1, 3)
    assert app.measure("forgot").in_flight == 4


def test_a_connection_redis_closed_while_idle_is_replaced(
    app: App, redis_client: redis.Redis
) -> None:
    _filled(app, "idle", 2)

    async def run() -> int:
        broker = AsyncBroker(app.settings)
        try:
            await broker.fetch("idle", 1)
            assert len(_direct(broker).idle) == 1
            # Given Redis closed the worker's connections while it was idle (CLIENT KILL)
            assert redis_client.client_kill_filter(_type="normal", skipme=True) >= 1
            await _until_closed(_direct(broker).idle[0])  # as an idle worker's loop would see
            # When it fetches again, the dead connection is noticed and replaced
            return len((await broker.fetch("idle", 10)).messages)
        finally:
            await broker.close()

    assert asyncio.run(run()) == 1


def test_a_call_cancelled_before_its_reply_never_hands_that_reply_to_the_next_call(
    app: App,
) -> None:
    _filled(app, "cancelled", 3)

    async def run() -> tuple[int, int]:
        broker = AsyncBroker(app.settings)
        direct = _direct(broker)
        try:
            await broker.measure("cancelled")  # one kept connection
            [conn] = direct.idle
            read = conn.read_response
            stalled = asyncio.Event()

            async def stall(*args: Any, **kwargs: Any) -> Any:
                stalled.set()
                await asyncio.sleep(3600)  # the reply arrives but is never read

            conn.read_response = stall  # type: ignore[method-assign]
            fetch = asyncio.ensure_future(broker.fetch("cancelled", 1))
            await stalled.wait()
            fetch.cancel()  # a worker shutting down, a lease timer firing
            with pytest.raises(asyncio.CancelledError):
                await fetch
            conn.read_response = read  # type: ignore[method-assign]
            assert conn not in direct.idle  # disconnected and returned, not kept
            # The next call reads its own reply (the measure's), not the fetch's
            stats = await broker.measure("cancelled")
            return stats.waiting, stats.in_flight
        finally:
            await broker.close()

    waiting, in_flight = asyncio.run(run())
    assert waiting + in_flight == 3
    assert in_flight == 1  # the cancelled fetch ran in Redis: its lease lapses and is recovered


def test_calls_made_at_once_each_get_their_own_reply_and_few_connections_are_kept(
    app: App,
) -> None:
    _filled(app, "together", 40)

    async def run() -> tuple[list[int], int]:
        broker = AsyncBroker(app.settings)
        try:
            fetched = await asyncio.gather(*(broker.fetch("together", 2) for _ in range(20)))
            return [len(f.messages) for f in fetched], len(_direct(broker).idle)
        finally:
            await broker.close()

    sizes, kept = asyncio.run(run())
    assert sizes == [2] * 20
    assert 1 <= kept <= AsyncDirectScripts(redis.asyncio.Redis()).keep
    assert app.measure("together").in_flight == 40


def test_a_small_pool_keeps_no_script_connection_and_plain_commands_still_get_one(
    redis_url: str, key_prefix: str
) -> None:
    # ?max_connections=2: the notification subscription holds one connection; a kept script
    # connection would hold the other for good, and every heartbeat would find the pool empty
    app = App(redis_url=redis_url + "?max_connections=2", key_prefix=key_prefix)

    async def run() -> tuple[float, int]:
        broker = AsyncBroker(app.settings)
        pubsub = broker.redis.pubsub()
        try:
            await pubsub.subscribe("small-pool:notify")
            await broker.fetch("small-pool", 1)
            return await broker.time_s(), len(_direct(broker).idle)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await broker.close()

    now, kept = asyncio.run(run())
    assert now > 0 and kept == 0


def test_a_worker_runs_tasks_over_a_unix_socket(tmp_path: Path, worker: Any) -> None:
    # unix:// is a documented URL form; TCP-only options (keep-alive) must not reach it
    path = tmp_path / "redis.sock"
    with LocalRedis(args=["--unixsocket", str(path), "--unixsocketperm", "700"]):
        app = App(redis_url=f"unix://{path}?db=0")
        ran: list[int] = []

        @app.task(queue="over-unix")
        def job(n: int) -> None:
            ran.append(n)

        @app.task(queue="over-unix")
        async def ajob(n: int) -> None:
            ran.append(n)

        job.enqueue(1)
        ajob.enqueue(2)
        done = worker(app, ["over-unix"])
        app.close()

    assert sorted(ran) == [1, 2]
    assert done.processed == 2
