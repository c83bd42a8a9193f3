"""Script calls written straight to a kept connection: the blocking producer's enqueue path
(:class:`DirectScripts`) and the worker's fetch, ack and lease calls (:class:`AsyncDirectScripts`).

A one-at-a-time enqueue is one round trip, and redis-py's layers around it (``Script``,
``execute_command``, the pool's get and release with their metrics, locks and readiness poll)
cost more client CPU than the round trip itself. :class:`DirectScripts` keeps the connections
it took from the pool on a free list and only does per call what an enqueue needs: the readiness
check that catches a connection the server closed while idle (so it is reconnected before
sending, and the enqueue is not wrongly reported as possibly stored), the EVALSHA with the
NOSCRIPT fallback, and the connection's own send recording (:func:`sent_before_failing`), health
check and error handling. Not used for a Cluster, whose client routes slots and follows MOVED.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import weakref
from collections.abc import Sequence
from typing import Any

import hiredis
import redis
import redis.asyncio
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript, Script

from shoal.protocol.connection import (
    CONNECTION_ERRORS,
    BlockingRedis,
    ExplainingRedis,
    connection_error,
)

_ALIVE: weakref.WeakSet[DirectScripts] = weakref.WeakSet()


def _forget_after_fork() -> None:
    # the connections belong to the parent (the pool, too, resets in the child)
    for direct in _ALIVE:
        direct.idle = []


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


class DirectScripts:
    """Runs scripts on connections of ``client``'s pool, kept between calls (one per concurrent
    caller). Connection failures raise the client's BrokerError naming the URL (the redis-py
    error as its cause), as the client's own commands do."""

    def __init__(self, client: ExplainingRedis) -> None:
        self.client = client
        self.idle: list[redis.Connection] = []
        """Connections taken from the pool and free for the next call (pop and append are
        atomic: threads share the list without a lock). The pool still counts them as in use,
        so closing the client disconnects them."""
        limit = getattr(client.connection_pool, "max_connections", 2) or 2
        self.keep = limit // 2
        """At most this many are kept: the pool must still lend connections to the client's
        other commands (``?max_connections=1`` keeps none: each call borrows one)."""
        _ALIVE.add(self)

    @classmethod
    def of(cls, client: BlockingRedis) -> DirectScripts | None:
        """Direct calls for ``client``; None for a Cluster (its client routes slots and follows
        MOVED)."""
        return cls(client) if isinstance(client, ExplainingRedis) else None

    def run(self, script: Script, keys: Sequence[Any], argv: Sequence[Any]) -> Any:
        """EVALSHA ``script`` (loading it once on NOSCRIPT), as ``script(keys, argv)`` would."""
        try:
            conn = self._take()
        except CONNECTION_ERRORS as exc:
            raise connection_error(self.client.shown_url, exc) from exc
        try:
            reply = self._evalsha(conn, script, keys, argv)
        except redis.exceptions.ResponseError:
            self._give_back(conn)  # the reply was read whole: the connection is in step
            raise
        except BaseException as exc:
            conn.disconnect()  # type: ignore[no-untyped-call]  # failed mid-command
            self.client.connection_pool.release(conn)
            if isinstance(exc, CONNECTION_ERRORS):
                raise connection_error(self.client.shown_url, exc) from exc
            raise
        self._give_back(conn)
        return reply

    def _give_back(self, conn: redis.Connection) -> None:
        if len(self.idle) < self.keep:
            self.idle.append(conn)
        else:
            self.client.connection_pool.release(conn)

    def _take(self) -> redis.Connection:
        """A connected connection with nothing to read: a kept one, else one from the pool
        (which connects and checks it)."""
        try:
            conn = self.idle.pop()
        except IndexError:
            pool = self.client.connection_pool
            return pool.get_connection(*_command_name(pool))
        try:
            if conn.can_read():  # a reply left over (never: every reply is read whole)
                conn.disconnect()  # type: ignore[no-untyped-call]
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            # closed by the server while idle: the send reconnects first, and an enqueue
            # that fails then certainly did not reach Redis
            conn.disconnect()  # type: ignore[no-untyped-call]
        except BaseException:
            self.client.connection_pool.release(conn)
            raise
        return conn

    @staticmethod
    def _evalsha(
        conn: redis.Connection, script: Script, keys: Sequence[Any], argv: Sequence[Any]
    ) -> Any:
        command = _evalsha_command(script.sha, keys, argv)
        _send(conn, command)
        try:
            return conn.read_response()
        except redis.exceptions.NoScriptError:  # did not run (a restarted or flushed Redis)
            pass
        _send(conn, _load_command(script.script))
        conn.read_response()
        _send(conn, command)
        return conn.read_response()

    def close(self) -> None:
        """Give the kept connections back to the pool (closing the client disconnects them)."""
        idle, self.idle = self.idle, []
        for conn in idle:
            self.client.connection_pool.release(conn)


