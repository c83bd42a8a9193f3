"""The Redis protocol: every state transition of a message is one Lua script in ``lua/``.

:class:`Broker` is the blocking client producers and the CLI use; :class:`AsyncBroker` is the
worker's. Both build their calls with the same ``_*_call`` functions, so the key and argument
layout each script documents in its header lives in exactly one Python place too.
"""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple, cast

import orjson
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript, Script
from redis.retry import Retry

from shoal import queue_defaults
from shoal.errors import BrokerError, EnqueueOutcomeUnknown, RedisFull
from shoal.keys import QueueKeys, queue_keys, queues_key, worker_key, workers_key
from shoal.settings import Settings, mask_url

SCRIPT_NAMES = (
    "enqueue",
    "fetch",
    "ack",
    "retry",
    "dead",
    "handback",
    "renew",
    "replay",
    "purge",
    "measure",
    "group_start",
    "join",
    "group_done",
    "workflow_failed",
    "schedule_publish",
)
MOVE_LIMIT = 500
"""Delayed or expired entries moved per fetch: bounds one script's run time on a huge backlog."""

Call = tuple[str, list[str], list[Any]]
"""A script invocation: (script name, KEYS, ARGV)."""

Outgoing = tuple[str, int, bytes, str | None]
"""A message to enqueue: (id, delay in ms, stored bytes, dedupe key or None)."""

Finished = tuple[str, int, bytes | None, str | None]
"""A message to ack: (id, owner token, result JSON or None, dedupe key or None)."""

Held = tuple[str, int]
"""A lease a worker holds: (message id, owner token)."""


@dataclass(frozen=True, slots=True)
class Guard:
    """Makes an enqueue happen at most once, checked in the same script that stores it.

    ``once``: ``field`` must not exist yet in the ``key`` HASH (a workflow step started by
    whichever worker gets there first). ``after``: the number that starts ``value`` must be
    greater than the one stored in ``field`` (a schedule tick, claimed by one worker of many).
    ``key`` must share the queue's hash tag."""

    key: str
    mode: str
    field: str
    value: str
    ttl_ms: int = 0


