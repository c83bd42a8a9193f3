"""Ticking schedules from every worker process: no beat process to babysit.

Each worker process runs one :class:`Scheduler` beside its ack and heartbeat loops. It ticks the
app's code schedules and the Queue resources' schedules stored in Redis, for the queues the
worker consumes, and sleeps until the next tick is due. A tick is claimed by the enqueue
script's ``after`` guard on ``{p}:{q}:schedule:runs``: the message (if the tick runs) and the
claim are written together, and only by the first process to get there, so N workers x P
processes still run each tick once. Redis errors are logged and retried; they never end it.

The blocking helpers at the bottom (:func:`stored`, :func:`write_queue_schedules`) are what the
CLI and the operator use. What any of them decides from the records read lives in
:mod:`shoal.schedule_plan` (pure, tested without Redis); this module reads and writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from typing import TYPE_CHECKING

from shoal.autoscale import ScheduledTick
from shoal.errors import ShoalError
from shoal.message import Message
from shoal.protocol import (
    MAX_BACKOFF_S,
    REDIS_ERRORS,
    REFUSED,
    AsyncBroker,
    Broker,
    Guard,
)
from shoal.schedule_plan import (
    STALE_AFTER_S,
    Listed,
    carry_over,
    claimed_messages,
    earliest_unclaimed,
    listing,
    merge_active,
    queue_schedules_diff,
)
from shoal.schedules import (
    Decision,
    Run,
    Schedule,
    decide,
    explain_lateness,
    message_id,
    next_tick,
)

if TYPE_CHECKING:
    from shoal.task import Producer

log = logging.getLogger("shoal.scheduler")

__all__ = [
    "STALE_AFTER_S",
    "Listed",
    "Scheduler",
    "next_unclaimed_tick",
    "prune_stale",
    "stored",
    "write_queue_schedules",
]

WAKE_LATE_S = 0.005
"""Wake this much after a tick is due, so the timer's rounding never wakes us just before it."""


