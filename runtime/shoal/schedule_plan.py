"""What the scheduler, ``shoal schedules`` and the operator decide from what Redis holds.

Pure functions of plain data (the raw records of :class:`~shoal.protocol.ScheduleRecords`,
``now_ms``, the code's schedules): which schedules a worker ticks and which tick each last
claimed, the rows ``shoal schedules`` lists, the earliest tick no worker has claimed (what a
fleet at zero is woken for), and what storing a Queue's schedules changes. ``scheduler.py``
reads and writes Redis around them; here they are tested without it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shoal.autoscale import ScheduledTick
from shoal.errors import ShoalError
from shoal.protocol import ScheduleRecords
from shoal.schedules import Run, Schedule, next_tick, pending_tick, source_of

Key = tuple[str, str]
"""(queue, schedule name)."""

STALE_AFTER_S = 600.0
"""A code schedule no worker has declared for this long is listed as stale (removed from the
code, or its workers are all gone): ``shoal schedules --prune`` deletes it."""


# --- what a worker ticks ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Merged:
    """The schedules a worker ticks, the tick each last claimed (under its current timing),
    and the stored Queue schedules it cannot read (key → why)."""

    active: dict[Key, Schedule]
    last: dict[Key, int]
    invalid: dict[Key, str]


def merge_active(
    code: Mapping[Key, Schedule],
    records: Mapping[str, tuple[Mapping[bytes, bytes], Mapping[bytes, bytes]]],
    parse: Callable[[str, bytes], Schedule] = Schedule.from_json,
) -> Merged:
    """Code schedules, overridden by the Queue schedules of the same name (so ``suspend`` in a
    Queue resource can pause a code schedule too), for each queue of ``records`` (queue →
    stored schedules, claims). Stored code schedules are ignored: they come from the code. A
    claim counts only under the schedule's current timing (a retimed schedule starts afresh).
    ``parse`` raises ShoalError for an unusable entry (a caching parser in workers)."""
    active: dict[Key, Schedule] = {}
    last: dict[Key, int] = {}
    invalid: dict[Key, str] = {}
    for queue, (stored, runs) in records.items():
        for (q, name), schedule in code.items():
            if q == queue:
                active[(q, name)] = schedule
        for raw_name, raw in stored.items():
            if source_of(raw) != "queue":
                continue
            try:
                parsed = parse(queue, raw)
            except ShoalError as exc:
                invalid[(queue, raw_name.decode(errors="replace"))] = str(exc)
                continue
            active[(queue, parsed.name)] = parsed
        for raw_name, value in runs.items():
            claim = Run.parse(value)
            key = (queue, raw_name.decode(errors="replace"))
            if claim is not None and key in active and claim.counts_for(active[key]):
                last[key] = claim.tick_ms
    return Merged(active, last, invalid)


def carry_over(
    active: Mapping[Key, Schedule],
    last: Mapping[Key, int],
    due: Mapping[Key, int],
    merged: Merged,
) -> tuple[dict[Key, Schedule], dict[Key, int], dict[Key, int]]:
    """A scheduler's (active, last, due) after a refresh read ``merged``: a new or changed
    schedule loses its due time (looked at now); the latest claim known here wins over an
    older one read from Redis; a schedule with no claim in ``merged`` (gone, retimed, or
    never claimed) has none here either."""
    due_after = dict(due)
    for key, schedule in merged.active.items():
        if active.get(key) != schedule:
            due_after.pop(key, None)
    last_after = {key: max(t, last.get(key, t)) for key, t in merged.last.items()}
    return dict(merged.active), last_after, due_after


# --- what ``shoal schedules`` lists -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Listed:
    """A stored schedule (or why it cannot be used), its next run, its last claim and that
    run's outcome."""

    queue: str
    name: str
    schedule: Schedule | None
    error: str | None
    next_ms: int | None
    last: Run | None
    outcome: str
    stale: bool


def last_ran(row: Listed) -> Run | None:
    """The row's last claimed tick, when it ran (a skipped or refused tick shows no last run)."""
    return row.last if row.last is not None and row.last.message_id is not None else None


def schedule_record(row: Listed) -> dict[str, Any]:
    """One row of ``shoal schedules`` as data (``-o json``, the dashboard)."""
    ran = last_ran(row)
    record: dict[str, Any] = {
        "queue": row.queue,
        "name": row.name,
        "next_run_ms": row.next_ms,
        "last_run_ms": ran.tick_ms if ran else None,
        "last_message_id": ran.message_id if ran else None,
        "outcome": row.outcome,
        "stale": row.stale,
    }
    s = row.schedule
    if s is None:
        return {**record, "error": row.error}
    return {
        **record,
        "cron": s.cron,
        "timezone": s.timezone,
        "task": s.task,
        "source": s.source,
        "suspended": s.suspend,
    }


def claimed_messages(records: ScheduleRecords) -> list[str]:
    """The message ids of the last claimed ticks that ran: whose whereabouts a listing shows."""
    ids = []
    for raw_name in sorted(records.schedules):
        last = Run.parse(records.runs.get(raw_name))
        if last is not None and last.message_id is not None:
            ids.append(last.message_id)
    return ids