def _script_source(name: str) -> str:
    return resources.files("shoal").joinpath(f"lua/{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue's figures from one O(1) measurement. Ages in seconds, counters since creation."""

    queue: str
    waiting: int
    in_flight: int
    delayed: int
    dead: int
    oldest_age_s: float
    enqueued: int
    completed: int
    retried: int
    dead_total: int
    recovered: int
    measured_at_ms: int
    due_soon: int = 0
    """Delayed messages due within the next few seconds (``DUE_SOON_MS``)."""

    @classmethod
    def from_reply(cls, queue: str, reply: Sequence[Any]) -> QueueStats:
        now, waiting, inflight, delayed, dead, token = reply[:6]
        oldest = 0.0
        if token:
            ready_ms = token.split(b":", 1)[0]
            if ready_ms.isdigit():
                oldest = max(0.0, (int(now) - int(ready_ms)) / 1000)
        enq, comp, retried, dead_total, recovered = (int(x) for x in reply[6:11])
        return cls(
            queue,
            int(waiting),
            int(inflight),
            int(delayed),
            int(dead),
            oldest,
            enq,
            comp,
            retried,
            dead_total,
            recovered,
            int(now),
            int(reply[11]) if len(reply) > 11 else 0,
        )


class Leased(NamedTuple):
    """One message a fetch handed to this worker."""

    id: str
    """The message id: the key it is stored under, which is its identity. For a key that is not
    UTF-8, a readable escape of it (``key`` holds the bytes); for a malformed waiting token,
    the token's text."""
    body: bytes | None
    """The stored envelope; None for a malformed waiting token (nothing was leased)."""
    deliveries: int
    """How often the message was handed to a worker, this time included."""
    owner: int
    """The owner token of this lease: every later transition must present it (0: none)."""
    key: bytes | None = None
    """The raw key when it is not UTF-8 text (such a message can only be dead-lettered)."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one fetch returned: the leased messages, and when the next delayed one is due."""

    messages: list[Leased]
    next_due_ms: int
    now_ms: int


def connection_error(url: str, exc: BaseException, outcome: str = "") -> BrokerError:
    """A one-line error naming the (masked) URL, what failed, ``outcome`` (what it means for
    the caller's data, a sentence) and what to check."""
    return BrokerError(
        f"cannot reach Redis at {mask_url(url)}: {str(exc).rstrip('.')}. {outcome}"
        "Check SHOAL_REDIS_URL (redis://host:port/db) and that the server is running."
    )


def _enqueue_what(queue: str, items: Sequence[Outgoing], task: str | None) -> str:
    n = len(items)
    of_task = "" if task is None else f" of task {task!r}"
    return f"enqueue of {n} message{'' if n == 1 else 's'}{of_task} to queue {queue!r}"


def _enqueue_failed(
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


def _redis_full(url: str, what: str) -> RedisFull:
    return RedisFull(
        f"{what} refused: Redis at {mask_url(url)} is at its maxmemory limit and refuses writes "
        "(OOM). Nothing was stored. Give Redis room: raise maxmemory (keep maxmemory-policy "
        "noeviction, as an evicting policy drops messages), or free memory: let workers drain "
        "the queues (`shoal info` shows them), purge dead letters (`shoal dlq purge QUEUE`)."
    )


def _is_out_of_memory(exc: redis.exceptions.ResponseError) -> bool:
    # Redis 7 keeps a script's OOM error code; 6.2 wraps it in "ERR Error running script"
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or "-OOM " in str(exc)


# --- call builders: the one place that knows each script's KEYS/ARGV layout --------------------


def _enqueue_call(k: QueueKeys, items: Iterable[Outgoing], guard: Guard | None = None) -> Call:
    keys = [k.waiting, k.messages, k.delayed, k.stats, k.dedupe]
    if guard is None:
        argv: list[Any] = [k.notify, "", "", "", 0]
    else:
        keys.append(guard.key)
        argv = [k.notify, guard.mode, guard.field, guard.value, guard.ttl_ms]
    for message_id, delay_ms, body, dedupe in items:
        argv += (message_id, delay_ms, body, dedupe or "")
    return "enqueue", keys, argv


def _enqueued_ids(reply: Sequence[bytes] | None) -> list[str] | None:
    return None if reply is None else [i.decode() for i in reply]


def _fetch_call(k: QueueKeys, lease_ms: int, count: int) -> Call:
    keys = [k.waiting, k.messages, k.inflight, k.delayed, k.stats, k.deliveries, k.owners]
    return "fetch", keys, [lease_ms, count, MOVE_LIMIT]


def _ack_call(k: QueueKeys, done: Sequence[Finished], ttl_ms: int) -> Call:
    keys = [k.inflight, k.messages, k.stats, k.deliveries, k.dedupe, k.owners]
    argv: list[Any] = [ttl_ms]
    for message_id, owner, result, dedupe in done:
        argv += (message_id, owner, result or b"", dedupe or "")
        if result:
            keys.append(k.result(message_id))
    return "ack", keys, argv


def _retry_call(k: QueueKeys, message_id: str, delay_ms: int, body: bytes, owner: int) -> Call:
    keys = [k.inflight, k.messages, k.delayed, k.stats, k.owners]
    return "retry", keys, [message_id, delay_ms, body, owner]


def _dead_call(
    k: QueueKeys,
    message_id: str | bytes,
    entry: tuple[bytes, bytes],
    result: bytes | None,
    dedupe: str | None,
    bounds: tuple[int, float],
    result_ttl_s: float,
    owner: int | None,
    dlq_id: str | None,
) -> Call:
    max_entries, max_age_s = bounds
    keys = [
        k.inflight,
        k.messages,
        k.dead,
        k.dead_entries,
        k.stats,
        k.deliveries,
        k.dedupe,
        k.result(message_id) if isinstance(message_id, str) else k.result_prefix,
        k.owners,
    ]
    argv = [
        message_id,
        entry[0],
        max_entries,
        result or b"",
        int(result_ttl_s * 1000),
        int(max_age_s * 1000),
        dedupe or "",
        "" if owner is None else owner,
        dlq_id or "",
    ]
    keys.append(k.dead_bodies)
    argv.append(entry[1])
    return "dead", keys, argv


def _handback_call(k: QueueKeys, held: Sequence[Held]) -> Call:
    argv: list[Any] = [k.notify]
    for message_id, owner in held:
        argv += (message_id, owner)
    return "handback", [k.inflight, k.waiting, k.messages, k.deliveries, k.owners], argv


def _renew_call(k: QueueKeys, lease_ms: int, held: Sequence[Held]) -> Call:
    argv: list[Any] = [lease_ms]
    for message_id, owner in held:
        argv += (message_id, owner)
    return "renew", [k.inflight, k.owners], argv


def _replay_call(k: QueueKeys, fresh: Sequence[tuple[str, bytes, str | None]]) -> Call:
    argv: list[Any] = [k.notify]
    for message_id, body, dedupe in fresh:
        argv += (message_id, body, dedupe or "")
    keys = [k.dead, k.dead_entries, k.messages, k.waiting, k.deliveries, k.dedupe, k.owners]
    return "replay", [*keys, k.dead_bodies], argv


def _purge_call(k: QueueKeys, min_age_ms: int, batch: int, ids: Sequence[str] = ()) -> Call:
    return "purge", [k.dead, k.dead_entries, k.dead_bodies], [min_age_ms, batch, *ids]


DUE_SOON_MS = 5000
"""Delayed messages due within this are reported as ``due_soon`` (the autoscaler counts them)."""


def _group_start_call(k: QueueKeys, group_id: str, size: int, then: bytes, ttl_ms: int) -> Call:
    return "group_start", [k.group(group_id)], [then, size, ttl_ms]


def _join_call(
    k: QueueKeys,
    group_id: str,
    index: int,
    result: bytes,
    workflow_id: str,
    ttls_ms: tuple[int, int],
) -> Call:
    keys = [k.group(group_id), k.group_done(group_id), k.result(workflow_id)]
    return "join", keys, [index, result, *ttls_ms]


def _group_done_call(k: QueueKeys, group_id: str, ttl_ms: int) -> Call:
    return "group_done", [k.group(group_id), k.group_done(group_id)], [ttl_ms]


def _workflow_failed_call(k: QueueKeys, workflow_id: str, failure: bytes, ttl_ms: int) -> Call:
    return "workflow_failed", [k.result(workflow_id)], [failure, ttl_ms]


def _schedule_publish_call(
    k: QueueKeys, now_ms: int, schedules: Sequence[tuple[str, bytes]]
) -> Call:
    argv: list[Any] = [now_ms]
    for name, raw in schedules:
        argv += (name, raw)
    return "schedule_publish", [k.schedules, k.schedules_seen, k.schedules_declared], argv


def _measure_call(k: QueueKeys) -> Call:
    return "measure", [k.waiting, k.inflight, k.delayed, k.dead, k.stats], [DUE_SOON_MS]


MAX_ID_BYTES = 128
"""Longest message id a worker accepts (Shoal's own are 32 hex digits, workflow steps' a few
more): a longer key, or one that is not printable UTF-8 text, is poison."""


def _parse_fetch(reply: Sequence[Any]) -> Fetched:
    leased = []
    for i in range(2, len(reply), 4):
        raw: bytes = reply[i]
        body, deliveries, owner = reply[i + 1], int(reply[i + 2]), int(reply[i + 3])
        text = _valid_id(raw)
        if text is not None:
            leased.append(Leased(text, body, deliveries, owner))
        else:  # poison: the raw key is kept, so it can still be dead-lettered under a safe name
            leased.append(Leased(readable_id(raw), body, deliveries, owner, raw))
    return Fetched(leased, int(reply[0]), int(reply[1]))


def _valid_id(raw: bytes) -> str | None:
    if len(raw) > MAX_ID_BYTES:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def readable_id(raw: bytes) -> str:
    """A printable, bounded name for a key or token that is not a valid id: its escaped text
    when short, else ``key-`` and a digest (the DLQ entry keeps an excerpt of the bytes)."""
    if len(raw) <= MAX_ID_BYTES:
        return repr(raw)[2:-1]  # printable ASCII as is, every other byte as \xNN
    return "key-" + hashlib.sha256(raw).hexdigest()[:32]


def _parse_ack(reply: Sequence[Any]) -> tuple[int, list[str]]:
    return int(reply[0]), [i.decode("utf-8", "backslashreplace") for i in reply[1:]]


# --- clients ------------------------------------------------------------------------------------


class _KeysMixin:
    settings: Settings
    _keys: dict[str, QueueKeys]

    @property
    def _result_ttl_ms(self) -> int:
        return int(self.settings.result_ttl_s * 1000)

    @property
    def _workflow_ttl_ms(self) -> int:
        return int(self.settings.workflow_ttl_s * 1000)

    def keys(self, queue: str) -> QueueKeys:
        """The (cached) keys of ``queue``."""
        k = self._keys.get(queue)
        if k is None:
            k = self._keys[queue] = queue_keys(self.settings.key_prefix, queue)
        return k


def redis_call_timeout_s(lease_s: float) -> float:
    """How long a worker waits for one Redis reply: a third of the lease (1 to 5 s), so a
    stalled Redis fails a renewal in time for the next one, well before the lease ends."""
    return max(1.0, min(5.0, lease_s / 3))


CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, socket.gaierror)
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)
"""Every Redis failure, connection or reply (READONLY after a failover, OOM, BUSY): retried with
backoff by the loops, never allowed to end one."""
MAX_BACKOFF_S = 5.0