class AsyncDirectScripts:
    """The worker's script calls on kept connections of an asyncio client's pool: the pool's
    get and release (a lock, metrics, an event dispatch) and redis-py's per-argument packing
    cost more of a worker's CPU than the fetch and ack scripts' own work. One connection per
    concurrent call (the fetch loop, the ack flusher, the lease renewer), kept between calls.

    Errors are the client's own (redis-py's ConnectionError, TimeoutError, ResponseError): the
    worker's loops own reconnecting. A connection that failed or was cancelled mid-call is
    disconnected before it goes back to the pool, so no reply is ever read out of step."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.pool = client.connection_pool
        self.idle: list[AbstractConnection] = []
        limit = getattr(self.pool, "max_connections", 2) or 2
        self.keep = max(0, min(4, (limit - 2) // 2))
        """At most this many are kept (the worker makes at most a few calls at once); the
        pool must still lend connections to the client's own commands and the notification
        subscription (``?max_connections=3`` or less keeps none: each call borrows one)."""

    @classmethod
    def of(cls, client: Any) -> AsyncDirectScripts | None:
        """Direct calls for ``client``; None for a Cluster (its client routes slots and follows
        MOVED) or any client without one connection pool."""
        return cls(client) if isinstance(client, redis.asyncio.Redis) else None

    async def run(self, script: AsyncScript, keys: Sequence[Any], argv: Sequence[Any]) -> Any:
        """EVALSHA ``script`` (loading it once on NOSCRIPT), as ``await script(keys, argv)``."""
        conn = await self._take()
        try:
            command = _evalsha_command(script.sha, keys, argv)
            await _send_async(conn, command)
            try:
                reply = await conn.read_response()
            except redis.exceptions.NoScriptError:  # did not run (a restarted or flushed Redis)
                await _send_async(conn, _load_command(script.script))
                await conn.read_response()
                await _send_async(conn, command)
                reply = await conn.read_response()
        except redis.exceptions.ReadOnlyError:
            await self._discard(conn)  # a demoted primary: connect afresh next time
            raise
        except redis.exceptions.ResponseError:
            await self._give_back(conn)  # the reply was read whole: the connection is in step
            raise
        except BaseException:
            await self._discard(conn)  # failed or cancelled mid-command
            raise
        await self._give_back(conn)
        return reply

    async def _take(self) -> AbstractConnection:
        """A connected connection with nothing to read: a kept one, else one from the pool
        (which connects and checks it)."""
        try:
            conn = self.idle.pop()
        except IndexError:
            taken: AbstractConnection = await self.pool.get_connection(  # type: ignore[no-untyped-call]
                *_command_name(self.pool)
            )
            return taken
        try:
            if await _can_read(conn):  # a reply left over, or closed by the server while idle
                await conn.disconnect()  # the send reconnects first
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            await conn.disconnect()
        except BaseException:
            await self._discard(conn)
            raise
        return conn

    async def _give_back(self, conn: AbstractConnection) -> None:
        if len(self.idle) < self.keep:
            self.idle.append(conn)
        else:
            await self.pool.release(conn)

    async def _discard(self, conn: AbstractConnection) -> None:
        await conn.disconnect(nowait=True)
        # shielded: a second cancellation (a shutdown) must not leave it counted as in use
        await asyncio.shield(self.pool.release(conn))

    async def close(self) -> None:
        """Give the kept connections back to the pool (closing the client disconnects them)."""
        idle, self.idle = self.idle, []
        for conn in idle:
            await self.pool.release(conn)


def _command_name(pool: Any) -> tuple[str, ...]:
    """What ``pool.get_connection`` needs: nothing since redis-py 5.1 (which warns when given
    a command name), a command name before."""
    needs = _NEEDS_COMMAND_NAME.get(type(pool))
    if needs is None:
        params = list(inspect.signature(pool.get_connection).parameters.values())
        needs = (
            bool(params)
            and params[0].default is inspect.Parameter.empty
            and params[0].kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        )
        _NEEDS_COMMAND_NAME[type(pool)] = needs
    return ("EVALSHA",) if needs else ()


_NEEDS_COMMAND_NAME: dict[type, bool] = {}


async def _can_read(conn: AbstractConnection) -> bool:
    """Whether a kept connection has something to read (data left, or closed by the server):
    ``can_read`` since redis-py 8, ``can_read_destructive`` before."""
    can_read = getattr(conn, "can_read", None) or conn.can_read_destructive
    return bool(await can_read())


def _evalsha_command(sha: str, keys: Sequence[Any], argv: Sequence[Any]) -> tuple[Any, ...]:
    return ("EVALSHA", sha, len(keys), *keys, *argv)


def _load_command(source: Any) -> tuple[Any, ...]:
    return ("SCRIPT", "LOAD", source)


async def _send_async(conn: AbstractConnection, command: tuple[Any, ...]) -> None:
    """As :func:`_send`, on an asyncio connection."""
    await conn.send_packed_command([hiredis.pack_command(command)])


def _send(conn: redis.Connection, command: tuple[Any, ...]) -> None:
    """Pack with hiredis (what the connection's own packer calls, minus its per-argument
    checks: Shoal sends str, bytes and int only) and send; the connection records the send."""
    conn.send_packed_command([hiredis.pack_command(command)])  # type: ignore[no-untyped-call]