def listing(
    queue: str,
    records: ScheduleRecords,
    now_ms: int,
    whereabouts: Mapping[str, str | None],
) -> list[Listed]:
    """The rows of ``shoal schedules`` for ``queue``, by name. ``whereabouts``: where each of
    :func:`claimed_messages` is (``"stored"``, ``"dead"``, or None: finished). An entry that
    cannot be read is listed with its error, never hiding the others."""
    raw, runs, seen = records.schedules, records.runs, records.seen
    out = []
    for raw_name in sorted(raw):
        name = raw_name.decode(errors="replace")
        schedule: Schedule | None = None
        error = upcoming = None
        try:
            schedule = Schedule.from_json(queue, raw[raw_name])
            upcoming = None if schedule.suspend else next_tick(schedule, now_ms)
        except Exception as exc:  # one unusable entry must not hide the others
            error = str(exc) if isinstance(exc, ShoalError) else f"{type(exc).__name__}: {exc}"
        last = Run.parse(runs.get(raw_name))
        declared = seen.get(raw_name)
        stale = source_of(raw[raw_name]) == "code" and (
            declared is None or now_ms - int(declared) > STALE_AFTER_S * 1000
        )
        where = whereabouts.get(last.message_id) if last and last.message_id else None
        out.append(
            Listed(queue, name, schedule, error, upcoming, last, outcome(last, where), stale)
        )
    return out


def outcome(last: Run | None, where: str | None) -> str:
    """What became of the last claimed tick (its message ``where``: stored → waiting/running;
    dead → failed; gone → finished, which is also what a failure whose dead letter was purged
    looks like), and why it ran late or not at all."""
    if last is None:
        return "-"
    late = last.lateness()
    if last.message_id is None:
        return late or f"not run ({last.reason})"
    state = {"stored": "waiting/running", "dead": "failed (dead-lettered)"}.get(
        where or "", "finished"
    )
    return f"{state}, {late}" if late else state


# --- what a fleet at zero is woken for --------------------------------------------------------


def earliest_unclaimed(
    queues: Sequence[str], records: Sequence[ScheduleRecords], now_ms: int, hold_s: float
) -> ScheduledTick | None:
    """The earliest tick of the schedules stored for ``queues`` that no worker has claimed
    yet, at most ``hold_s`` old (what a fleet at zero is woken for); see :func:`upcoming_ticks`
    for what is left out."""
    ticks = upcoming_ticks(queues, records, now_ms, hold_s, per_schedule=1)
    return ticks[0] if ticks else None


def upcoming_ticks(
    queues: Sequence[str],
    records: Sequence[ScheduleRecords],
    now_ms: int,
    hold_s: float,
    *,
    per_schedule: int = 3,
    expected: Mapping[Key, int] | None = None,
) -> tuple[ScheduledTick, ...]:
    """The next ``per_schedule`` ticks of each schedule stored for ``queues``, earliest first:
    the first is the one no worker has claimed yet (at most ``hold_s`` old). ``expected``:
    (queue, schedule) → tasks its last runs produced, told with each of its ticks (0 when not
    known: a claim records the one message its tick enqueued, not what that task enqueued in
    turn, so only an observer of the queue can measure it).

    Left out: suspended and unreadable schedules; a tick of a schedule never claimed that a
    worker would not run any more (past its grace); and a code schedule its queue's workers
    stopped declaring (:data:`STALE_AFTER_S` before their latest declaration: removed from the
    code). A fleet asleep declares nothing, so its code schedules all stay in."""
    since_ms = now_ms - int(hold_s * 1000)
    found: list[tuple[int, str, str]] = []
    for queue, (raw, runs, seen, marker) in zip(queues, records, strict=True):
        declared = [int(v) for v in (*seen.values(), marker or b"") if v.isdigit()]
        latest_declared = max(declared, default=None)
        for raw_name, blob in raw.items():
            schedule = _parsed(queue, blob)
            if schedule is None or schedule.suspend:
                continue
            stamp = seen.get(raw_name, b"")
            if (
                schedule.source == "code"
                and latest_declared is not None
                and stamp.isdigit()
                and latest_declared - int(stamp) > STALE_AFTER_S * 1000
            ):
                continue
            last = Run.parse(runs.get(raw_name))
            last_ms = last.tick_ms if last is not None and last.counts_for(schedule) else None
            try:
                tick = pending_tick(schedule, last_ms, now_ms, since_ms)
                for _ in range(per_schedule):
                    found.append((tick, queue, schedule.name))
                    tick = next_tick(schedule, tick)
            except Exception:  # a cron croniter cannot walk: its workers report it
                continue
    sizes = expected or {}
    return tuple(
        ScheduledTick(
            schedule=name,
            queue=queue,
            in_s=(tick - now_ms) / 1000,
            due_at=tick / 1000,
            expected_tasks=sizes.get((queue, name), 0),
        )
        for tick, queue, name in sorted(found)
    )


@functools.lru_cache(maxsize=4096)
def _parsed(queue: str, raw: bytes) -> Schedule | None:
    try:
        return Schedule.from_json(queue, raw)
    except ShoalError:
        return None


# --- what storing a Queue's schedules changes -------------------------------------------------


def queue_schedules_diff(
    current: Mapping[bytes, bytes], schedules: Sequence[Schedule], keep: Collection[str] = ()
) -> tuple[dict[bytes, bytes], list[bytes]]:
    """(changed: name → JSON to write, gone: names to delete with their claims) to store a
    Queue resource's ``schedules`` over ``current`` (name → JSON), leaving code schedules
    alone. Names in ``keep`` (listed, but invalid now) keep what is stored, so a broken edit
    never un-suspends anything."""
    wanted = {s.name.encode(): s.to_json() for s in schedules}
    kept = {name.encode() for name in keep}
    gone = [
        n
        for n, raw in current.items()
        if source_of(raw) == "queue" and n not in wanted and n not in kept
    ]
    changed = {n: raw for n, raw in wanted.items() if current.get(n) != raw}
    return changed, gone