ENQUEUE_RESENDS = (0.05, 0.2)
"""Pauses before resending an enqueue whose connection failed *before it was sent whole* (it
certainly did not run: a connection dropped while idle, a failover). One that reached Redis is
never resent: a worker may already have run and acked it, and a resend would run it again; the
caller gets EnqueueOutcomeUnknown instead. redis-py itself resends nothing."""


class _ExplainingRedis(redis.Redis):
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


class Broker(_KeysMixin):
    """Blocking Redis client for producers, the CLI and the operator's measurements."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis = cast(
            _ExplainingRedis,
            _ExplainingRedis.from_url(
                settings.redis_url,
                socket_connect_timeout=5,
                health_check_interval=30,
                retry=Retry(NoBackoff(), 0),
                **settings.redis_options(),
            ),
        )
        self._scripts: dict[str, Script] = {
            name: self.redis.register_script(_script_source(name)) for name in SCRIPT_NAMES
        }
        self._keys: dict[str, QueueKeys] = {}
        self._known_queues: set[str] = set()

    def _run(self, call: Call, client: Any = None) -> Any:
        name, keys, argv = call
        return self._scripts[name](keys, argv, client=client)

    def _remember_queue(self, queue: str) -> None:
        if queue not in self._known_queues:
            self.redis.sadd(queues_key(self.settings.key_prefix), queue)
            self._known_queues.add(queue)

    def enqueue(
        self, queue: str, items: Sequence[Outgoing], *, task: str | None = None
    ) -> list[str]:
        """Store messages in one round trip; returns each one's id (for a deduplicated message,
        the id of the live message that holds its dedupe key). ``task`` names them in errors.

        Raises RedisFull when Redis is at its maxmemory (nothing stored), EnqueueOutcomeUnknown
        when the connection failed after the messages were sent (they may have been stored),
        and BrokerError when Redis could not be reached (nothing stored)."""
        ids = self.enqueue_guarded(queue, items, None, task=task)
        assert ids is not None  # only a guard refuses
        return ids

    def enqueue_guarded(
        self,
        queue: str,
        items: Sequence[Outgoing],
        guard: Guard | None,
        *,
        task: str | None = None,
    ) -> list[str] | None:
        """Like :meth:`enqueue`, but nothing is stored and None is returned when ``guard``
        refuses (the step was already enqueued, the tick already claimed)."""
        call = _enqueue_call(self.keys(queue), items, guard)
        for pause_s in (*ENQUEUE_RESENDS, None):
            sent = False
            try:
                self._remember_queue(queue)
                self.redis.begin()
                sent = True  # from here, the enqueue itself may reach Redis
                return _enqueued_ids(self._run(call))
            except BrokerError as exc:
                if not isinstance(exc.__cause__, CONNECTION_ERRORS):
                    raise
                sent = sent and self.redis.sent_before_failing()
                if not sent and pause_s is not None:
                    time.sleep(pause_s)  # it certainly did not run: safe to send again
                    continue
                what = _enqueue_what(queue, items, task)
                cause = exc.__cause__
                raise _enqueue_failed(self.redis.target(), cause, what, sent, items) from exc
            except redis.exceptions.ResponseError as exc:
                if _is_out_of_memory(exc):
                    what = _enqueue_what(queue, items, task)
                    raise _redis_full(self.redis.target(), what) from exc
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def start_group(self, queue: str, group_id: str, size: int, then: bytes) -> None:
        """Write a workflow group's record (see :meth:`AsyncBroker.start_group`)."""
        self._run(_group_start_call(self.keys(queue), group_id, size, then, self._workflow_ttl_ms))

    def replay(self, queue: str, fresh: Sequence[tuple[str, bytes, str | None]]) -> int:
        """Move dead letters back to waiting with fresh envelopes (id, envelope, dedupe key);
        returns how many moved."""
        return int(self._run(_replay_call(self.keys(queue), fresh))) if fresh else 0

    def purge(self, queue: str, min_age_s: float | None = None) -> int:
        """Delete dead letters at least ``min_age_s`` old (all when None); returns how many."""
        min_age_ms = -1 if min_age_s is None else int(min_age_s * 1000)
        total = 0
        while n := int(self._run(_purge_call(self.keys(queue), min_age_ms, 1000))):
            total += n
        return total

    def purge_ids(
        self, queue: str, ids: Sequence[str], min_age_s: float | None = None
    ) -> list[str]:
        """Delete these dead letters (those at least ``min_age_s`` old); returns the deleted."""
        min_age_ms = -1 if min_age_s is None else int(min_age_s * 1000)
        deleted: list[bytes] = []
        for start in range(0, len(ids), 1000):
            call = _purge_call(self.keys(queue), min_age_ms, 0, ids[start : start + 1000])
            deleted += self._run(call)
        return [i.decode() for i in deleted]

    def measure(self, queue: str) -> QueueStats:
        """The queue's figures, O(1) in Redis."""
        return QueueStats.from_reply(queue, self._run(_measure_call(self.keys(queue))))

    def measure_many(self, queues: Sequence[str]) -> list[QueueStats]:
        """Several queues' figures in one pipelined round trip."""
        pipe = self.redis.pipeline(transaction=False)
        for q in queues:
            self._run(_measure_call(self.keys(q)), client=pipe)
        try:
            replies = pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise connection_error(self.settings.redis_url, exc) from exc
        return [QueueStats.from_reply(q, r) for q, r in zip(queues, replies, strict=True)]

    def workers(self) -> list[dict[str, Any]]:
        """Live worker registrations (id, host, queues, in_flight, …); expired ones pruned."""
        prefix = self.settings.key_prefix
        raw_ids: list[bytes] = self.redis.zrange(workers_key(prefix), 0, -1)  # type: ignore[assignment]
        ids = [i.decode() for i in raw_ids]
        if not ids:
            return []
        blobs = self.redis.mget([worker_key(prefix, i) for i in ids])
        live = []
        for worker_id, blob in zip(ids, blobs, strict=True):
            if blob is None:  # its process died without deregistering
                self.redis.zrem(workers_key(prefix), worker_id)
            else:
                live.append(orjson.loads(blob))
        return live

    def queues(self) -> list[str]:
        """Every queue that was ever enqueued to, sorted."""
        names: set[bytes] = self.redis.smembers(queues_key(self.settings.key_prefix))  # type: ignore[assignment]
        return sorted(n.decode() for n in names)

    def wait_result(self, queue: str, message_id: str, timeout_s: float) -> bytes | None:
        """Block until the message's result is stored (or ``timeout_s`` passes); None on timeout.

        BLMOVE from the list onto itself reads the result without consuming it."""
        key = self.keys(queue).result(message_id)
        deadline = time.monotonic() + timeout_s
        while True:  # block in slices: each stays well under the client's socket timeout
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            value = self.redis.blmove(key, key, min(1.0, left), "RIGHT", "RIGHT")  # type: ignore[arg-type]
            if isinstance(value, bytes):
                return value

    def ping(self) -> None:
        """Raise a BrokerError naming the URL when Redis does not answer."""
        self.redis.ping()

    def close(self) -> None:
        self.redis.close()