class Scheduler:
    """Ticks the schedules of ``queues``.

    Time is Redis's (``TIME``, re-read at each refresh), so hosts whose clocks disagree still
    agree on which tick is due; ``clock`` (epoch seconds) replaces it in tests."""

    def __init__(
        self,
        producer: Producer,
        schedules: Iterable[Schedule],
        broker: AsyncBroker,
        queues: Sequence[str],
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.producer = producer
        self.settings = producer.settings
        self.broker = broker
        self.queues = list(queues)
        self.clock = clock
        code = list(schedules)
        self.code = {(s.queue, s.name): s for s in code if s.queue in self.queues}
        self.active: dict[tuple[str, str], Schedule] = {}
        """What this process ticks: code schedules, overridden by Queue schedules of the
        same name (so ``suspend`` in a Queue resource can pause a code schedule too)."""
        self.last: dict[tuple[str, str], int] = {}
        """The latest claimed tick known here (under the current timing); Redis has the final
        word."""
        self.due: dict[tuple[str, str], int] = {}
        """When each schedule next needs a look (ms): only those due are evaluated."""
        self._offset_s = 0.0
        self._born_s = clock() if clock is not None else time.time()
        """When this scheduler started (host clock until the first refresh learns Redis's)."""
        self._refresh_clock = clock or time.monotonic
        self._refresh_at = float("-inf")
        self._parsed: dict[tuple[str, bytes], Schedule] = {}
        self._reported: set[tuple[tuple[str, str], str]] = set()
        not_consumed = sorted({s.queue for s in code} - set(self.queues))
        if not_consumed:
            log.warning(
                "scheduler: this worker does not consume %s, so it does not tick their schedules; "
                "run a worker for them (shoal worker --queues ...)",
                ", ".join(not_consumed),
            )

    def now(self) -> float:
        """Epoch seconds: Redis's clock (or the injected one)."""
        return self.clock() if self.clock is not None else time.time() + self._offset_s

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
                self._refresh_at = float("-inf")
            except Exception:  # a bug here must not stop the worker's schedules for good
                log.exception("scheduler: tick failed; retrying in %.1fs", MAX_BACKOFF_S)
                wait_s = MAX_BACKOFF_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), wait_s)

    async def step(self) -> float:
        """Refresh when due, claim every due tick; return the seconds until the next look.
        A schedule that fails (a claim refused by Redis, a cron croniter cannot walk) is
        reported once and retried at the next refresh; the others tick on."""
        if self._refresh_clock() >= self._refresh_at:
            await self.refresh()
            self._refresh_at = self._refresh_clock() + self.settings.heartbeat_s
        now_ms = int(self.now() * 1000)
        wake_ms = now_ms + int(self.settings.heartbeat_s * 1000)
        for key, schedule in self.active.items():
            due = self.due.get(key)
            if due is None or due <= now_ms:
                try:
                    due = await self._tick(key, schedule, now_ms)
                except REFUSED as exc:  # a script refused our data
                    runs = self.broker.keys(schedule.queue).schedule_runs
                    problem = f"Redis refused its claim ({exc}); check field {key[1]!r} of {runs}"
                    self._report(key, problem)
                    due = wake_ms
                except REDIS_ERRORS:
                    raise
                except Exception as exc:
                    self._report(key, f"cannot tick it: {type(exc).__name__}: {exc}")
                    due = wake_ms
                self.due[key] = due
            wake_ms = min(wake_ms, due)
        return max(0.0, (wake_ms - now_ms) / 1000) + WAKE_LATE_S

    async def _tick(self, key: tuple[str, str], schedule: Schedule, now_ms: int) -> int:
        decision = decide(schedule, self.last.get(key), now_ms)
        if decision is not None:
            born_ms = int((self._born_s + (0.0 if self.clock else self._offset_s)) * 1000)
            decision = explain_lateness(decision, now_ms, born_ms)
            await self.claim(schedule, decision, now_ms)
            self.last[key] = decision.tick_ms
        return next_tick(schedule, now_ms)

    def _report(self, key: tuple[str, str], problem: str) -> None:
        if (key, problem) not in self._reported:
            self._reported.add((key, problem))
            log.error("schedule %s on %s: %s", key[1], key[0], problem)

    async def refresh(self) -> None:
        """Sync with Redis's clock, declare this app's code schedules (``shoal schedules``
        lists them, and marks stale the ones no worker declares any more), and read the stored
        schedules and claims."""
        if self.clock is None:
            before = time.time()
            redis_now_s = await self.broker.time_s()
            after = time.time()
            self._offset_s = redis_now_s - (before + after) / 2
        now_ms = int(self.now() * 1000)
        records: dict[str, tuple[dict[bytes, bytes], dict[bytes, bytes]]] = {}
        for queue in self.queues:
            mine = [(n, s.to_json()) for (q, n), s in self.code.items() if q == queue]
            await self.broker.publish_schedules(queue, now_ms, mine)  # none is news too
            records[queue] = await self.broker.schedules_and_claims(queue)
        merged = merge_active(self.code, records, self._parse)
        for key, problem in merged.invalid.items():
            self._report(key, f"ignored: {problem}")
        self.active, self.last, self.due = carry_over(self.active, self.last, self.due, merged)

    def _parse(self, queue: str, raw: bytes) -> Schedule:
        """A stored schedule, parsed once per content (the JSON does not name its queue)."""
        schedule = self._parsed.get((queue, raw))
        if schedule is None:
            schedule = Schedule.from_json(queue, raw)  # ShoalError: reported by refresh
            if len(self._parsed) > 4096:
                self._parsed.clear()
            self._parsed[queue, raw] = schedule
        return schedule

    async def claim(self, schedule: Schedule, decision: Decision, now_ms: int) -> bool:
        """Claim the tick (and enqueue its message when it runs), in one script call; False
        when another process claimed it first."""
        queue, tick = schedule.queue, decision.tick_ms
        runs_key = self.broker.keys(queue).schedule_runs

        def guard(message_id: str | None, reason: str) -> Guard:
            run = Run(tick, message_id, now_ms, schedule.timing, reason)
            return Guard(runs_key, "after", schedule.name, run.encode())

        if not decision.run:
            claimed = await self.broker.enqueue(queue, [], guard(None, decision.reason)) is not None
            if claimed:
                log.info("schedule %s on %s: tick not run: %s", schedule.name, queue, decision.why)
            return claimed
        mid = message_id(queue, schedule.name, tick)
        task = self.producer.task_on(schedule.task, queue)
        message = Message(
            mid,
            schedule.task,
            queue,
            list(schedule.args),
            dict(schedule.kwargs),
            now_ms / 1000,
            options={"schedule": {"name": schedule.name, "tick": tick}},
        )
        try:
            ids = await self.producer.send_async(
                self.broker, task, [message], guard(mid, decision.reason)
            )
        except ShoalError as exc:  # arguments refused: record the tick as not run, say why
            log.error("schedule %s on %s: cannot enqueue: %s", schedule.name, queue, exc)
            return await self.broker.enqueue(queue, [], guard(None, "refused")) is not None
        if ids is None:
            return False
        log.info("schedule %s on %s: enqueued %s (%s)", schedule.name, queue, mid, decision.why)
        return True


