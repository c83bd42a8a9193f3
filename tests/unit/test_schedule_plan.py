"""What the scheduler and ``shoal schedules`` decide from stored records, without Redis: the
records are plain dicts, the time is given."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from shoal.autoscale import ScheduledTick
from shoal.protocol import ScheduleRecords
from shoal.schedule_plan import (
    STALE_AFTER_S,
    Merged,
    carry_over,
    claimed_messages,
    earliest_unclaimed,
    listing,
    merge_active,
    outcome,
    queue_schedules_diff,
    upcoming_ticks,
)
from shoal.schedules import Run, Schedule, make


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return round(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp() * 1000)


def sched(name: str = "s", **changes: object) -> Schedule:
    fields: dict[str, object] = {"name": name, "cron": "*/5 * * * *", "task": "t", "queue": "q"}
    fields.update(changes)
    return make(**fields)  # type: ignore[arg-type]


def claim(schedule: Schedule, tick_ms: int, message_id: str | None = "m", **kw: object) -> bytes:
    run = Run(tick_ms, message_id, tick_ms + 10, schedule.timing, **kw)  # type: ignore[arg-type]
    return run.encode().encode()


def records(
    schedules: dict[bytes, bytes] | None = None,
    runs: dict[bytes, bytes] | None = None,
    seen: dict[bytes, bytes] | None = None,
    declared: bytes | None = None,
) -> ScheduleRecords:
    return ScheduleRecords(schedules or {}, runs or {}, seen or {}, declared)


NOW = ms(2024, 1, 1, 10, 7)
MIN = 60_000

# --- merge_active / carry_over ----------------------------------------------------------------


def test_code_schedules_are_active_and_stored_code_entries_are_ignored() -> None:
    code = sched("c")
    other_queue = sched("o", queue="r")
    stored_code = sched("c", cron="0 * * * *")  # a stale declaration of another timing
    merged = merge_active(
        {("q", "c"): code, ("r", "o"): other_queue},
        {"q": ({b"c": stored_code.to_json()}, {})},
    )
    assert merged.active == {("q", "c"): code}  # only the queues read; code wins over Redis
    assert merged.last == {} and merged.invalid == {}


def test_a_queue_schedule_overrides_the_code_schedule_of_its_name() -> None:
    code = sched("c")
    suspended = sched("c", suspend=True, source="queue")
    extra = sched("x", cron="0 * * * *", source="queue")
    stored = {b"c": suspended.to_json(), b"x": extra.to_json()}
    merged = merge_active({("q", "c"): code}, {"q": (stored, {})})
    assert merged.active == {("q", "c"): suspended, ("q", "x"): extra}


def test_an_unreadable_queue_schedule_is_reported_and_left_out() -> None:
    code = sched("c")
    broken = b'{"source": "queue", "name": "c", "cron": "nope", "task": "t"}'
    merged = merge_active({("q", "c"): code}, {"q": ({b"c": broken, b"j": b"not json"}, {})})
    assert merged.active == {("q", "c"): code}  # the code schedule stays
    assert list(merged.invalid) == [("q", "c")]  # not JSON: no source, so not the Queue's
    assert "not a cron expression" in merged.invalid[("q", "c")]


def test_claims_count_only_under_the_current_timing() -> None:
    kept, retimed = sched("k"), sched("r", cron="0 * * * *")
    old_timing = sched("r")  # claimed when it ticked every five minutes
    runs = {
        b"k": claim(kept, ms(2024, 1, 1, 10, 5)),
        b"r": claim(old_timing, ms(2024, 1, 1, 10, 5)),
        b"gone": claim(kept, ms(2024, 1, 1, 10, 5)),
        b"junk": b"garbage",
    }
    code = {("q", "k"): kept, ("q", "r"): retimed}
    merged = merge_active(code, {"q": ({}, runs)})
    assert merged.last == {("q", "k"): ms(2024, 1, 1, 10, 5)}


def test_the_parser_given_is_used() -> None:
    seen: list[bytes] = []

    def parse(queue: str, raw: bytes) -> Schedule:
        seen.append(raw)
        return Schedule.from_json(queue, raw)

    s = sched("x", source="queue")
    merge_active({}, {"q": ({b"x": s.to_json()}, {})}, parse)
    assert seen == [s.to_json()]


def test_a_refresh_looks_at_new_and_changed_schedules_now_and_keeps_the_latest_claim() -> None:
    same, changed, new = sched("a"), sched("b"), sched("c")
    changed_now = replace(changed, suspend=True)
    before = {("q", "a"): same, ("q", "b"): changed}
    due = {("q", "a"): 1, ("q", "b"): 2, ("q", "gone"): 3}
    last = {("q", "a"): 500, ("q", "b"): 100, ("q", "gone"): 7}
    after = {("q", "a"): same, ("q", "b"): changed_now, ("q", "c"): new}
    merged = Merged(after, {("q", "a"): 400, ("q", "b"): 200, ("q", "c"): 50}, {})
    active, last_after, due_after = carry_over(before, last, due, merged)
    assert active == after
    assert due_after == {("q", "a"): 1, ("q", "gone"): 3}  # b changed, c is new: look now
    # what this process claimed (a: 500) beats an older read; claims not read are forgotten
    assert last_after == {("q", "a"): 500, ("q", "b"): 200, ("q", "c"): 50}
    assert due == {("q", "a"): 1, ("q", "b"): 2, ("q", "gone"): 3}  # inputs untouched


# --- listing / outcome ------------------------------------------------------------------------


def test_listing_rows_by_name_with_next_run_last_run_and_outcome() -> None:
    every5 = sched("b")
    hourly = sched("a", cron="0 * * * *", source="queue", suspend=True)
    stored = {b"b": every5.to_json(), b"a": hourly.to_json()}
    runs = {b"b": claim(every5, ms(2024, 1, 1, 10, 5), "m1"), b"a": claim(hourly, 0, None)}
    recs = records(stored, runs, seen={b"b": str(NOW - 1000).encode()})
    assert claimed_messages(recs) == ["m1"]
    a, b = listing("q", recs, NOW, {"m1": "stored"})
    assert (a.name, a.schedule, a.error, a.next_ms, a.stale) == ("a", hourly, None, None, False)
    assert a.outcome == "not run (due)"
    assert (b.name, b.next_ms, b.stale) == ("b", ms(2024, 1, 1, 10, 10), False)
    assert b.last is not None and b.last.message_id == "m1"
    assert b.outcome == "waiting/running"


def test_listing_marks_code_schedules_not_declared_lately_as_stale() -> None:
    fresh, old, never, queue = sched("f"), sched("o"), sched("n"), sched("q", source="queue")
    stored = {s.name.encode(): s.to_json() for s in (fresh, old, never, queue)}
    limit = int(STALE_AFTER_S * 1000)
    seen = {b"f": str(NOW - limit).encode(), b"o": str(NOW - limit - 1).encode()}
    rows = {r.name: r.stale for r in listing("q", records(stored, seen=seen), NOW, {})}
    assert rows == {"f": False, "o": True, "n": True, "q": False}


def test_listing_shows_an_unusable_entry_with_its_error() -> None:
    good = sched("g")
    stored = {b"bad": b"{not json", b"cron": b'{"name":"x","cron":"61 * * * *","task":"t"}'}
    stored[b"g"] = good.to_json()
    rows = {
        r.name: r for r in listing("q", records(stored, seen={b"g": str(NOW).encode()}), NOW, {})
    }
    assert rows["bad"].schedule is None and "not JSON" in (rows["bad"].error or "")
    assert rows["cron"].schedule is None and "cron" in (rows["cron"].error or "")
    assert rows["bad"].next_ms is None and rows["bad"].outcome == "-"
    assert rows["g"].error is None and rows["g"].next_ms == ms(2024, 1, 1, 10, 10)


def test_the_outcome_of_a_claim() -> None:
    s = sched()
    tick = ms(2024, 1, 1, 10, 5)
    ran = Run(tick, "m", tick + 10, s.timing)
    assert outcome(None, None) == "-"
    assert outcome(ran, "stored") == "waiting/running"
    assert outcome(ran, "dead") == "failed (dead-lettered)"
    assert outcome(ran, None) == "finished"
    late = Run(tick, "m", tick + 5 * MIN, s.timing, "late")
    assert outcome(late, None) == "finished, late 5m 0s: no worker was running at the tick"
    assert outcome(Run(tick, None, tick, s.timing, "suspended"), None) == "not run (suspended)"
    skipped = Run(tick, None, tick + 2 * MIN, s.timing, "missed")
    assert outcome(skipped, None).startswith("skipped: missed while no worker ran")


# --- earliest_unclaimed -----------------------------------------------------------------------


def test_the_earliest_unclaimed_tick_over_queues() -> None:
    every5, hourly = sched("five"), sched("hour", cron="0 * * * *", queue="r")
    q = records({b"five": every5.to_json()}, {b"five": claim(every5, ms(2024, 1, 1, 10, 5))})
    r = records({b"hour": hourly.to_json()}, {b"hour": claim(hourly, ms(2024, 1, 1, 10))})
    tick = earliest_unclaimed(["q", "r"], [q, r], NOW, hold_s=3600)
    due = ms(2024, 1, 1, 10, 10) / 1000
    assert tick == ScheduledTick(schedule="five", queue="q", in_s=180.0, due_at=due)
    assert tick.expected_tasks == 0  # not recorded in Redis: unknown
    claimed_on = records(
        {b"five": every5.to_json()}, {b"five": claim(every5, ms(2024, 1, 1, 10, 10))}
    )
    tick = earliest_unclaimed(["q", "r"], [claimed_on, r], NOW, hold_s=3600)
    assert tick is not None and tick.schedule == "five" and tick.in_s == 480.0


def test_a_due_tick_unclaimed_is_in_the_past_within_the_hold() -> None:
    s = sched()
    recs = records({b"s": s.to_json()}, {b"s": claim(s, ms(2024, 1, 1, 9, 50))})
    tick = earliest_unclaimed(["q"], [recs], NOW, hold_s=3600)
    assert tick is not None and tick.in_s == -12 * 60.0  # 9:55, unclaimed
    held = earliest_unclaimed(["q"], [recs], NOW, hold_s=180)
    assert held is not None and held.in_s == -2 * 60.0  # nothing older than the hold: 10:05
    short = earliest_unclaimed(["q"], [recs], NOW, hold_s=60)
    assert short is not None and short.in_s == 180.0  # 10:05 is older still: 10:10


def test_suspended_unreadable_and_uncomputable_schedules_are_left_out() -> None:
    suspended = sched("s", suspend=True)
    stored = {b"s": suspended.to_json(), b"bad": b"{", b"worse": b'{"cron": 5}'}
    assert earliest_unclaimed(["q"], [records(stored)], NOW, hold_s=3600) is None


def test_a_schedule_never_claimed_past_its_grace_waits_for_its_next_tick() -> None:
    s = sched()
    recs = records({b"s": s.to_json()})
    late = earliest_unclaimed(["q"], [recs], NOW, hold_s=3600)  # 10:05 is 2 minutes gone
    assert late is not None and late.in_s == 180.0
    fresh = earliest_unclaimed(["q"], [recs], ms(2024, 1, 1, 10, 5, 30), hold_s=3600)
    assert fresh is not None and fresh.in_s == -30.0  # 10:05 still runs when claimed now
    retimed = records(
        {b"s": s.to_json()}, {b"s": claim(sched(cron="0 * * * *"), ms(2024, 1, 1, 9))}
    )
    other = earliest_unclaimed(["q"], [retimed], NOW, hold_s=3600)
    assert other is not None and other.in_s == 180.0  # a claim of other timing: never claimed


def test_code_schedules_no_longer_declared_are_left_out_but_a_sleeping_fleet_keeps_them() -> None:
    gone, kept = sched("gone", cron="* * * * *"), sched("kept")
    stored = {b"gone": gone.to_json(), b"kept": kept.to_json()}
    claims = {b"kept": claim(kept, ms(2024, 1, 1, 10, 5))}
    latest = NOW - 3_600_000  # the fleet last declared an hour ago, then slept
    stale = str(latest - int(STALE_AFTER_S * 1000) - 1).encode()
    recs = records(stored, claims, seen={b"gone": stale, b"kept": str(latest).encode()})
    tick = earliest_unclaimed(["q"], [recs], NOW, hold_s=3600)
    assert tick is not None and tick.schedule == "kept"
    # declared by the marker only (no code schedule left), "gone" is still stale
    marker = records(stored, claims, seen={b"gone": stale}, declared=str(latest).encode())
    assert earliest_unclaimed(["q"], [marker], NOW, hold_s=3600).schedule == "kept"  # type: ignore[union-attr]
    # nothing declared, ever: every code schedule stays in
    asleep = earliest_unclaimed(["q"], [records(stored, claims, seen={b"gone": stale})], NOW, 3600)
    assert asleep is not None and asleep.schedule == "gone"


def test_upcoming_ticks_are_the_next_few_of_each_schedule_interleaved() -> None:
    every5, hourly = sched("five"), sched("hour", cron="0 * * * *", queue="r")
    q = records({b"five": every5.to_json()}, {b"five": claim(every5, ms(2024, 1, 1, 10, 5))})
    r = records({b"hour": hourly.to_json()}, {b"hour": claim(hourly, ms(2024, 1, 1, 10))})
    sizes = {("q", "five"): 40}
    ticks = upcoming_ticks(["q", "r"], [q, r], NOW, hold_s=3600, expected=sizes)
    assert [(t.schedule, t.in_s) for t in ticks] == [
        ("five", 180.0),
        ("five", 480.0),
        ("five", 780.0),
        ("hour", 53 * 60.0),
        ("hour", 113 * 60.0),
        ("hour", 173 * 60.0),
    ]
    assert [t.expected_tasks for t in ticks] == [40, 40, 40, 0, 0, 0]
    # the first is what a fleet at zero is woken for
    assert ticks[0] == replace(earliest_unclaimed(["q", "r"], [q, r], NOW, 3600), expected_tasks=40)  # type: ignore[type-var]


# --- queue_schedules_diff ---------------------------------------------------------------------


def test_storing_a_queues_schedules_writes_only_what_differs() -> None:
    same, edited, gone = (sched(n, source="queue") for n in ("same", "edited", "gone"))
    code = sched("code")
    current = {
        b"same": same.to_json(),
        b"edited": edited.to_json(),
        b"gone": gone.to_json(),
        b"code": code.to_json(),
    }
    now_edited, added = replace(edited, suspend=True), sched("added", source="queue")
    changed, removed = queue_schedules_diff(current, [same, now_edited, added])
    assert changed == {b"edited": now_edited.to_json(), b"added": added.to_json()}
    assert removed == [b"gone"]  # code schedules are not the Queue's to remove
    assert queue_schedules_diff(current, [same, edited, gone]) == ({}, [])


def test_names_kept_keep_what_is_stored() -> None:
    suspended = sched("broken", source="queue", suspend=True)
    current = {b"broken": suspended.to_json()}
    assert queue_schedules_diff(current, [], keep=["broken"]) == ({}, [])
    assert queue_schedules_diff(current, []) == ({}, [b"broken"])
