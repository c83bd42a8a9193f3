"""Periodic schedules: what they are, when they tick, and what a tick should do.

A schedule names a task, a cron expression (croniter: 5 fields, or 6 with seconds last) and a
time zone. Every worker process ticks the schedules of the queues it consumes (see
:mod:`shoal.scheduler`); a tick is *claimed* in Redis by the enqueue script's guard, so it runs
once however many workers there are. This module is the pure part: validation, JSON, and
:func:`decide`, which maps (schedule, last claimed tick, now) to a decision, with time injected.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson

from shoal.errors import ConfigurationError

Missed = Literal["skip", "run_once"]
Source = Literal["code", "queue"]

MISSED_POLICIES: tuple[str, ...] = ("skip", "run_once")
SPEC_MISSED = {"skip": "skip", "runOnce": "run_once"}
"""``Queue.spec.schedules[].missed`` (camelCase, as Kubernetes enums are) → the runtime's."""

NAME = re.compile(r"^\S{1,253}$")
"""A schedule's name: a task name by default, so anything without white space."""
MAX_GRACE_MS = 60_000
"""A tick claimed within min(this, half the period) after it is due runs (late, past
:data:`ON_TIME_MS`, but it runs); later ones were missed (see ``missed``)."""
ON_TIME_MS = 1_000
"""A tick claimed more than this after it was due is late: its claim says why, and ``shoal
schedules`` shows it. A running scheduler claims within milliseconds."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """One periodic schedule. Build with :func:`make` (validated), not directly."""

    name: str
    cron: str
    task: str
    queue: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    timezone: str = "UTC"
    missed: Missed = "skip"
    suspend: bool = False
    source: Source = "code"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def timing(self) -> str:
        """What fixes when it ticks (cron and zone), as a short digest kept with each claim: a
        claim made under other timing does not count as this schedule's last tick."""
        return hashlib.sha256(f"{self.cron}\0{self.timezone}".encode()).hexdigest()[:8]

    def to_json(self) -> bytes:
        """The JSON stored in ``{p}:{q}:schedules`` (the queue is the key's, not repeated)."""
        return orjson.dumps(
            {
                "name": self.name,
                "cron": self.cron,
                "task": self.task,
                "args": self.args,
                "kwargs": self.kwargs,
                "timezone": self.timezone,
                "missed": self.missed,
                "suspend": self.suspend,
                "source": self.source,
            }
        )

    @staticmethod
    def from_json(queue: str, raw: bytes | str) -> Schedule:
        """Parse and validate a stored schedule; ConfigurationError says what is wrong."""
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigurationError(
                f"queue {queue!r}: a stored schedule is not JSON: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise ConfigurationError(f"queue {queue!r}: a stored schedule is not a JSON object")
        return make(
            name=data.get("name", ""),
            cron=data.get("cron", ""),
            task=data.get("task", ""),
            queue=queue,
            args=data.get("args", []),
            kwargs=data.get("kwargs", {}),
            timezone=data.get("timezone", "UTC"),
            missed=data.get("missed", "skip"),
            suspend=data.get("suspend", False),
            source=data.get("source", "code"),
        )


def make(
    *,
    name: str,
    cron: str,
    task: str,
    queue: str,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    timezone: str = "UTC",
    missed: str = "skip",
    suspend: bool = False,
    source: str = "code",
) -> Schedule:
    """A validated Schedule; every error names the schedule and says what to do."""
    what = f"schedule {name!r} (queue {queue!r})"
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigurationError(f"{what}: the name must be 1-253 characters without white space")
    if not isinstance(task, str) or not task:
        raise ConfigurationError(f"{what}: name the task to run (task=)")
    if not isinstance(cron, str) or cron.strip().startswith("@") or not _cron().is_valid(cron):
        raise ConfigurationError(
            f"{what}: {cron!r} is not a cron expression; use 5 fields "
            "(minute hour day-of-month month day-of-week, e.g. '*/5 * * * *') or 6 with "
            "seconds last ('* * * * * */10'); write aliases out ('@hourly' is '0 * * * *')"
        )
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ConfigurationError(
            f"{what}: unknown time zone {timezone!r}; use an IANA name such as 'UTC' or "
            "'Europe/Berlin'"
        ) from None
    if missed not in MISSED_POLICIES:
        raise ConfigurationError(
            f"{what}: missed={missed!r} is not a policy; use 'skip' (drop ticks missed while "
            "no worker ran) or 'run_once' (run one of them when a worker is back)"
        )
    if source not in ("code", "queue"):
        raise ConfigurationError(f"{what}: source {source!r} is neither 'code' nor 'queue'")
    if not isinstance(suspend, bool):
        raise ConfigurationError(f"{what}: suspend must be true or false, got {suspend!r}")
    if not isinstance(args, list | tuple) or not isinstance(kwargs or {}, Mapping):
        raise ConfigurationError(f"{what}: args must be a list and kwargs a mapping")
    try:
        orjson.dumps([list(args), dict(kwargs or {})])
    except TypeError as exc:
        raise ConfigurationError(f"{what}: args/kwargs are not JSON-serialisable ({exc})") from None
    schedule = Schedule(
        name=name,
        cron=cron,
        task=task,
        queue=queue,
        args=list(args),
        kwargs=dict(kwargs or {}),
        timezone=timezone,
        missed=missed,  # type: ignore[arg-type]  # checked above
        suspend=suspend is True,
        source=source,  # type: ignore[arg-type]  # checked above
    )
    try:  # a valid expression may still never fire (February 30th)
        next_tick(schedule, _ms(datetime.now(UTC)))
    except (_cron_module().CroniterBadDateError, StopIteration):
        raise ConfigurationError(
            f"{what}: {cron!r} never fires (no date matches it, like February 30th); fix the "
            "day-of-month and month fields"
        ) from None
    return schedule


def from_queue_spec(queue: str, item: Mapping[str, Any]) -> Schedule:
    """One entry of ``Queue.spec.schedules`` as a Schedule (source "queue")."""
    missed = item.get("missed", "skip")
    return make(
        name=item.get("name", ""),
        cron=item.get("cron", ""),
        task=item.get("task", ""),
        queue=queue,
        args=item.get("args") or [],
        kwargs=item.get("kwargs") or {},
        timezone=item.get("timezone", "UTC"),
        missed=SPEC_MISSED.get(missed, missed),
        suspend=item.get("suspend", False),
        source="queue",
    )


def source_of(raw: bytes | str) -> str | None:
    """The ``source`` of a stored schedule's JSON (None when unreadable), without validating."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return data.get("source") if isinstance(data, dict) else None


# --- time -----------------------------------------------------------------------------------


def _at(ms: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone)


def _cron_module() -> Any:
    """croniter, imported on first use: with dateutil it is ~3 MiB a worker with no schedules
    never needs."""
    import croniter

    return croniter


def _cron() -> Any:
    return _cron_module().croniter


def _ms(moment: datetime) -> int:
    return round(moment.timestamp() * 1000)


@functools.lru_cache(maxsize=1024)
def _every_hour(cron: str) -> bool:
    hours = _cron()(cron).expanded[1]
    return hours == ["*"] or len(set(hours)) == 24


def _repeated_wall_time(schedule: Schedule, tick: datetime) -> bool:
    """The second occurrence of a wall-clock time on a fall-back night, for a schedule pinned
    to given hours: cron runs those once (a daily 02:30 job must not run twice)."""
    if _every_hour(schedule.cron):
        return False  # fires every hour: real time, both occurrences
    first = tick.replace(fold=0)
    return first.utcoffset() != tick.utcoffset()


def latest_tick(schedule: Schedule, now_ms: int) -> int:
    """The latest tick at or before ``now_ms`` (epoch ms), in the schedule's zone."""
    it = _cron()(schedule.cron, _at(now_ms + 1, schedule.zone))
    while True:
        tick: datetime = it.get_prev(datetime)
        if not _repeated_wall_time(schedule, tick):
            return _ms(tick)


def next_tick(schedule: Schedule, after_ms: int) -> int:
    """The first tick strictly after ``after_ms`` (epoch ms)."""
    it = _cron()(schedule.cron, _at(after_ms, schedule.zone))
    while True:
        tick: datetime = it.get_next(datetime)
        if _ms(tick) > after_ms and not _repeated_wall_time(schedule, tick):
            return _ms(tick)


def grace_ms(schedule: Schedule, tick_ms: int) -> int:
    """How late a tick may be claimed and still count as on time."""
    return min(MAX_GRACE_MS, (next_tick(schedule, tick_ms) - tick_ms) // 2)


@dataclass(frozen=True, slots=True)
class Decision:
    """Claim ``tick_ms``; enqueue the task only if ``run``. ``why`` is for logs, ``reason``
    (one word) is kept with a claim that does not run."""

    tick_ms: int
    run: bool
    why: str
    reason: str = "due"


def decide(schedule: Schedule, last_tick_ms: int | None, now_ms: int) -> Decision | None:
    """What to do now: None when the latest tick is already claimed.

    A tick claimed within its grace runs. Older ticks were missed (no worker was alive):
    ``run_once`` runs the latest of them once, ``skip`` claims it without running. A schedule
    never claimed before starts at its latest tick without back-filling it, and a suspended one
    claims its ticks without running them (so resuming does not run a backlog)."""
    tick = latest_tick(schedule, now_ms)
    if last_tick_ms is not None and tick <= last_tick_ms:
        return None
    if schedule.suspend:
        return Decision(tick, False, "suspended", "suspended")
    if now_ms - tick <= grace_ms(schedule, tick):
        return Decision(tick, True, "due")
    if last_tick_ms is None:
        why = "new (or retimed) schedule: starts at the next tick, no back-fill"
        return Decision(tick, False, why, "new")
    if schedule.missed == "run_once":
        return Decision(
            tick, True, "missed while no worker claimed it: running once (run_once)", "missed"
        )
    return Decision(tick, False, "missed while no worker claimed it: skipped (skip)", "missed")


def pending_tick(schedule: Schedule, last_tick_ms: int | None, now_ms: int, since_ms: int) -> int:
    """The earliest tick a worker has yet to claim, not before ``since_ms`` (may be in the
    past: due, unclaimed). For a schedule never claimed (under its timing), that is its latest
    tick while a worker would still run it (within its grace, see :func:`decide`), else the
    next one."""
    if last_tick_ms is None:
        latest = latest_tick(schedule, now_ms)
        last_tick_ms = latest - 1 if now_ms - latest <= grace_ms(schedule, latest) else now_ms
    return next_tick(schedule, max(last_tick_ms, since_ms - 1))


def explain_lateness(decision: Decision, now_ms: int, up_since_ms: int) -> Decision:
    """A tick that runs later than :data:`ON_TIME_MS` (within its grace) says why in its claim:
    ``late`` when this scheduler started after the tick (no worker was running: a fleet at
    zero woken too late, or a pod slow to start), ``delayed`` when it was already running
    (Redis unreachable, or its process too busy to tick)."""
    if not decision.run or decision.reason != "due" or now_ms - decision.tick_ms <= ON_TIME_MS:
        return decision
    reason = "late" if up_since_ms > decision.tick_ms else "delayed"
    late = describe_duration(now_ms - decision.tick_ms)
    return replace(decision, reason=reason, why=f"due, run {late} late: {LATE_WHY[reason]}")


def message_id(queue: str, name: str, tick_ms: int) -> str:
    """The id of a tick's message: the same for every worker (a duplicate would show as one
    id run twice), and time-sorted like :func:`shoal.message.new_message_id`."""
    digest = hashlib.sha256(f"{queue}\0{name}\0{tick_ms}".encode()).hexdigest()
    return f"{tick_ms:012x}{digest[:20]}"


# --- claims ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """A claimed tick, as stored in ``{p}:{q}:schedule:runs``:
    ``<tick_ms> <id|-> <claimed_ms> <timing> <reason>`` (``-`` for a tick claimed without a
    run). ``reason``: due (on time), late or delayed (run late, see :func:`explain_lateness`),
    missed (past its grace: run once or skipped), suspended, new, refused."""

    tick_ms: int
    message_id: str | None
    claimed_ms: int
    timing: str = "-"
    reason: str = "due"

    def encode(self) -> str:
        return (
            f"{self.tick_ms} {self.message_id or '-'} {self.claimed_ms} {self.timing} {self.reason}"
        )

    @staticmethod
    def parse(raw: bytes | str | None) -> Run | None:
        """The stored claim, or None when absent or unreadable."""
        if raw is None:
            return None
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        parts = text.split()
        if len(parts) not in (3, 5) or not parts[0].isdigit() or not parts[2].isdigit():
            return None
        message = None if parts[1] == "-" else parts[1]
        timing, reason = (parts[3], parts[4]) if len(parts) == 5 else ("-", "due")
        return Run(int(parts[0]), message, int(parts[2]), timing, reason)

    def counts_for(self, schedule: Schedule) -> bool:
        """Whether this claim was made under the schedule's current timing."""
        return self.timing == schedule.timing

    @property
    def late_ms(self) -> int:
        """How long after its time the tick was claimed."""
        return max(0, self.claimed_ms - self.tick_ms)

    def lateness(self) -> str | None:
        """Why the tick ran late or not at all, for humans; None when it ran on time (or
        was not meant to run: suspended, new, refused)."""
        late = describe_duration(self.late_ms)
        if self.reason == "missed":
            if self.message_id is None:
                return f"skipped: {LATE_WHY['missed']} (claimed {late} late)"
            return f"late {late}: {LATE_WHY['missed']} (run_once)"
        if self.message_id is None or self.late_ms <= ON_TIME_MS:
            return None
        why = LATE_WHY.get(self.reason)
        return f"late {late}: {why}" if why else f"late {late}"


LATE_WHY = {
    "late": "no worker was running at the tick",
    "delayed": "the running workers could not claim it in time (Redis unreachable or busy)",
    "missed": "missed while no worker ran",
}
"""A late claim's reason, in words."""


def describe_duration(ms: int) -> str:
    """``41s``, ``5m 3s``, ``2h 5m``, ``3d 2h``."""
    s = ms // 1000
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86_400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86_400}d {s % 86_400 // 3600}h"


def describe_time(ms: int | None, zone: ZoneInfo | None = None) -> str:
    """A tick for humans, in ``zone`` (default: local time)."""
    if ms is None:
        return "-"
    moment = datetime.fromtimestamp(ms / 1000, UTC).astimezone(zone)
    return moment.strftime("%Y-%m-%d %H:%M:%S %Z")
