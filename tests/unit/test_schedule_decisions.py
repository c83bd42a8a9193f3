"""Schedules without Redis: validation, JSON, and decide() with injected time."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from shoal import App, ConfigurationError
from shoal.schedules import (
    Run,
    Schedule,
    decide,
    explain_lateness,
    from_queue_spec,
    latest_tick,
    make,
    message_id,
    next_tick,
    pending_tick,
)

BERLIN = ZoneInfo("Europe/Berlin")


def ms(*parts: int, tz: ZoneInfo | None = None) -> int:
    return round(datetime(*parts, tzinfo=tz or UTC).timestamp() * 1000)  # type: ignore[misc]


def every5(**changes: object) -> Schedule:
    fields: dict[str, object] = {"name": "s", "cron": "*/5 * * * *", "task": "t", "queue": "q"}
    fields.update(changes)
    return make(**fields)  # type: ignore[arg-type]


def test_a_tick_on_time_runs_once() -> None:
    s = every5()
    now = ms(2024, 1, 1, 10, 5, 3)
    d = decide(s, ms(2024, 1, 1, 10, 0), now)
    assert d is not None and d.run and d.tick_ms == ms(2024, 1, 1, 10, 5)
    assert decide(s, d.tick_ms, now) is None  # claimed: nothing more to do
    assert decide(s, d.tick_ms, ms(2024, 1, 1, 10, 9, 59)) is None  # until the next tick


def test_exactly_on_the_tick_counts_as_due() -> None:
    d = decide(every5(), ms(2024, 1, 1, 10, 0), ms(2024, 1, 1, 10, 5))
    assert d is not None and d.run and d.tick_ms == ms(2024, 1, 1, 10, 5)


def test_grace_is_a_minute_at_most_and_half_the_period_at_least() -> None:
    # every 5 minutes: a minute of grace
    assert decide(every5(), ms(2024, 1, 1, 10, 0), ms(2024, 1, 1, 10, 6)).run  # type: ignore[union-attr]
    late = decide(every5(), ms(2024, 1, 1, 10, 0), ms(2024, 1, 1, 10, 6, 1))
    assert late is not None and not late.run and "skipped" in late.why
    # every 10 seconds: 5 seconds of grace
    s = every5(cron="* * * * * */10")
    assert decide(s, ms(2024, 1, 1, 10, 0, 0), ms(2024, 1, 1, 10, 0, 15)).run  # type: ignore[union-attr]
    assert not decide(s, ms(2024, 1, 1, 10, 0, 0), ms(2024, 1, 1, 10, 0, 16)).run  # type: ignore[union-attr]


def test_missed_ticks_skip_or_run_once() -> None:
    last, now = ms(2024, 1, 1, 8, 0), ms(2024, 1, 1, 10, 7)  # no worker from 8:00 to 10:07
    skipped = decide(every5(missed="skip"), last, now)
    assert skipped is not None and not skipped.run and skipped.tick_ms == ms(2024, 1, 1, 10, 5)
    once = decide(every5(missed="run_once"), last, now)
    assert once is not None and once.run and once.tick_ms == ms(2024, 1, 1, 10, 5)
    assert "run_once" in once.why  # one run for the 25 missed ticks, coalesced


def test_a_new_schedule_does_not_back_fill_unless_on_time() -> None:
    late = decide(every5(missed="run_once"), None, ms(2024, 1, 1, 10, 7))
    assert late is not None and not late.run and late.tick_ms == ms(2024, 1, 1, 10, 5)
    on_time = decide(every5(), None, ms(2024, 1, 1, 10, 5, 1))
    assert on_time is not None and on_time.run


def test_a_suspended_schedule_claims_its_ticks_without_running() -> None:
    d = decide(every5(suspend=True), ms(2024, 1, 1, 10, 0), ms(2024, 1, 1, 10, 5, 1))
    assert d is not None and not d.run and d.why == "suspended"


def test_time_zone_and_daylight_saving_change() -> None:
    nine = make(name="n", cron="0 9 * * *", task="t", queue="q", timezone="Europe/Berlin")
    # 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer (DST began 2024-03-31)
    assert latest_tick(nine, ms(2024, 3, 30, 12, 0)) == ms(2024, 3, 30, 8, 0)
    assert latest_tick(nine, ms(2024, 3, 31, 12, 0)) == ms(2024, 3, 31, 7, 0)
    assert next_tick(nine, ms(2024, 3, 30, 12, 0)) == ms(2024, 3, 31, 9, 0, tz=BERLIN)


def test_a_wall_time_skipped_or_repeated_by_dst_runs_once() -> None:
    s = make(name="n", cron="30 2 * * *", task="t", queue="q", timezone="Europe/Berlin")
    # spring forward: 02:30 does not exist on 2024-03-31; it runs at 03:00, once
    spring = next_tick(s, ms(2024, 3, 30, 12, 0, tz=BERLIN))
    assert spring == ms(2024, 3, 31, 3, 0, tz=BERLIN)
    assert next_tick(s, spring) == ms(2024, 4, 1, 2, 30, tz=BERLIN)
    # fall back: 02:30 happens twice on 2024-10-27; only the first runs
    first = next_tick(s, ms(2024, 10, 26, 12, 0, tz=BERLIN))
    assert first == ms(2024, 10, 27, 0, 30)  # 02:30 CEST
    assert next_tick(s, first) == ms(2024, 10, 28, 1, 30)  # the next day, 02:30 CET
    assert latest_tick(s, ms(2024, 10, 27, 1, 45)) == first  # not 02:30 CET that day


def test_every_half_hour_keeps_real_time_through_the_repeated_hour() -> None:
    s = make(name="n", cron="*/30 * * * *", task="t", queue="q", timezone="Europe/Berlin")
    ticks = [ms(2024, 10, 27, 0, 0)]
    for _ in range(4):
        ticks.append(next_tick(s, ticks[-1]))
    assert [t - ticks[0] for t in ticks] == [i * 1_800_000 for i in range(5)]


def test_an_hour_range_covering_the_day_is_every_hour_through_the_repeated_hour() -> None:
    star = make(name="a", cron="0 * * * *", task="t", queue="q", timezone="Europe/Berlin")
    ranged = make(name="b", cron="0 0-23 * * *", task="t", queue="q", timezone="Europe/Berlin")
    start = ms(2024, 10, 26, 23, 0)  # the fall-back night: 02:00 happens twice
    for s in (star, ranged):
        ticks = [start]
        for _ in range(5):
            ticks.append(next_tick(s, ticks[-1]))
        assert [t - start for t in ticks] == [i * 3_600_000 for i in range(6)], s.cron


def test_a_claim_made_under_other_timing_does_not_count() -> None:
    tokyo = make(name="d", cron="0 9 * * *", task="t", queue="q", timezone="Asia/Tokyo")
    utc = make(name="d", cron="0 9 * * *", task="t", queue="q", timezone="UTC")
    claim = Run(ms(2024, 1, 1, 0, 0), "x", ms(2024, 1, 1, 0, 0), tokyo.timing, "due")
    assert claim.counts_for(tokyo) and not claim.counts_for(utc)
    assert Run.parse(claim.encode()) == claim
    assert Run.parse("1704067200000 - 1704067200005") == Run(1704067200000, None, 1704067200005)
    assert Run.parse("garbage") is None


def test_message_ids_are_deterministic_and_sort_by_tick() -> None:
    a = message_id("q", "s", ms(2024, 1, 1, 10, 0))
    assert a == message_id("q", "s", ms(2024, 1, 1, 10, 0)) and len(a) == 32
    assert a < message_id("q", "s", ms(2024, 1, 1, 10, 5))
    assert a != message_id("q", "other", ms(2024, 1, 1, 10, 0))
    assert int(a[:12], 16) == ms(2024, 1, 1, 10, 0)


def test_json_round_trip_and_claim_format() -> None:
    s = every5(args=[1, "x"], kwargs={"k": True}, timezone="Asia/Tokyo", missed="run_once")
    assert Schedule.from_json("q", s.to_json()) == s
    run = Run(ms(2024, 1, 1), "abc", ms(2024, 1, 1, 0, 0, 1))
    assert Run.parse(run.encode().encode()) == run
    assert Run.parse(f"{ms(2024, 1, 1)} - 5") == Run(ms(2024, 1, 1), None, 5)
    assert Run.parse("garbage") is None


def test_queue_spec_entries_use_kubernetes_names() -> None:
    s = from_queue_spec("q", {"name": "n", "cron": "0 * * * *", "task": "t", "missed": "runOnce"})
    assert s.missed == "run_once" and s.source == "queue" and s.timezone == "UTC"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"cron": "61 * * * *"}, "not a cron expression"),
        ({"cron": "every day"}, "not a cron expression"),
        ({"timezone": "Mars/Olympus"}, "unknown time zone 'Mars/Olympus'"),
        ({"missed": "catch_up"}, "is not a policy"),
        ({"name": "has space"}, "the name must be"),
        ({"task": ""}, "name the task"),
        ({"args": [object()]}, "not JSON-serialisable"),
        ({"cron": "0 0 30 2 *"}, r"never fires \(no date matches it, like February 30th\)"),
        ({"cron": "@hourly"}, r"write aliases out \('@hourly' is '0 \* \* \* \*'\)"),
        ({"suspend": "false"}, "suspend must be true or false"),
    ],
)
def test_bad_input_names_the_schedule_and_the_fix(
    changes: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigurationError, match=expected) as info:
        every5(**changes)
    assert "schedule" in str(info.value)


def test_declaring_schedules_on_an_app() -> None:
    app = App("redis://localhost:1/0")

    @app.periodic("*/5 * * * *", queue="reports", timezone="Europe/Berlin", max_retries=1)
    def report() -> None: ...

    @app.task(queue="mail")
    def digest(kind: str) -> None: ...

    app.schedule(digest, cron="0 8 * * 1", args=["weekly"], name="weekly-digest")
    assert set(app.schedules) == {report.name, "weekly-digest"}
    assert app.schedules[report.name].queue == "reports"
    assert app.schedules["weekly-digest"].args == ["weekly"]
    assert report.options["max_retries"] == 1
    assert app.queues() == ["mail", "reports"]
    with pytest.raises(ConfigurationError, match="declared twice"):
        app.schedule(digest, cron="0 9 * * 1", name="weekly-digest")
    with pytest.raises(ConfigurationError, match="not a cron expression"):
        app.periodic("nope")(digest)


@pytest.mark.parametrize(
    ("now", "up_since", "reason"),
    [
        (ms(2024, 1, 1, 10, 5, 1), ms(2024, 1, 1, 9), "due"),  # within a second: on time
        (ms(2024, 1, 1, 10, 5, 41), ms(2024, 1, 1, 10, 5, 40), "late"),  # started after it
        (ms(2024, 1, 1, 10, 5, 41), ms(2024, 1, 1, 9), "delayed"),  # running, could not claim
    ],
    ids=["on-time", "no-worker-was-running", "running-but-stalled"],
)
def test_a_late_claim_says_why(now: int, up_since: int, reason: str) -> None:
    d = decide(every5(), ms(2024, 1, 1, 10, 0), now)
    assert d is not None and d.run
    assert explain_lateness(d, now, up_since).reason == reason


@pytest.mark.parametrize(
    ("run", "shown"),
    [
        (Run(0, "m", 800, "t", "due"), None),
        (Run(0, "m", 41_000, "t", "late"), "late 41s: no worker was running at the tick"),
        (Run(0, "m", 30_000, "t", "delayed"), "late 30s: the running workers could not claim"),
        (Run(0, "m", 41_000, "t", "due"), "late 41s"),  # claimed before reasons were kept
        (Run(0, None, 300_000, "t", "missed"), "skipped: missed while no worker ran (claimed 5m"),
        (
            Run(0, "m", 7_380_000, "t", "missed"),
            "late 2h 3m: missed while no worker ran (run_once)",
        ),
        (Run(0, None, 90_000, "t", "suspended"), None),
    ],
    ids=["on-time", "late", "delayed", "old-claim", "skipped", "run-once", "suspended"],
)
def test_lateness_for_humans(run: Run, shown: str | None) -> None:
    text = run.lateness()
    assert text == shown if shown is None else text is not None and text.startswith(shown)


@pytest.mark.parametrize(
    ("last", "now", "since", "pending"),
    [
        # claimed up to 10:00: the next
        (ms(2024, 1, 1, 10, 0), ms(2024, 1, 1, 10, 2), ms(2024, 1, 1, 9, 57), (10, 5)),
        # 10:00 due and unclaimed (a fleet asleep since 9:00): still pending within the hold
        (ms(2024, 1, 1, 9, 0), ms(2024, 1, 1, 10, 2), ms(2024, 1, 1, 9, 57), (10, 0)),
        # ... and not beyond it
        (ms(2024, 1, 1, 9, 0), ms(2024, 1, 1, 10, 2), ms(2024, 1, 1, 10, 1), (10, 5)),
        # never claimed: its latest tick while a worker would still run it, else the next
        (None, ms(2024, 1, 1, 10, 0, 20), ms(2024, 1, 1, 9, 55), (10, 0)),
        (None, ms(2024, 1, 1, 10, 2), ms(2024, 1, 1, 9, 55), (10, 5)),
    ],
    ids=["claimed", "unclaimed-in-hold", "past-hold", "new-in-grace", "new-past-grace"],
)
def test_the_pending_tick_a_fleet_is_woken_for(
    last: int | None, now: int, since: int, pending: tuple[int, int]
) -> None:
    assert pending_tick(every5(), last, now, since) == ms(2024, 1, 1, *pending)