# --- blocking helpers: the CLI and the operator --------------------------------------------


def stored(broker: Broker, queue: str, now_ms: int | None = None) -> list[Listed]:
    """The schedules stored for ``queue``, with their last run's outcome: O(1) per schedule
    (the message still stored → waiting/running; in the DLQ → failed; gone → finished, which
    is also what a failure whose dead letter was purged looks like)."""
    redis_now_ms, [records] = broker.schedule_snapshot([queue])
    where = {mid: broker.whereabouts(queue, mid) for mid in claimed_messages(records)}
    return listing(queue, records, redis_now_ms if now_ms is None else now_ms, where)


def next_unclaimed_tick(
    broker: Broker, queues: Sequence[str], hold_s: float
) -> ScheduledTick | None:
    """The earliest tick of the schedules stored for ``queues`` (code and Queue resources) that
    no worker has claimed yet, at most ``hold_s`` old: what a fleet at zero is woken for. One
    round trip; times on Redis's clock.

    Left out: suspended and unreadable schedules; a tick of a schedule never claimed that a
    worker would not run any more (past its grace); and a code schedule its queue's workers
    stopped declaring (:data:`STALE_AFTER_S` before their latest declaration: removed from the
    code). A fleet asleep declares nothing, so its code schedules all stay in."""
    now_ms, records = broker.schedule_snapshot(queues)
    return earliest_unclaimed(queues, records, now_ms, hold_s)


def write_queue_schedules(
    broker: Broker, queue: str, schedules: Sequence[Schedule], keep: Collection[str] = ()
) -> bool:
    """Store a Queue resource's schedules (source "queue"), leaving code schedules alone.

    The Queue's entries no longer listed are removed with their claims (so one added back
    later starts afresh); names in ``keep`` (listed, but invalid now) keep what is stored, so
    a broken edit never un-suspends anything. Writes only what differs, in one transaction
    (workers see no gap); returns whether anything changed."""
    changed, gone = queue_schedules_diff(broker.stored_schedules(queue), schedules, keep)
    if not gone and not changed:
        return False
    broker.write_schedules(queue, changed, gone)
    return True


def prune_stale(broker: Broker, queue: str) -> list[str]:
    """Delete the code schedules of ``queue`` no worker has declared lately (see
    :data:`STALE_AFTER_S`), with their claims; returns their names."""
    names = [row.name for row in stored(broker, queue) if row.stale]
    broker.delete_schedules(queue, names)
    return names