class AsyncBroker(_KeysMixin):
    """The worker's asyncio Redis client. Connection errors propagate as redis-py errors:
    the worker's loops own the reconnect-with-backoff policy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Every call returns (or fails) well within a lease, and is not resent by redis-py: the
        # worker's loops own retrying, and a stalled Redis must never stall them past a lease.
        timeout_s = redis_call_timeout_s(settings.lease_s)
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_keepalive=True,
            retry=AsyncRetry(NoBackoff(), 0),
            **settings.redis_options(),
        )
        self._scripts: dict[str, AsyncScript] = {
            name: self.redis.register_script(_script_source(name)) for name in SCRIPT_NAMES
        }
        self._keys: dict[str, QueueKeys] = {}
        self._known_queues: set[str] = set()

    async def _run(self, call: Call) -> Any:
        name, keys, argv = call
        return await self._scripts[name](keys, argv)

    async def enqueue(
        self, queue: str, items: Sequence[Outgoing], guard: Guard | None = None
    ) -> list[str] | None:
        """Store messages (see :meth:`Broker.enqueue_guarded`); None when the guard refuses."""
        if queue not in self._known_queues:
            await self.redis.sadd(queues_key(self.settings.key_prefix), queue)
            self._known_queues.add(queue)
        return _enqueued_ids(await self._run(_enqueue_call(self.keys(queue), items, guard)))

    async def fetch(self, queue: str, count: int) -> Fetched:
        lease_ms = int(self.settings.lease_s * 1000)
        return _parse_fetch(await self._run(_fetch_call(self.keys(queue), lease_ms, count)))

    async def ack(self, queue: str, done: Sequence[Finished]) -> tuple[int, list[str]]:
        """Finish messages; returns how many were removed, and the ids whose lease this worker
        no longer owns (nothing changed for them: another delivery decides)."""
        return _parse_ack(await self._run(_ack_call(self.keys(queue), done, self._result_ttl_ms)))

    async def retry(
        self, queue: str, message_id: str, delay_s: float, body: bytes, owner: int
    ) -> bool:
        """Put a failed message back, due in ``delay_s``; False when this worker no longer owns
        its lease (finished, or recovered after the lease lapsed)."""
        call = _retry_call(self.keys(queue), message_id, max(0, int(delay_s * 1000)), body, owner)
        return bool(await self._run(call))

    async def dead(
        self,
        queue: str,
        message_id: str | bytes,
        entry: tuple[bytes, bytes],
        result: bytes | None,
        dedupe: str | None,
        bounds: tuple[int, float],
        owner: int | None,
        dlq_id: str | None = None,
    ) -> bool:
        """Dead-letter a message; ``entry`` is (summary JSON, stored body) as built by
        :func:`shoal.dlq.dead_letter_entry`; ``bounds`` is the DLQ's (max entries, max age in
        seconds).

        ``owner``: the caller's owner token of a stored message (nothing happens, and False is
        returned, if it no longer owns the lease); None for a malformed waiting token, whose
        entry is filed under ``dlq_id`` and touches no message state. ``dlq_id`` also files a
        message whose key is not text (``message_id`` given as bytes) under a readable id."""
        k = self.keys(queue)
        ttl = self.settings.result_ttl_s
        call = _dead_call(k, message_id, entry, result, dedupe, bounds, ttl, owner, dlq_id)
        return bool(await self._run(call))

    async def queue_defaults(self, queue: str) -> dict[str, Any]:
        """The queue's stored defaults (see :mod:`shoal.queue_defaults`)."""
        return queue_defaults.parse(queue, await self.redis.hgetall(self.keys(queue).config))

    async def handback(self, queue: str, held: Sequence[Held]) -> int:
        """Return (id, owner token) leases this worker will not run; only its own move."""
        if not held:
            return 0
        return int(await self._run(_handback_call(self.keys(queue), held)))

    async def renew(self, queue: str, held: Sequence[Held]) -> list[str]:
        """Extend the (id, owner token) leases this worker holds; returns the ids it no longer
        owns (recovered or re-delivered elsewhere, or finished): it must stop running them."""
        if not held:
            return []
        lease_ms = int(self.settings.lease_s * 1000)
        lost = await self._run(_renew_call(self.keys(queue), lease_ms, held))
        return [i.decode("utf-8", "backslashreplace") for i in lost]

    async def start_group(self, queue: str, group_id: str, size: int, then: bytes) -> None:
        """Write a workflow group's record (what follows it, its size) in ``queue``'s slot."""
        k = self.keys(queue)
        await self._run(_group_start_call(k, group_id, size, then, self._workflow_ttl_ms))

    async def join(
        self, queue: str, group_id: str, index: int, result: bytes, workflow_id: str
    ) -> list[bytes]:
        """Record member ``index``'s result in a workflow group; see ``lua/join.lua`` for the
        reply (``started``, ``expired``, ``waiting``, or ``complete`` with what follows and
        the results)."""
        ttls = (self._workflow_ttl_ms, self._result_ttl_ms)
        call = _join_call(self.keys(queue), group_id, index, result, workflow_id, ttls)
        return list(await self._run(call))

    async def group_done(self, queue: str, group_id: str) -> None:
        """What follows a workflow group has started: drop its results, remember that."""
        await self._run(_group_done_call(self.keys(queue), group_id, self._workflow_ttl_ms))

    async def fail_workflow(self, queue: str, workflow_id: str, failure: bytes) -> bool:
        """Store a workflow's failure for its handle, unless it already succeeded."""
        k = self.keys(queue)
        return bool(
            await self._run(_workflow_failed_call(k, workflow_id, failure, self._result_ttl_ms))
        )

    async def publish_schedules(
        self, queue: str, now_ms: int, schedules: Sequence[tuple[str, bytes]]
    ) -> int:
        """Declare code schedules (name, JSON) for ``queue``; see ``lua/schedule_publish.lua``."""
        return int(await self._run(_schedule_publish_call(self.keys(queue), now_ms, schedules)))

    async def measure(self, queue: str) -> QueueStats:
        return QueueStats.from_reply(queue, await self._run(_measure_call(self.keys(queue))))

    async def close(self) -> None:
        await self.redis.aclose()
