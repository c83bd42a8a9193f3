"""Ticking schedules from every worker process: no beat process to babysit.

Each worker process runs one :class:`Scheduler` beside its ack and heartbeat loops. It ticks the
app's code schedules and the Queue resources' schedules stored in Redis, for the queues the
worker consumes, and sleeps until the next tick is due. A tick is claimed by the enqueue
script's ``after`` guard on ``{p}:{q}:schedule:runs``: the message (if the tick runs) and the
claim are written together, and only by the first process to get there, so N workers x P
processes still run each tick once. Redis errors are logged and retried; they never end it.

The blocking helpers at the bottom (:func:`stored`, :func:`write_queue_schedules`) are what the
CLI and the operator use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shoal.broker import MAX_BACKOFF_S, REDIS_ERRORS, AsyncBroker, Broker, Guard
from shoal.errors import ShoalError
from shoal.keys import queues_key
from shoal.message import Message
from shoal.schedules import Decision, Run, Schedule, decide, message_id, next_tick, source_of
from shoal.task import Task, encode_batch

if TYPE_CHECKING:
    from shoal.app import App

log = logging.getLogger("shoal.scheduler")

WAKE_LATE_S = 0.005
"""Wake this much after a tick is due, so the timer's rounding never wakes us just before it."""


class Scheduler:
    """Ticks the schedules of ``queues``. ``clock`` (epoch seconds) is injectable for tests."""

    def __init__(
        self,
        app: App,
        broker: AsyncBroker,
        queues: Sequence[str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.broker = broker
        self.queues = list(queues)
        self.clock = clock
        self.code = {(s.queue, s.name): s for s in app.schedules.values() if s.queue in self.queues}
        self.active: dict[tuple[str, str], Schedule] = {}
        """What this process ticks: code schedules, overridden by Queue schedules of the
        same name (so ``suspend`` in a Queue resource can pause a code schedule too)."""
        self.last: dict[tuple[str, str], int] = {}
        """The latest claimed tick known here; the guard in Redis has the final word."""
        self._refresh_at = 0.0
        self._published = False
        self._invalid: set[bytes] = set()

    async def run(self, closing: asyncio.Event) -> None:
        """Tick until ``closing`` is set."""
        backoff = 0.1
        while not closing.is_set():
            try:
                wait_s = await self.step()
                backoff = 0.1
            except REDIS_ERRORS as exc:
                log.warning("scheduler: Redis unavailable (%s); retrying in %.1fs", exc, backoff)
                wait_s, backoff = backoff, min(backoff * 2, MAX_BACKOFF_S)
                self._refresh_at = 0.0
            except Exception:  # a bug here must not stop the worker's schedules for good
                log.exception("scheduler: tick failed; retrying in %.1fs", MAX_BACKOFF_S)
                wait_s = MAX_BACKOFF_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), wait_s)

    async def step(self) -> float:
        """Refresh when due, claim every due tick; return the seconds until the next one."""
        now = self.clock()
        if now >= self._refresh_at:
            await self.refresh()
            self._refresh_at = now + self.app.settings.heartbeat_s
        now_ms = int(now * 1000)
        wake_ms = int(self._refresh_at * 1000)
        for key, schedule in self.active.items():
            decision = decide(schedule, self.last.get(key), now_ms)
            if decision is not None:
                await self.claim(schedule, decision, now_ms)
                self.last[key] = decision.tick_ms
            wake_ms = min(wake_ms, next_tick(schedule, now_ms))
        return max(0.0, (wake_ms - now_ms) / 1000) + WAKE_LATE_S

    async def refresh(self) -> None:
        """Read the stored schedules and claims; publish this app's code schedules (once at
        boot, and again whenever one is missing) so ``shoal schedules`` can list them."""
        active: dict[tuple[str, str], Schedule] = {}
        last: dict[tuple[str, str], int] = {}
        r = self.broker.redis
        for queue in self.queues:
            keys = self.broker.keys(queue)
            stored: dict[bytes, bytes] = await r.hgetall(keys.schedules)  # type: ignore[assignment]
            for (q, name), schedule in self.code.items():
                if q != queue:
                    continue
                active[(q, name)] = schedule
                current = stored.get(name.encode())
                if current is None:
                    await r.hsetnx(keys.schedules, name, schedule.to_json())
                elif not self._published and source_of(current) == "code":
                    await r.hset(keys.schedules, name, schedule.to_json())  # a new release
            for raw_name, raw in stored.items():
                if source_of(raw) != "queue":
                    continue  # code schedules come from the code, not from Redis
                try:
                    schedule = Schedule.from_json(queue, raw)
                except ShoalError as exc:
                    if raw not in self._invalid:
                        self._invalid.add(raw)
                        log.error("scheduler: ignoring %s: %s", raw_name.decode(), exc)
                    continue
                active[(queue, schedule.name)] = schedule
            runs: dict[bytes, bytes] = await r.hgetall(keys.schedule_runs)  # type: ignore[assignment]
            for raw_name, value in runs.items():
                claim = Run.parse(value)
                if claim is not None:
                    last[(queue, raw_name.decode())] = claim.tick_ms
        self._published = True
        self.active = active
        self.last = {key: max(t, self.last.get(key, t)) for key, t in last.items()}

    async def claim(self, schedule: Schedule, decision: Decision, now_ms: int) -> bool:
        """Claim the tick (and enqueue its message when it runs), in one script call; False
        when another process claimed it first."""
        queue, tick = schedule.queue, decision.tick_ms
        mid = message_id(queue, schedule.name, tick) if decision.run else None
        guard = Guard(
            self.broker.keys(queue).schedule_runs,
            "after",
            schedule.name,
            Run(tick, mid, now_ms).encode(),
        )
        if mid is None:
            claimed = await self.broker.enqueue(queue, [], guard) is not None
            if claimed:
                log.info("schedule %s on %s: tick not run: %s", schedule.name, queue, decision.why)
            return claimed
        task = self._task(schedule)
        message = Message(
            mid,
            schedule.task,
            queue,
            list(schedule.args),
            dict(schedule.kwargs),
            now_ms / 1000,
            options={"schedule": {"name": schedule.name, "tick": tick}},
        )
        hooks = self.app.hooks
        try:
            with hooks.context("enqueue_context", task, [message]):
                items = encode_batch(task, [message])
                ids = await self.broker.enqueue(queue, items, guard)
        except ShoalError as exc:  # arguments refused: record the tick as not run, say why
            log.error("schedule %s on %s: cannot enqueue: %s", schedule.name, queue, exc)
            guard = Guard(guard.key, "after", schedule.name, Run(tick, None, now_ms).encode())
            return await self.broker.enqueue(queue, [], guard) is not None
        if ids is None:
            return False
        hooks.emit("after_enqueue", task, [message])
        log.info("schedule %s on %s: enqueued %s (%s)", schedule.name, queue, mid, decision.why)
        return True

    def _task(self, schedule: Schedule) -> Task[..., Any]:
        """The task to send: the app's own when it defines it, else by name; always on the
        schedule's queue."""
        task = self.app.tasks.get(schedule.task)
        if task is None:
            return self.app.remote(schedule.task, queue=schedule.queue)
        if task.queue == schedule.queue:
            return task
        return Task(
            self.app,
            task.fn,
            name=task.name,
            queue=schedule.queue,
            store_result=task.store_result,
            options=task.options,
        )


