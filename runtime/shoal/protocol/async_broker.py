"""The worker's asyncio client: every transition a worker makes (one script call each), and the
few plain reads and writes a worker needs besides (the clock, schedules, workflow checks, its
registration, the notify channels)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio.cluster as aiocluster
from redis.commands.core import AsyncScript

from shoal import queue_defaults
from shoal.protocol.connection import (
    REDIS_ERRORS,
    AsyncRedis,
    open_async_redis,
    redis_call_timeout_s,
)
from shoal.protocol.direct import AsyncDirectScripts
from shoal.protocol.keys import QueueKeys, queues_key, worker_key, workers_key
from shoal.protocol.registry import WorkerRegistration
from shoal.protocol.scripts import (
    SCRIPT_NAMES,
    Call,
    Fetched,
    Finished,
    Guard,
    Held,
    KeyedClient,
    Outgoing,
    QueueStats,
    Renewed,
    ack_call,
    dead_call,
    enqueue_call,
    enqueued_ids,
    fetch_call,
    group_done_call,
    group_start_call,
    handback_call,
    join_call,
    measure_call,
    parse_ack,
    parse_fetch,
    parse_renew,
    renew_call,
    retry_call,
    schedule_publish_call,
    script_source,
    throttle_call,
    workflow_failed_call,
)
from shoal.settings import Settings


class AsyncBroker(KeyedClient):
    """The worker's asyncio Redis client. Connection errors propagate as redis-py errors:
    the worker's loops own the reconnect-with-backoff policy."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # Every call returns (or fails) well within a lease, and is not resent by redis-py: the
        # worker's loops own retrying, and a stalled Redis must never stall them past a lease.
        timeout_s = redis_call_timeout_s(settings.lease_s)
        self.redis: AsyncRedis = open_async_redis(
            settings,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_keepalive=True,
        )
        self._scripts: dict[str, AsyncScript] = {
            name: self.redis.register_script(script_source(name)) for name in SCRIPT_NAMES
        }
        self._direct = AsyncDirectScripts.of(self.redis)
        self._keys: dict[str, QueueKeys] = {}
        self._known_queues: set[str] = set()

    async def _run(self, call: Call) -> Any:
        name, keys, argv = call
        if self._direct is not None:
            return await self._direct.run(self._scripts[name], keys, argv)
        return await self._scripts[name](keys, argv)

    async def enqueue(
        self, queue: str, items: Sequence[Outgoing], guard: Guard | None = None
    ) -> list[str] | None:
        """Store messages (see :meth:`Broker.enqueue_guarded`); None when the guard refuses."""
        if queue not in self._known_queues:
            await self.redis.sadd(queues_key(self.settings.key_prefix), queue)
            self._known_queues.add(queue)
        return enqueued_ids(await self._run(enqueue_call(self.keys(queue), items, guard)))

    async def fetch(self, queue: str, count: int) -> Fetched:
        lease_ms = int(self.settings.lease_s * 1000)
        call = fetch_call(self.keys(queue), lease_ms, count, self._result_ttl_ms)
        return parse_fetch(await self._run(call))

    async def ack(self, queue: str, done: Sequence[Finished]) -> tuple[int, list[str]]:
        """Finish messages; returns how many were removed, and the ids whose lease this worker
        no longer owns (nothing changed for them: another delivery decides)."""
        return parse_ack(await self._run(ack_call(self.keys(queue), done, self._result_ttl_ms)))

    async def retry(
        self, queue: str, message_id: str, delay_s: float, body: bytes, owner: int
    ) -> bool:
        """Put a failed message back, due in ``delay_s``; False when this worker no longer owns
        its lease (finished, or recovered after the lease lapsed)."""
        call = retry_call(self.keys(queue), message_id, max(0, int(delay_s * 1000)), body, owner)
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
        :func:`shoal.dead_letter.dead_letter_entry`; ``bounds`` is the DLQ's (max entries, max
        age in seconds).

        ``owner``: the caller's owner token of a stored message (nothing happens, and False is
        returned, if it no longer owns the lease); None for a malformed waiting token, whose
        entry is filed under ``dlq_id`` and touches no message state. ``dlq_id`` also files a
        message whose key is not text (``message_id`` given as bytes) under a readable id."""
        k = self.keys(queue)
        ttl = self.settings.result_ttl_s
        call = dead_call(k, message_id, entry, result, dedupe, bounds, ttl, owner, dlq_id)
        return bool(await self._run(call))

    async def queue_defaults(self, queue: str) -> dict[str, Any]:
        """The queue's stored defaults (see :mod:`shoal.queue_defaults`)."""
        return queue_defaults.parse(queue, await self.redis.hgetall(self.keys(queue).config))

    async def handback(self, queue: str, held: Sequence[Held]) -> int:
        """Return (id, owner token) leases this worker will not run; only its own move."""
        if not held:
            return 0
        return int(await self._run(handback_call(self.keys(queue), held)))

    async def renew(self, queue: str, held: Sequence[Held]) -> Renewed:
        """Extend the (id, owner token) leases this worker holds; returns the ids it no longer
        owns (recovered or re-delivered elsewhere, or finished: it must stop running them), and
        the ids it still owns whose cancel was asked (it must stop them as cancelled)."""
        if not held:
            return Renewed([], [])
        lease_ms = int(self.settings.lease_s * 1000)
        return parse_renew(await self._run(renew_call(self.keys(queue), lease_ms, held)))

    async def throttle(
        self, queue: str, task: str, interval_ms: float, message_id: str, owner: int
    ) -> int:
        """May this leased message of a rate-limited task start now? 0: yes; -1: the lease is
        not this worker's any more; else it was put back as delayed until that time (ms)."""
        call = throttle_call(self.keys(queue), task, interval_ms, message_id, owner)
        return int(await self._run(call))

    async def report_progress(self, queue: str, message_id: str, report: bytes) -> None:
        """Store a running message's progress report, kept for the result TTL."""
        key = self.keys(queue).progress(message_id)
        await self.redis.set(key, report, px=self._result_ttl_ms)

    async def start_group(self, queue: str, group_id: str, size: int, then: bytes) -> None:
        """Write a workflow group's record (what follows it, its size) in ``queue``'s slot."""
        k = self.keys(queue)
        await self._run(group_start_call(k, group_id, size, then, self._workflow_ttl_ms))

    async def join(
        self, queue: str, group_id: str, index: int, result: bytes, workflow_id: str
    ) -> list[bytes]:
        """Record member ``index``'s result in a workflow group; see ``lua/join.lua`` for the
        reply (``started``, ``expired``, ``waiting``, or ``complete`` with what follows and
        the results)."""
        ttls = (self._workflow_ttl_ms, self._result_ttl_ms)
        call = join_call(self.keys(queue), group_id, index, result, workflow_id, ttls)
        return list(await self._run(call))

    async def group_done(self, queue: str, group_id: str) -> None:
        """What follows a workflow group has started: drop its results, remember that."""
        await self._run(group_done_call(self.keys(queue), group_id, self._workflow_ttl_ms))

    async def fail_workflow(self, queue: str, workflow_id: str, failure: bytes) -> bool:
        """Store a workflow's failure for its handle, unless it already succeeded."""
        k = self.keys(queue)
        return bool(
            await self._run(workflow_failed_call(k, workflow_id, failure, self._result_ttl_ms))
        )

    async def publish_schedules(
        self, queue: str, now_ms: int, schedules: Sequence[tuple[str, bytes]]
    ) -> int:
        """Declare code schedules (name, JSON) for ``queue``; see ``lua/schedule_publish.lua``."""
        return int(await self._run(schedule_publish_call(self.keys(queue), now_ms, schedules)))

    async def measure(self, queue: str) -> QueueStats:
        return QueueStats.from_reply(queue, await self._run(measure_call(self.keys(queue))))

    async def time_s(self) -> float:
        """Redis's clock (epoch seconds), the one every scheduler keeps."""
        seconds, micros = await self.redis.time()
        return seconds + micros / 1e6

    async def schedules_and_claims(
        self, queue: str
    ) -> tuple[dict[bytes, bytes], dict[bytes, bytes]]:
        """``queue``'s stored schedules (name → JSON) and their claims (name → last tick)."""
        k = self.keys(queue)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(k.schedules)
        pipe.hgetall(k.schedule_runs)
        schedules, runs = await pipe.execute()
        return schedules, runs

    async def group_fed(self, queue: str, group_id: str, index: int) -> bool:
        """Whether member ``index`` of a workflow group has recorded its result (or what
        follows the group has started already)."""
        k = self.keys(queue)
        if await self.redis.exists(k.group_done(group_id)):
            return True
        return bool(await self.redis.hexists(k.group(group_id), str(index)))

    async def steps_started(self, queue: str, workflow_id: str, guards: Sequence[str]) -> bool:
        """Whether every one of these enqueue guards of a workflow was claimed in ``queue``."""
        key = self.keys(queue).workflow(workflow_id)
        for guard in guards:
            if not await self.redis.hexists(key, guard):
                return False
        return True

    # --- the worker registry ----------------------------------------------------------------

    async def register_worker(self, registration: WorkerRegistration, ttl_s: float) -> None:
        """Write (or refresh) a worker's registration, which lapses after ``ttl_s``."""
        prefix = self.settings.key_prefix
        worker_id = registration.id
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(worker_key(prefix, worker_id), registration.to_json(), px=int(ttl_s * 1000))
        pipe.zadd(workers_key(prefix), {worker_id: int(time.time() * 1000)})  # ms, as keys.py
        await pipe.execute()

    async def deregister_worker(self, worker_id: str) -> None:
        prefix = self.settings.key_prefix
        await self.redis.delete(worker_key(prefix, worker_id))
        await self.redis.zrem(workers_key(prefix), worker_id)

    def notifications(self, queues: Sequence[str]) -> Notifications:
        """The notify channels of ``queues`` (subscribe before fetching: see
        :class:`Notifications`)."""
        return Notifications(self.redis, [self.keys(q).notify for q in queues])

    async def close(self) -> None:
        if self._direct is not None:
            await self._direct.close()
        await self.redis.aclose()


class Notifications:
    """Wakes an idle fetch loop: every enqueue that makes a waiting list non-empty publishes on
    the queue's notify channel. A missed notification costs only latency (fetches also run on
    a timer), never a message."""

    def __init__(self, redis: AsyncRedis, channels: Sequence[str]) -> None:
        self._redis = redis
        self._pubsub = redis.pubsub()
        self._channels = list(channels)

    async def subscribe(self) -> None:
        """(Re)subscribe, after a connect or a reconnect. On a Cluster, a PUBLISH reaches every
        node, so one subscription anywhere hears every queue: after a failure it is made anew,
        on whichever node serves the channel's slot now (the old one may be gone)."""
        if isinstance(self._redis, aiocluster.RedisCluster):
            await self._redis.initialize()  # the slot map, once
            with contextlib.suppress(*REDIS_ERRORS):
                await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(*self._channels)

    async def wait(self, timeout_s: float) -> None:
        """Return at the next notification, or after ``timeout_s``."""
        await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)

    async def close(self) -> None:
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
