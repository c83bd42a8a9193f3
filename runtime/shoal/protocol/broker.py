"""The blocking client: producers, the CLI, ``handle.result()`` and the operator's reads."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import redis
from redis.commands.core import Script

from shoal import queue_defaults
from shoal.errors import BrokerError
from shoal.protocol.connection import (
    CONNECTION_ERRORS,
    ENQUEUE_RESENDS,
    BlockingRedis,
    ExplainingCluster,
    begin_send,
    connection_error,
    enqueue_failed,
    enqueue_what,
    is_out_of_memory,
    open_redis,
    redis_full,
    replication_unconfirmed,
    run_then_wait,
    sent_before_failing,
)
from shoal.protocol.direct import DirectScripts
from shoal.protocol.keys import QueueKeys, queues_key, worker_key, workers_key
from shoal.protocol.registry import WorkerRegistration
from shoal.protocol.scripts import (
    MOVE_LIMIT,
    SCRIPT_NAMES,
    Call,
    Guard,
    KeyedClient,
    Outgoing,
    Promoted,
    QueueStats,
    ScheduleRecords,
    Whereabouts,
    cancel_call,
    clear_call,
    enqueue_call,
    enqueued_ids,
    group_start_call,
    measure_call,
    parse_promote,
    parse_status,
    promote_call,
    purge_call,
    readable_id,
    replay_call,
    script_source,
    status_call,
)
from shoal.settings import Settings

_PAUSES = (*ENQUEUE_RESENDS, None)
"""Before each resend of an enqueue that certainly did not run; None: the last attempt."""


class Broker(KeyedClient):
    """Blocking Redis client for producers, the CLI and the operator: message transitions, and
    the plain reads and writes of queue defaults, dead letters, schedules and the registries."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.redis: BlockingRedis = open_redis(
            settings, socket_connect_timeout=5, health_check_interval=30
        )
        self._scripts: dict[str, Script] = {
            name: self.redis.register_script(script_source(name)) for name in SCRIPT_NAMES
        }
        self._keys: dict[str, QueueKeys] = {}
        self._known_queues: set[str] = set()
        self._direct = DirectScripts.of(self.redis)
        """Enqueues skip redis-py's per-command layers (a Cluster's go through its routing)."""

    def _run(self, call: Call, client: Any = None) -> Any:
        name, keys, argv = call
        return self._scripts[name](keys, argv, client=client)

    def _remember_queue(self, queue: str) -> None:
        if queue not in self._known_queues:
            self.redis.sadd(queues_key(self.settings.key_prefix), queue)
            self._known_queues.add(queue)

    def enqueue(
        self,
        queue: str,
        items: Sequence[Outgoing],
        *,
        task: str | None = None,
        priority_ms: int | None = None,
    ) -> list[str]:
        """Store messages in one round trip; returns each one's id (for a deduplicated message,
        the id of the live message that holds its dedupe key). ``task`` names them in errors.

        Raises RedisFull when Redis is at its maxmemory (nothing stored), EnqueueOutcomeUnknown
        when the connection failed after the messages were sent (they may have been stored),
        and BrokerError when Redis could not be reached (nothing stored)."""
        ids = self.enqueue_guarded(queue, items, None, task=task, priority_ms=priority_ms)
        assert ids is not None  # only a guard refuses
        return ids

    def enqueue_guarded(
        self,
        queue: str,
        items: Sequence[Outgoing],
        guard: Guard | None,
        *,
        task: str | None = None,
        priority_ms: int | None = None,
    ) -> list[str] | None:
        """Like :meth:`enqueue`, but nothing is stored and None is returned when ``guard``
        refuses (the step was already enqueued, the tick already claimed). ``priority_ms``:
        the messages' priority offset (:func:`shoal.priority.offset_ms`), None for default."""
        call = enqueue_call(self.keys(queue), items, guard, priority_ms)
        for pause_s in _PAUSES:
            sent = False
            try:
                if queue not in self._known_queues:
                    self._remember_queue(queue)
                begin_send()
                sent = True  # from here, the enqueue itself may reach Redis
                if self.settings.redis_wait_replicas:
                    return enqueued_ids(self._run_replicated(call, queue, items, task))
                if self._direct is None:
                    return enqueued_ids(self._run(call))
                _, keys, argv = call
                return enqueued_ids(self._direct.run(self._scripts["enqueue"], keys, argv))
            except BrokerError as exc:
                if not isinstance(exc.__cause__, CONNECTION_ERRORS):
                    raise
                sent = sent and sent_before_failing()
                if not sent and pause_s is not None:
                    time.sleep(pause_s)  # it certainly did not run: safe to send again
                    continue
                what = enqueue_what(queue, items, task)
                cause = exc.__cause__
                raise enqueue_failed(self.redis.target(), cause, what, sent, items) from exc
            except redis.exceptions.ResponseError as exc:
                if is_out_of_memory(exc):
                    what = enqueue_what(queue, items, task)
                    raise redis_full(self.redis.target(), what) from exc
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _run_replicated(
        self, call: Call, queue: str, items: Sequence[Outgoing], task: str | None
    ) -> Any:
        """Run a script, then ``WAIT`` for replicas on the same connection (WAIT counts that
        connection's writes), in one round trip; ReplicationUnconfirmed when too few confirm
        (or WAIT failed: the message is stored all the same)."""
        name, keys, argv = call
        wanted = self.settings.redis_wait_replicas
        timeout_ms = int(self.settings.redis_wait_timeout_s * 1000)
        script = self._scripts[name]
        for _ in range(3):
            node = self._primary_of(keys[0])
            evalsha = ("EVALSHA", script.sha, len(keys), *keys, *argv)
            try:
                reply, confirmed = run_then_wait(node, evalsha, wanted, timeout_ms)
                if isinstance(reply, redis.exceptions.NoScriptError):  # did not run: load
                    node.script_load(script.script)
                    continue
                if isinstance(reply, redis.exceptions.MovedError | redis.exceptions.AskError):
                    assert isinstance(self.redis, ExplainingCluster)  # the slot moved: not run
                    self.redis.nodes_manager.initialize()  # (reloading the map is not counted)
                    continue
            except CONNECTION_ERRORS as exc:
                if isinstance(self.redis, ExplainingCluster):  # a node gone: reload the map
                    with contextlib.suppress(*CONNECTION_ERRORS):
                        self.redis.nodes_manager.initialize()
                raise connection_error(self.settings.redis_url, exc) from exc
            if isinstance(reply, Exception):
                raise reply
            # stored: from here, anything short of the replicas' word is "unconfirmed"
            count = confirmed if isinstance(confirmed, int) else 0
            if count < wanted:
                what = enqueue_what(queue, items, task)
                raise replication_unconfirmed(self.redis.target(), what, count, wanted, confirmed)
            return reply
        raise BrokerError(
            f"{enqueue_what(queue, items, task)} failed: the queue's slot kept moving between "
            f"the nodes of {self.redis.target()} (a resharding?); nothing was stored. Try again."
        )

    def _primary_of(self, key: str) -> Any:
        """The client of the node that holds ``key`` (the server itself when not a Cluster),
        for commands that must share one connection with the write they follow (WAIT)."""
        if not isinstance(self.redis, ExplainingCluster):
            return self.redis
        primary = self.redis.get_node_from_key(key)  # type: ignore[no-untyped-call]
        return self.redis.get_redis_connection(primary)

    def start_group(self, queue: str, group_id: str, size: int, then: bytes) -> None:
        """Write a workflow group's record (see :meth:`AsyncBroker.start_group`)."""
        self._run(group_start_call(self.keys(queue), group_id, size, then, self._workflow_ttl_ms))

    def replay(self, queue: str, fresh: Sequence[tuple[str, bytes, str | None]]) -> int:
        """Move dead letters back to waiting with fresh envelopes (id, envelope, dedupe key);
        returns how many moved."""
        return int(self._run(replay_call(self.keys(queue), fresh))) if fresh else 0

    def purge(self, queue: str, min_age_s: float | None = None) -> int:
        """Delete dead letters at least ``min_age_s`` old (all when None); returns how many."""
        min_age_ms = -1 if min_age_s is None else int(min_age_s * 1000)
        total = 0
        while n := int(self._run(purge_call(self.keys(queue), min_age_ms, 1000))):
            total += n
        return total

    def purge_ids(
        self, queue: str, ids: Sequence[str], min_age_s: float | None = None
    ) -> list[str]:
        """Delete these dead letters (those at least ``min_age_s`` old); returns the deleted."""
        min_age_ms = -1 if min_age_s is None else int(min_age_s * 1000)
        deleted: list[bytes] = []
        for start in range(0, len(ids), 1000):
            call = purge_call(self.keys(queue), min_age_ms, 0, ids[start : start + 1000])
            deleted += self._run(call)
        return [i.decode() for i in deleted]

    def measure(self, queue: str) -> QueueStats:
        """The queue's figures, O(1) in Redis."""
        return QueueStats.from_reply(queue, self._run(measure_call(self.keys(queue))))

    def promote(self, queue: str, max_calls: int = 10) -> Promoted:
        """Move what is due (delayed messages, retries, lapsed leases) into the waiting list, as
        a worker's fetch would, so its length is true with no worker running (KEDA reads it).
        Each call moves at most ``MOVE_LIMIT`` of each kind; calls repeat while one was full,
        at least once and at most ``max_calls`` times (a batch of lapsed leases acked meanwhile
        counts less than full: the rest waits for the next poll). Returns the totals, and the
        waiting length after."""
        delayed = recovered = 0
        for _ in range(max(1, max_calls)):
            done = parse_promote(self._run(promote_call(self.keys(queue), MOVE_LIMIT)))
            delayed, recovered = delayed + done.delayed, recovered + done.recovered
            if max(done.delayed, done.recovered) < MOVE_LIMIT:
                break
        return Promoted(delayed, recovered, done.waiting)

    def measure_many(self, queues: Sequence[str]) -> list[QueueStats]:
        """Several queues' figures in one pipelined round trip (one per queue on a Cluster,
        where redis-py pipelines no scripts)."""
        calls = [measure_call(self.keys(q)) for q in queues]
        if isinstance(self.redis, ExplainingCluster):
            replies = [self._run(call) for call in calls]
        else:
            pipe = self.redis.pipeline(transaction=False)
            for call in calls:
                self._run(call, client=pipe)
            try:
                replies = pipe.execute()
            except CONNECTION_ERRORS as exc:
                raise connection_error(self.settings.redis_url, exc) from exc
        return [QueueStats.from_reply(q, r) for q, r in zip(queues, replies, strict=True)]

    def workers(self) -> list[WorkerRegistration]:
        """Live worker registrations; expired ones pruned. Ids that are not text are shown
        escaped (see :func:`~shoal.protocol.scripts.readable_id`)."""
        prefix = self.settings.key_prefix
        raw_ids: list[bytes] = self.redis.zrange(workers_key(prefix), 0, -1)  # type: ignore[assignment]
        if not raw_ids:
            return []
        base = worker_key(prefix, "").encode()
        pipe = self.redis.pipeline(
            transaction=False
        )  # not MGET: on a Cluster, ids spread over slots
        for raw_id in raw_ids:
            pipe.get(base + raw_id)
        blobs: list[bytes | None] = pipe.execute()
        live = []
        for raw_id, blob in zip(raw_ids, blobs, strict=True):
            if blob is None:  # its process died without deregistering
                self.redis.zrem(workers_key(prefix), raw_id)
            else:
                live.append(WorkerRegistration.read(readable_id(raw_id), blob))
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

    def stored_results(self, queue: str, message_ids: Sequence[str]) -> list[bytes | None]:
        """The stored results of these messages (None where there is none), in one round trip,
        without waiting or consuming them."""
        pipe = self.redis.pipeline(transaction=False)
        k = self.keys(queue)
        for message_id in message_ids:
            pipe.lindex(k.result(message_id), 0)
        return list(pipe.execute())

    def time_ms(self) -> int:
        """Redis's clock (ms), the one every scheduler keeps (a host's own may be off)."""
        seconds, micros = self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # --- queue defaults (``{p}:{q}:config``) ----------------------------------------------------

    def queue_defaults(self, queue: str) -> dict[str, Any]:
        """The queue's stored defaults (see :mod:`shoal.queue_defaults`); empty when none."""
        return queue_defaults.parse(queue, self.redis.hgetall(self.keys(queue).config))

    def set_queue_defaults(self, queue: str, fields: Mapping[str, str]) -> None:
        """Store (validated, encoded) defaults, keeping the fields not given."""
        if fields:
            self.redis.hset(self.keys(queue).config, mapping=dict(fields))  # type: ignore[arg-type]

    def replace_queue_defaults(self, queue: str, fields: Mapping[str, str]) -> bool:
        """Make the stored defaults exactly ``fields`` (in one transaction: workers see no gap),
        only when they differ; returns whether Redis changed."""
        key = self.keys(queue).config
        raw: dict[bytes, bytes] = self.redis.hgetall(key)  # type: ignore[assignment]
        if {k.decode(): v.decode() for k, v in raw.items()} == dict(fields):
            return False
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if fields:
                pipe.hset(key, mapping=dict(fields))  # type: ignore[arg-type]
            pipe.execute()
        return True

    # --- dead letters (read side; ``dead.lua`` writes them) ------------------------------------

    def dead_count(self, queue: str) -> int:
        """How many dead letters ``queue`` holds."""
        return int(self.redis.zcard(self.keys(queue).dead))

    def dead_ids(self, queue: str, offset: int = 0, limit: int | None = None) -> list[str]:
        """Dead-letter ids, newest first (``limit`` None: all of them)."""
        stop = -1 if limit is None else offset + limit - 1
        ids: list[bytes] = self.redis.zrevrange(self.keys(queue).dead, offset, stop)  # type: ignore[assignment]
        # Shoal files every entry under a text id; one written by something else is listed
        # escaped (and reads as unreadable) rather than failing the whole listing
        return [i.decode("utf-8", "backslashreplace") for i in ids]

    def dead_summaries(self, queue: str, ids: Sequence[str]) -> list[bytes | None]:
        """The stored summaries of these dead letters (None where there is none)."""
        return self._hmget(self.keys(queue).dead_entries, ids)

    def dead_bodies(self, queue: str, ids: Sequence[str]) -> list[bytes | None]:
        """The stored messages of these dead letters (None where there is none)."""
        return self._hmget(self.keys(queue).dead_bodies, ids)

    def _hmget(self, key: str, fields: Sequence[str]) -> list[bytes | None]:
        if not fields:
            return []
        found: list[bytes | None] = self.redis.hmget(key, list(fields))  # type: ignore[assignment]
        return found

    # --- schedules (``{p}:{q}:schedules`` and claims; workers claim ticks in ``enqueue.lua``) ---

    def stored_schedules(self, queue: str) -> dict[bytes, bytes]:
        """``queue``'s stored schedules (name → JSON), nothing else."""
        found: dict[bytes, bytes] = self.redis.hgetall(self.keys(queue).schedules)  # type: ignore[assignment]
        return found

    def schedule_snapshot(self, queues: Sequence[str]) -> tuple[int, list[ScheduleRecords]]:
        """Redis's clock (ms) and the schedule records of ``queues``, in one round trip."""
        pipe = self.redis.pipeline(transaction=False)
        clustered = isinstance(self.redis, ExplainingCluster)
        if not clustered:  # a Cluster pipelines no keyless command: the clock is read first
            pipe.time()
        for queue in queues:
            k = self.keys(queue)
            pipe.hgetall(k.schedules)
            pipe.hgetall(k.schedule_runs)
            pipe.hgetall(k.schedules_seen)
            pipe.get(k.schedules_declared)
        try:
            now_ms = self.time_ms() if clustered else 0
            replies = pipe.execute()
        except CONNECTION_ERRORS as exc:
            raise connection_error(self.settings.redis_url, exc) from exc
        if not clustered:
            (seconds, micros), *replies = replies
            now_ms = int(seconds) * 1000 + int(micros) // 1000
        records = [ScheduleRecords(*replies[i : i + 4]) for i in range(0, len(replies), 4)]
        return now_ms, records

    def write_schedules(
        self, queue: str, changed: Mapping[bytes, bytes], gone: Sequence[bytes]
    ) -> None:
        """Store schedules (name → JSON) and delete others with their claims, in one
        transaction (workers see no gap); the queue is registered for ``shoal schedules``."""
        k = self.keys(queue)
        self.redis.sadd(queues_key(self.settings.key_prefix), queue)  # another slot: not in MULTI
        with self.redis.pipeline(transaction=True) as pipe:
            if gone:
                pipe.hdel(k.schedules, *gone)
                pipe.hdel(k.schedule_runs, *gone)
            if changed:
                pipe.hset(k.schedules, mapping=dict(changed))  # type: ignore[arg-type]
            pipe.execute()

    def delete_schedules(self, queue: str, names: Sequence[str]) -> None:
        """Forget schedules entirely: their JSON, their claims, their declarations."""
        if names:
            k = self.keys(queue)
            with self.redis.pipeline(transaction=True) as pipe:
                for key in (k.schedules, k.schedule_runs, k.schedules_seen):
                    pipe.hdel(key, *names)
                pipe.execute()

    # --- flow and task control ------------------------------------------------------------

    def pause(self, queue: str, note: bytes) -> bool:
        """Pause ``queue`` (``note``: who and when, JSON); False when it was paused already.
        Workers lease nothing from it; enqueues go on."""
        self._remember_queue(queue)
        return bool(self.redis.set(self.keys(queue).paused, note, nx=True))

    def resume(self, queue: str) -> bool:
        """Resume ``queue``; False when it was not paused. Idle workers are woken at once."""
        k = self.keys(queue)
        if not self.redis.delete(k.paused):
            return False
        self.redis.publish(k.notify, 1)
        return True

    def paused(self, queue: str) -> bytes | None:
        """The pause note of ``queue`` (who, when), or None when it runs."""
        note: bytes | None = self.redis.get(self.keys(queue).paused)  # type: ignore[assignment]
        return note

    def clear(self, queue: str, batch: int = 1000) -> int:
        """Delete every message ``queue`` holds waiting or delayed, in batches; running
        messages and dead letters stay. Returns how many were deleted."""
        total = 0
        while True:
            removed, popped = self._run(clear_call(self.keys(queue), batch))
            total += int(removed)
            if not int(popped):
                return total

    def cancel(self, queue: str, message_id: str, result: bytes) -> str:
        """Cancel a message: ``waiting`` or ``delayed`` (removed, ``result`` stored),
        ``running`` (its worker stops it at its next lease renewal) or ``gone``."""
        call = cancel_call(self.keys(queue), message_id, result, self._result_ttl_ms)
        return bytes(self._run(call)).decode()

    def status(self, queue: str, message_id: str) -> Whereabouts:
        """Every record of one message, read at once (see ``status.lua``)."""
        return parse_status(self._run(status_call(self.keys(queue), message_id)))

    def progress(self, queue: str, message_id: str) -> bytes | None:
        """The last progress report of a message (JSON), or None."""
        raw: bytes | None = self.redis.get(self.keys(queue).progress(message_id))  # type: ignore[assignment]
        return raw

    def whereabouts(self, queue: str, message_id: str) -> str | None:
        """Where a message is: ``"stored"`` (waiting, delayed or running), ``"dead"``, or None
        (finished, or never stored)."""
        k = self.keys(queue)
        if self.redis.hexists(k.messages, message_id):
            return "stored"
        if self.redis.zscore(k.dead, message_id) is not None:
            return "dead"
        return None

    def ping(self) -> None:
        """Raise a BrokerError naming the URL when Redis does not answer."""
        self.redis.ping()

    def close(self) -> None:
        if self._direct is not None:
            self._direct.close()
        self.redis.close()