# --- blocking helpers: the CLI and the operator --------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    """A stored schedule (or why it does not parse), its last claim and that run's outcome."""

    queue: str
    name: str
    schedule: Schedule | None
    error: str | None
    last: Run | None
    outcome: str


def stored(broker: Broker, queue: str) -> list[Listed]:
    """The schedules stored for ``queue``, with their last run's outcome: O(1) per schedule
    (the message still stored → waiting/running; in the DLQ → failed; gone → succeeded)."""
    keys = broker.keys(queue)
    r = broker.redis
    raw: dict[bytes, bytes] = r.hgetall(keys.schedules)  # type: ignore[assignment]
    runs: dict[bytes, bytes] = r.hgetall(keys.schedule_runs)  # type: ignore[assignment]
    out = []
    for raw_name in sorted(raw):
        name = raw_name.decode()
        schedule: Schedule | None = None
        error = None
        try:
            schedule = Schedule.from_json(queue, raw[raw_name])
        except ShoalError as exc:
            error = str(exc)
        last = Run.parse(runs.get(raw_name))
        out.append(Listed(queue, name, schedule, error, last, _outcome(broker, queue, last)))
    return out


def _outcome(broker: Broker, queue: str, last: Run | None) -> str:
    if last is None:
        return "-"
    if last.message_id is None:
        return "skipped"
    keys = broker.keys(queue)
    if broker.redis.hexists(keys.messages, last.message_id):
        return "waiting/running"
    if broker.redis.zscore(keys.dead, last.message_id) is not None:
        return "failed (dead-lettered)"
    return "succeeded"


def write_queue_schedules(broker: Broker, queue: str, schedules: Sequence[Schedule]) -> None:
    """Store a Queue resource's schedules (source "queue"), removing the Queue's entries no
    longer listed and leaving code schedules alone; one transaction, so workers see no gap."""
    keys = broker.keys(queue)
    current: dict[bytes, bytes] = broker.redis.hgetall(keys.schedules)  # type: ignore[assignment]
    wanted = {s.name.encode(): s.to_json() for s in schedules}
    gone = [n for n, raw in current.items() if source_of(raw) == "queue" and n not in wanted]
    with broker.redis.pipeline(transaction=True) as pipe:
        pipe.sadd(queues_key(broker.settings.key_prefix), queue)  # listed by `shoal schedules`
        if gone:
            pipe.hdel(keys.schedules, *gone)
        if wanted:
            pipe.hset(keys.schedules, mapping=wanted)  # type: ignore[arg-type]
        pipe.execute()
