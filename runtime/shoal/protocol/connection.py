"""Connections: how Shoal opens Redis, which failures are Redis's, and errors that name the URL.

The blocking client (:class:`ExplainingRedis`) turns a connection failure into one
:class:`~shoal.errors.BrokerError` naming the masked URL, and tells whether a failed command had
reached Redis whole: an enqueue is resent only when it certainly did not run.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from typing import Any

import redis

from shoal.errors import BrokerError, EnqueueOutcomeUnknown, RedisFull
from shoal.protocol.scripts import Outgoing
from shoal.settings import mask_url


def connection_error(url: str, exc: BaseException, outcome: str = "") -> BrokerError:
    """A one-line error naming the (masked) URL, what failed, ``outcome`` (what it means for
    the caller's data, a sentence) and what to check."""
    return BrokerError(
        f"cannot reach Redis at {mask_url(url)}: {str(exc).rstrip('.')}. {outcome}"
        "Check SHOAL_REDIS_URL (redis://host:port/db) and that the server is running."
    )


def enqueue_what(queue: str, items: Sequence[Outgoing], task: str | None) -> str:
    n = len(items)
    of_task = "" if task is None else f" of task {task!r}"
    return f"enqueue of {n} message{'' if n == 1 else 's'}{of_task} to queue {queue!r}"


def enqueue_failed(
    url: str, exc: BaseException, what: str, sent: bool, items: Sequence[Outgoing]
) -> BrokerError:
    """The error of an enqueue whose connection failed: when the script was ``sent`` whole, its
    outcome is unknown (it may have run, and the answer was lost); else nothing was stored."""
    if not sent:
        return BrokerError(f"{what} failed: {connection_error(url, exc, 'Nothing was stored. ')}")
    one = len(items) == 1
    if all(dedupe for *_, dedupe in items):
        advice = (
            "Enqueueing again with the same dedupe_key is safe: if the first was stored, that "
            "message is returned (while it waits or runs) instead of a second one stored."
        )
    else:
        advice = (
            f"Enqueueing {'it' if one else 'them'} again may run {'it' if one else 'them'} "
            'twice; give messages a dedupe_key (README, "Dedupe") to make such a retry safe.'
        )
    return EnqueueOutcomeUnknown(
        f"{what}: the outcome is unknown. The connection to Redis at {mask_url(url)} failed "
        f"after the enqueue was sent ({str(exc).rstrip('.')}), so the "
        f"{'message' if one else 'messages'} may or may not have been stored (and may run). "
        + advice
    )


def redis_full(url: str, what: str) -> RedisFull:
    return RedisFull(
        f"{what} refused: Redis at {mask_url(url)} is at its maxmemory limit and refuses writes "
        "(OOM). Nothing was stored. Give Redis room: raise maxmemory (keep maxmemory-policy "
        "noeviction, as an evicting policy drops messages), or free memory: let workers drain "
        "the queues (`shoal info` shows them), purge dead letters (`shoal dlq purge QUEUE`)."
    )


def is_out_of_memory(exc: redis.exceptions.ResponseError) -> bool:
    # Redis 7 keeps a script's OOM error code; 6.2 wraps it in "ERR Error running script"
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or "-OOM " in str(exc)


def redis_call_timeout_s(lease_s: float) -> float:
    """How long a worker waits for one Redis reply: a third of the lease (1 to 5 s), so a
    stalled Redis fails a renewal in time for the next one, well before the lease ends."""
    return max(1.0, min(5.0, lease_s / 3))


CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, socket.gaierror)
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)
"""Every Redis failure, connection or reply (READONLY after a failover, OOM, BUSY): retried with
backoff by the loops, never allowed to end one."""
MAX_BACKOFF_S = 5.0

REFUSED = redis.exceptions.ResponseError
"""Redis answered with an error: a script refused its data, or a command was not allowed."""


ENQUEUE_RESENDS = (0.05, 0.2)
"""Pauses before resending an enqueue whose connection failed *before it was sent whole* (it
certainly did not run: a connection dropped while idle, a failover). One that reached Redis is
never resent: a worker may already have run and acked it, and a resend would run it again; the
caller gets EnqueueOutcomeUnknown instead. redis-py itself resends nothing."""


class ExplainingRedis(redis.Redis):
    """A blocking client whose connection failures become one BrokerError naming the URL.

    Producers, the CLI and ``handle.result()`` all go through it, so none of them shows a
    redis-py traceback for a wrong SHOAL_REDIS_URL. It also tells whether the last command that
    failed on this thread had been sent whole (:meth:`sent_before_failing`)."""

    _sent = threading.local()

    def begin(self) -> None:
        """Start one logical operation (a script call may be EVALSHA, SCRIPT LOAD, EVALSHA):
        :meth:`sent_before_failing` then tells whether any of its commands reached Redis."""
        self._sent.whole = False

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except CONNECTION_ERRORS as exc:
            raise connection_error(self.target(), exc) from exc

    def parse_response(self, connection: Any, command_name: Any, **options: Any) -> Any:
        # called once the command was written whole, on each (re)send: from here it may run
        self._sent.whole = True
        return super().parse_response(connection, command_name, **options)  # type: ignore[no-untyped-call]

    def sent_before_failing(self) -> bool:
        """Whether this thread's last command reached Redis whole (on any of its sends) before
        its connection failed: then Redis may have run it. False: it certainly did not run."""
        return bool(getattr(self._sent, "whole", True))

    def target(self) -> str:
        """The server's address (password masked), for error messages."""
        return _describe_target(self.connection_pool.connection_kwargs)


def _describe_target(kwargs: dict[str, Any]) -> str:
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    auth = ":***@" if kwargs.get("password") else ""
    return f"redis://{auth}{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"
