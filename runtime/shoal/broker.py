"""The Redis protocol: every state transition of a message is one Lua script in ``lua/``.

:class:`Broker` is the blocking client producers and the CLI use; :class:`AsyncBroker` is the
worker's. Both build their calls with the same ``_*_call`` functions, so the key and argument
layout each script documents in its header lives in exactly one Python place too.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript, Script

from shoal import queue_defaults
from shoal.errors import BrokerError
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

Finished = tuple[str, bytes | None, str | None]
"""A message to ack: (id, result JSON or None, dedupe key or None)."""


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


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one fetch returned: leased (id, stored bytes, deliveries) triples, and when the next
    delayed message is due. ``deliveries`` counts how often the message was handed to a worker,
    this time included; the bytes are None for a malformed waiting entry (dead-lettered)."""

    messages: list[tuple[str, bytes | None, int]]
    next_due_ms: int
    now_ms: int


def connection_error(url: str, exc: BaseException) -> BrokerError:
    """A one-line error naming the (masked) URL, what failed, and what to check."""
    return BrokerError(
        f"cannot reach Redis at {mask_url(url)}: {str(exc).rstrip('.')}. Check SHOAL_REDIS_URL "
        "(redis://host:port/db) and that the server is running."
    )


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
    keys = [k.waiting, k.messages, k.inflight, k.delayed, k.stats, k.deliveries]
    return "fetch", keys, [lease_ms, count, MOVE_LIMIT]


def _ack_call(k: QueueKeys, done: Sequence[Finished], ttl_ms: int) -> Call:
    keys = [k.inflight, k.messages, k.stats, k.deliveries, k.dedupe]
    argv: list[Any] = [ttl_ms]
    for message_id, result, dedupe in done:
        argv += (message_id, result or b"", dedupe or "")
        if result:
            keys.append(k.result(message_id))
    return "ack", keys, argv


def _retry_call(k: QueueKeys, message_id: str, delay_ms: int, body: bytes, delivery: int) -> Call:
    keys = [k.inflight, k.messages, k.delayed, k.stats, k.deliveries]
    return "retry", keys, [message_id, delay_ms, body, delivery]


def _dead_call(
    k: QueueKeys,
    message_id: str,
    entry: tuple[bytes, bytes],
    result: bytes | None,
    dedupe: str | None,
    bounds: tuple[int, float],
    result_ttl_s: float,
    delivery: int | None,
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
        k.result(message_id),
    ]
    argv = [
        message_id,
        entry[0],
        max_entries,
        result or b"",
        int(result_ttl_s * 1000),
        int(max_age_s * 1000),
        dedupe or "",
        "" if delivery is None else delivery,
    ]
    keys.append(k.dead_bodies)  # last: dead.lua reads KEYS[#KEYS] and ARGV[#ARGV]
    argv.append(entry[1])
    return "dead", keys, argv


def _handback_call(k: QueueKeys, held: Sequence[tuple[str, int]]) -> Call:
    argv: list[Any] = [k.notify]
    for message_id, delivery in held:
        argv += (message_id, delivery)
    return "handback", [k.inflight, k.waiting, k.messages, k.deliveries], argv


def _renew_call(k: QueueKeys, lease_ms: int, held: Sequence[tuple[str, int]]) -> Call:
    argv: list[Any] = [lease_ms]
    for message_id, delivery in held:
        argv += (message_id, delivery)
    return "renew", [k.inflight, k.deliveries], argv


def _replay_call(k: QueueKeys, fresh: Sequence[tuple[str, bytes, str | None]]) -> Call:
    argv: list[Any] = [k.notify]
    for message_id, body, dedupe in fresh:
        argv += (message_id, body, dedupe or "")
    keys = [k.dead, k.dead_entries, k.messages, k.waiting, k.deliveries, k.dedupe]
    return "replay", [*keys, k.dead_bodies], argv  # last: replay.lua reads KEYS[#KEYS]


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
    return "schedule_publish", [k.schedules, k.schedules_seen], argv


def _measure_call(k: QueueKeys) -> Call:
    return "measure", [k.waiting, k.inflight, k.delayed, k.dead, k.stats], [DUE_SOON_MS]


def _parse_fetch(reply: Sequence[Any]) -> Fetched:
    triples = [
        (reply[i].decode(), reply[i + 1], int(reply[i + 2])) for i in range(2, len(reply), 3)
    ]
    return Fetched(triples, int(reply[0]), int(reply[1]))


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


CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError, socket.gaierror)
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)
"""Every Redis failure, connection or reply (READONLY after a failover, OOM, BUSY): retried with
backoff by the loops, never allowed to end one."""
MAX_BACKOFF_S = 5.0


class _ExplainingRedis(redis.Redis):
    """A blocking client whose connection failures become one BrokerError naming the URL.

    Producers, the CLI and ``handle.result()`` all go through it, so none of them shows a
    redis-py traceback for a wrong SHOAL_REDIS_URL."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        except CONNECTION_ERRORS as exc:
            pool_kwargs = self.connection_pool.connection_kwargs
            url = _describe_target(pool_kwargs)
            raise connection_error(url, exc) from exc


def _describe_target(kwargs: dict[str, Any]) -> str:
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    auth = ":***@" if kwargs.get("password") else ""
    return f"redis://{auth}{kwargs.get('host')}:{kwargs.get('port')}/{kwargs.get('db', 0)}"


class Broker(_KeysMixin):
    """Blocking Redis client for producers, the CLI and the operator's measurements."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: redis.Redis = _ExplainingRedis.from_url(
            settings.redis_url,
            socket_connect_timeout=5,
            health_check_interval=30,
            **settings.redis_options(),
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

    def enqueue(self, queue: str, items: Sequence[Outgoing]) -> list[str]:
        """Store messages in one round trip; returns each one's id (for a deduplicated message,
        the id of the live message that holds its dedupe key)."""
        ids = self.enqueue_guarded(queue, items, None)
        assert ids is not None  # only a guard refuses
        return ids

    def enqueue_guarded(
        self, queue: str, items: Sequence[Outgoing], guard: Guard | None
    ) -> list[str] | None:
        """Like :meth:`enqueue`, but nothing is stored and None is returned when ``guard``
        refuses (the step was already enqueued, the tick already claimed)."""
        self._remember_queue(queue)
        return _enqueued_ids(self._run(_enqueue_call(self.keys(queue), items, guard)))

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
        self.redis: aioredis.Redis = aioredis.Redis.from_url(
            settings.redis_url,
            socket_connect_timeout=5,
            socket_keepalive=True,
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

    async def ack(self, queue: str, done: Sequence[Finished]) -> int:
        return int(await self._run(_ack_call(self.keys(queue), done, self._result_ttl_ms)))

    async def retry(
        self, queue: str, message_id: str, delay_s: float, body: bytes, delivery: int
    ) -> bool:
        """Put a failed message back, due in ``delay_s``; False when it is no longer this
        delivery's (finished, or re-delivered after its lease lapsed)."""
        call = _retry_call(
            self.keys(queue), message_id, max(0, int(delay_s * 1000)), body, delivery
        )
        return bool(await self._run(call))

    async def dead(
        self,
        queue: str,
        message_id: str,
        entry: tuple[bytes, bytes],
        result: bytes | None,
        dedupe: str | None,
        bounds: tuple[int, float],
        delivery: int | None,
    ) -> bool:
        """Dead-letter a message; ``entry`` is (summary JSON, stored body) as built by
        :func:`shoal.dlq.dead_letter_entry`; ``bounds`` is the DLQ's (max entries, max age in
        seconds).

        ``delivery``: the caller's delivery of a stored message (nothing happens, and False is
        returned, if it is no longer the latest); None for a malformed waiting token."""
        k = self.keys(queue)
        ttl = self.settings.result_ttl_s
        call = _dead_call(k, message_id, entry, result, dedupe, bounds, ttl, delivery)
        return bool(await self._run(call))

    async def queue_defaults(self, queue: str) -> dict[str, Any]:
        """The queue's stored defaults (see :mod:`shoal.queue_defaults`)."""
        return queue_defaults.parse(queue, await self.redis.hgetall(self.keys(queue).config))

    async def handback(self, queue: str, held: Sequence[tuple[str, int]]) -> int:
        """Return (id, delivery) leases this worker will not run; only its own move."""
        if not held:
            return 0
        return int(await self._run(_handback_call(self.keys(queue), held)))

    async def renew(self, queue: str, held: Sequence[tuple[str, int]]) -> None:
        """Extend the leases of (id, delivery) still running, where the delivery is still the
        latest (XX: never resurrects a finished message)."""
        if held:
            lease_ms = int(self.settings.lease_s * 1000)
            await self._run(_renew_call(self.keys(queue), lease_ms, held))

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
