"""The autoscaling policy as a table, and as scenarios over ticks (time is injected)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from shoal.autoscale import (
    UNSCHEDULED_MEMORY_S,
    Decision,
    Policy,
    ScheduledTick,
    Snapshot,
    State,
    decide,
    policy_from_spec,
)

WATCHED = State(first_poll=-UNSCHEDULED_MEMORY_S)
"""A policy state that has watched long enough to trust the schedules to explain the work."""

POLICY = Policy(
    min_replicas=0,
    max_replicas=50,
    target_per_replica=20,
    stabilization_s=60,
    scale_to_zero_after_s=300,
)


@pytest.mark.parametrize(
    ("snap", "policy", "expected"),
    [
        # a burst at zero replicas: straight to what the backlog needs, in one decision
        (Snapshot(0, waiting=500, in_flight=0, current_replicas=0, ready_replicas=0), POLICY, 25),
        # below the activation threshold a fleet at zero stays asleep
        (Snapshot(0, 3, 0, 0, 0), Policy(activation_threshold=5), 0),
        # ... and wakes above it
        (Snapshot(0, 6, 0, 0, 0), Policy(activation_threshold=5), 1),
        # in-flight work counts, unlike LLEN-only scalers
        (Snapshot(0, 0, 60, 3, 3), POLICY, 3),
        # never above max, never below min
        (Snapshot(0, 100_000, 0, 5, 5), POLICY, 50),
        (Snapshot(0, 0, 0, 0, 0), Policy(min_replicas=2), 2),
        # no fresh data: hold whatever runs
        (Snapshot(0, 0, 0, 7, 7, fresh=False), POLICY, 7),
        (Snapshot(0, 900, 0, 7, 7, fresh=False), POLICY, 7),
        # delayed messages about to be due count as waiting
        (Snapshot(0, 0, 0, 0, 0, delayed_due_soon=40), POLICY, 2),
    ],
    ids=[
        "burst-from-zero",
        "below-activation",
        "above-activation",
        "in-flight-counts",
        "max",
        "min",
        "stale-holds",
        "stale-holds-even-with-backlog",
        "due-soon",
    ],
)
def test_decisions(snap: Snapshot, policy: Policy, expected: int) -> None:
    decision = decide(policy, snap)
    assert decision.replicas == expected, decision.reason
    assert str(expected) in decision.reason


def test_latency_target_sizes_from_measured_throughput() -> None:
    policy = Policy(max_replicas=50, target_per_replica=1000, target_wait_s=2)
    # 2 replicas complete 20/s between them while a backlog waits: 10/s per replica learned
    learned = decide(
        policy,
        Snapshot(
            0,
            waiting=100,
            in_flight=2,
            current_replicas=2,
            ready_replicas=2,
            arrival_rate=30,
            completion_rate=20,
        ),
    )
    assert learned.state.per_replica_rate == pytest.approx(10)
    # 30/s arriving + 100 waiting to start within 2 s = 80/s → 8 replicas
    assert learned.replicas == 8
    assert "10.0/s per replica" in learned.reason


def test_scale_down_waits_for_the_stabilisation_window_then_steps() -> None:
    policy = Policy(
        max_replicas=50, target_per_replica=10, stabilization_s=60, max_scale_down_step=3
    )
    state = decide(policy, Snapshot(0, 100, 0, 10, 10)).state  # needs 10
    held = decide(policy, Snapshot(10, 20, 0, 10, 10), state)  # needs 2: held in the window
    assert held.replicas == 10 and "stabilisation" in held.reason
    later = decide(policy, Snapshot(61, 20, 0, 10, 10), held.state)  # window passed: step of 3
    assert later.replicas == 7
    step2 = decide(policy, Snapshot(63, 20, 0, 7, 7), later.state)
    assert step2.replicas == 4
    step3 = decide(policy, Snapshot(65, 20, 0, 4, 4), step2.state)
    assert step3.replicas == 2


def test_no_flapping_when_the_backlog_oscillates() -> None:
    policy = Policy(max_replicas=50, target_per_replica=10, stabilization_s=60)
    state, replicas, changes = State(), 0, 0
    for t in range(0, 120, 2):
        waiting = 100 if (t // 10) % 2 == 0 else 20  # 10 ↔ 2 replicas' worth every 10 s
        d: Decision = decide(policy, Snapshot(t, waiting, 0, replicas, replicas), state)
        changes += d.replicas != replicas
        replicas, state = d.replicas, d.state
    assert replicas == 10
    assert changes == 1  # up once, and held there


def test_scale_to_zero_only_after_idleness_since_the_last_activity() -> None:
    # (start-up unmeasured and taken as 200 s: no quiet spell here is worth an early release)
    policy = Policy(
        max_replicas=10,
        target_per_replica=10,
        scale_to_zero_after_s=300,
        stabilization_s=0,
        schedule_lead_s=200,
    )
    state = decide(policy, Snapshot(0, 5, 5, 1, 1, completion_rate=3)).state
    idle = decide(policy, Snapshot(100, 0, 0, 1, 1), state)
    assert idle.replicas == 1 and "idle for 100s" in idle.reason
    still = decide(policy, Snapshot(299, 0, 0, 1, 1), idle.state)
    assert still.replicas == 1
    # a completion at 250 s would have reset the clock: activity is what counts, not polls
    active = decide(policy, Snapshot(250, 0, 0, 1, 1, completion_rate=1), idle.state)
    assert decide(policy, Snapshot(301, 0, 0, 1, 1), active.state).replicas == 1
    zero = decide(policy, Snapshot(301, 0, 0, 1, 1), still.state)
    assert zero.replicas == 0 and "idle for 301s" in zero.reason


def test_oldest_wait_over_target_adds_a_replica() -> None:
    policy = Policy(max_replicas=10, target_per_replica=100, target_wait_s=1)
    state = State(per_replica_rate=100.0)
    d = decide(policy, Snapshot(0, 10, 3, 3, 3, oldest_wait_s=5, completion_rate=300), state)
    assert d.replicas == 4
    assert "oldest waited 5.0s" in d.reason


# --- schedules: a fleet at zero wakes before a tick is due ---------------------------------


def tick(in_s: float, name: str = "nightly-report", queue: str = "reports") -> ScheduledTick:
    return ScheduledTick(schedule=name, queue=queue, in_s=in_s)


WAKE = Policy(max_replicas=10, target_per_replica=20, schedule_lead_s=60, schedule_hold_s=300)


@pytest.mark.parametrize(
    ("snap", "policy", "expected", "reason"),
    [
        # a tick due within the lead wakes a fleet at zero, saying which and when
        (
            Snapshot(0, 0, 0, 0, 0, next_tick=tick(42)),
            WAKE,
            1,
            "schedule nightly-report on reports due in 42s → 1",
        ),
        # beyond the lead it sleeps on
        (Snapshot(0, 0, 0, 0, 0, next_tick=tick(61)), WAKE, 0, "idle → 0"),
        # a longer lead (scheduleLeadSeconds) wakes it earlier
        (
            Snapshot(0, 0, 0, 0, 0, next_tick=tick(100)),
            Policy(schedule_lead_s=120),
            1,
            "due in 1m 40s",
        ),
        # due, not claimed yet: stays up until a worker claims it ...
        (
            Snapshot(0, 0, 0, 1, 0, next_tick=tick(-20)),
            WAKE,
            1,
            "schedule nightly-report on reports due 20s ago, not claimed yet → 1",
        ),
        # ... for a bounded time only
        (Snapshot(0, 0, 0, 0, 0, next_tick=tick(-301)), WAKE, 0, "idle → 0"),
        # below the activation threshold, a schedule still wakes the fleet
        (
            Snapshot(0, 3, 0, 0, 0, next_tick=tick(5)),
            Policy(activation_threshold=5),
            1,
            "due in 5s → 1",
        ),
        # a fleet kept up by work is sized by its work
        (Snapshot(0, 500, 0, 0, 0, next_tick=tick(5)), WAKE, 10, "500 waiting"),
        # never below min
        (Snapshot(0, 0, 0, 0, 0, next_tick=tick(5)), Policy(min_replicas=3), 3, "→ 3"),
        # woken and up, no idle period: held until the tick is claimed
        (
            Snapshot(0, 0, 0, 1, 1, next_tick=tick(-3)),
            Policy(scale_to_zero_after_s=0),
            1,
            "due 3s ago, not claimed yet → 1",
        ),
        # no fresh measurement: nothing moves, schedule or not
        (Snapshot(0, 0, 0, 0, 0, fresh=False, next_tick=tick(5)), WAKE, 0, "holding 0"),
    ],
    ids=[
        "due-within-lead",
        "beyond-lead",
        "longer-lead",
        "overdue-unclaimed",
        "overdue-beyond-hold",
        "below-activation",
        "work-wins",
        "min",
        "up-with-zero-idle-period",
        "stale-holds",
    ],
)
def test_schedule_wake_decisions(
    snap: Snapshot, policy: Policy, expected: int, reason: str
) -> None:
    decision = decide(policy, snap)
    assert decision.replicas == expected, decision.reason
    assert reason in decision.reason


def test_an_idle_fleet_is_not_scaled_to_zero_just_before_a_tick() -> None:
    policy = Policy(scale_to_zero_after_s=300, stabilization_s=0)
    state = decide(policy, Snapshot(0, 0, 1, 1, 1)).state  # last activity at 0
    kept = decide(policy, Snapshot(1000, 0, 0, 1, 1, next_tick=tick(30)), state)
    assert kept.replicas == 1 and "due in 30s" in kept.reason
    # the same fleet without the tick goes to zero
    assert decide(policy, Snapshot(1000, 0, 0, 1, 1), state).replicas == 0


def test_after_the_tick_is_claimed_the_woken_fleet_idles_then_sleeps() -> None:
    policy = Policy(scale_to_zero_after_s=300, stabilization_s=0)
    # Given a fleet at zero woken 60 s before a tick
    woken = decide(policy, Snapshot(1000, 0, 0, 0, 0, next_tick=tick(60)))
    assert woken.replicas == 1
    # When the tick has been claimed and its task ran, and then a task no tick explains came
    ran = decide(policy, Snapshot(1061, 0, 0, 1, 1, completion_rate=0.5), woken.state)
    assert ran.replicas == 1
    other = decide(policy, Snapshot(1100, 1, 0, 1, 1, arrival_rate=0.5), ran.state)
    # Then the fleet idles scale_to_zero_after_s from its last activity, then sleeps
    later = Snapshot(1399, 0, 0, 1, 1, next_tick=tick(86_000))
    assert decide(policy, later, other.state).replicas == 1
    asleep = decide(policy, Snapshot(1400, 0, 0, 1, 1, next_tick=tick(86_000)), other.state)
    assert asleep.replicas == 0 and "idle for 300s" in asleep.reason


def test_a_fleet_whose_work_was_all_scheduled_sleeps_once_its_tick_is_done() -> None:
    policy = Policy(scale_to_zero_after_s=300, stabilization_s=45)
    woken = decide(policy, Snapshot(1000, 0, 0, 0, 0, next_tick=tick(11), startup_s=10), WATCHED)
    assert woken.replicas == 1
    ran = decide(policy, Snapshot(1012, 0, 1, 1, 1, arrival_rate=0.5, startup_s=10), woken.state)
    assert ran.replicas == 1
    # the next tick is a day away: no reason to hold the pod for scale_to_zero_after_s
    done = Snapshot(1014, 0, 0, 1, 1, completion_rate=0.5, next_tick=tick(86_000), startup_s=10)
    asleep = decide(policy, done, ran.state)
    assert asleep.replicas == 0
    assert "only scheduled work lately" in asleep.reason and "more than a pod start-up" in (
        asleep.reason
    )


def test_a_wake_counts_as_activity_even_when_the_tick_runs_nothing() -> None:
    # A fleet that never had work, woken for a tick claimed without a run (missed: skip), still
    # goes back to zero after the idle period, counted from the wake
    policy = Policy(scale_to_zero_after_s=100, stabilization_s=0)
    woken = decide(policy, Snapshot(0, 0, 0, 0, 0, next_tick=tick(10)))
    held = decide(policy, Snapshot(50, 0, 0, 1, 1), woken.state)
    assert held.replicas == 1
    assert decide(policy, Snapshot(100, 0, 0, 1, 1), held.state).replicas == 0


def test_schedule_lead_from_the_worker_spec() -> None:
    assert policy_from_spec({}).schedule_lead_s == 60
    assert policy_from_spec({"scheduleLeadSeconds": 180}).schedule_lead_s == 180


# --- learned scale-down: release what holding costs more than starting again ---------------

LEARN = Policy(max_replicas=50, target_per_replica=10, stabilization_s=60)


def bursts(count: int, every_s: int, state: State | None = None) -> list[Decision]:
    """Bursts of 100 tasks every `every_s` over a trickle (1 in flight), polled every 2 s; pods
    start in 10 s (measured). Returns every decision."""
    decisions, replicas = [], 0
    for t in range(0, count * every_s, 2):
        work = 100 if t % every_s == 0 else 1
        snap = Snapshot(t, work - 1, 1, replicas, replicas, arrival_rate=0.5, startup_s=10)
        d = decide(LEARN, snap, state)
        decisions.append(d)
        replicas, state = d.replicas, d.state
    return decisions


def test_a_level_whose_quiet_spells_outlast_start_ups_is_released_at_once() -> None:
    decisions = bursts(3, 300)
    after_first, after_third = decisions[1], decisions[301]  # 2 s after the bursts at 0, 600
    # Given nothing learned yet, the first burst's replicas are held for the window
    assert after_first.replicas == 10 and "stabilisation" in after_first.reason
    # Then levels 2-10 were idle 300 s between bursts (30 start-ups): released on the spot
    assert after_third.replicas == 1
    assert "replicas 2-10 released early" in after_third.reason
    assert "start-up 10s" in after_third.reason


def test_quiet_spells_shorter_than_two_start_ups_keep_the_window() -> None:
    # bursts every 16 s: levels 2-10 come back after 16 s, less than 2 x 10 s start-up
    decisions = bursts(10, 16)
    assert all(d.replicas == 10 for d in decisions[1:])


def test_an_idle_fleet_goes_to_zero_after_one_idle_poll_when_its_idle_spells_are_long() -> None:
    policy = Policy(max_replicas=10, target_per_replica=10, stabilization_s=0)
    state, replicas = State(), 0
    for burst_at in (0, 600, 1200):  # a task every 10 min, nothing between
        d = decide(policy, Snapshot(burst_at, 5, 0, replicas, replicas, startup_s=10), state)
        d = decide(policy, Snapshot(burst_at + 2, 0, 0, d.replicas, 1, startup_s=10), d.state)
        zero = decide(policy, Snapshot(burst_at + 4, 0, 0, 1, 1, startup_s=10), d.state)
        replicas, state = zero.replicas, zero.state
    # the first idle spell was not known yet: the fleet idled on (scale_to_zero_after_s 300)
    # ... from the second on, it sleeps after one idle poll
    assert zero.replicas == 0 and "quiet spells here last" in zero.reason
    assert "start-up 10s" in zero.reason


def test_a_slow_leak_keeps_its_one_replica() -> None:
    # one task every 20 s: idle spells of ~18 s, under 2 start-ups: holding is cheaper
    policy = Policy(max_replicas=10, target_per_replica=10, stabilization_s=0)
    state, replicas = State(), 1
    for t in range(0, 600, 2):
        arriving = 0.5 if t % 20 == 0 else 0.0
        done = 0.5 if t % 20 == 2 else 0.0
        snap = Snapshot(
            t, 0, int(t % 20 == 0), replicas, replicas, arrival_rate=arriving, completion_rate=done
        )
        d = decide(policy, replace_startup(snap, 10), state)
        replicas, state = d.replicas, d.state
        assert replicas == 1, d.reason


def replace_startup(snap: Snapshot, startup_s: float) -> Snapshot:
    return Snapshot(
        snap.now,
        snap.waiting,
        snap.in_flight,
        snap.current_replicas,
        snap.ready_replicas,
        arrival_rate=snap.arrival_rate,
        completion_rate=snap.completion_rate,
        startup_s=startup_s,
    )


def test_no_flapping_on_a_noisy_steady_load() -> None:
    # Given a steady load of ~90 tasks (9 replicas' worth), each poll off by up to a third, for
    # an hour: its top levels come and go, with quiet spells shorter than the window
    rng = random.Random(7)
    state, replicas, reasons = State(), 0, []
    for t in range(0, 3600, 2):
        work = round(90 * rng.uniform(0.67, 1.33))
        snap = Snapshot(t, work // 2, work - work // 2, replicas, replicas, arrival_rate=45)
        d = decide(LEARN, replace_startup(snap, 10), state)
        if d.replicas != replicas:
            reasons.append(d.reason)
        replicas, state = d.replicas, d.state
    # Then nothing is released early: the fleet rises to the noise's top and stays there, but
    # for the window letting go of the rarest level twice in the hour
    assert not [r for r in reasons if "released early" in r]
    assert len(reasons) <= 8, reasons


def test_throughput_is_not_learned_from_a_poll_in_which_replicas_became_ready() -> None:
    policy = Policy(max_replicas=50, target_per_replica=1000, target_wait_s=2)
    first = decide(policy, Snapshot(0, 100, 8, 2, 2, completion_rate=20))
    assert first.state.per_replica_rate == pytest.approx(10)
    # 8 more became ready during the poll: 20/s over 10 replicas is not their capacity
    grown = decide(policy, Snapshot(2, 100, 40, 10, 10, completion_rate=20), first.state)
    assert grown.state.per_replica_rate == pytest.approx(10)
    held = decide(policy, Snapshot(4, 100, 40, 10, 10, completion_rate=200), grown.state)
    assert held.state.per_replica_rate == pytest.approx(10 + 0.3 * (20 - 10))


# --- warming for a schedule: when, how many, and saying so ----------------------------------

DUE_0300 = datetime(2026, 3, 14, 3, 0, tzinfo=UTC).timestamp()


def due(in_s: float, expected: int = 0) -> ScheduledTick:
    return ScheduledTick(
        "nightly-report", "reports", in_s=in_s, due_at=DUE_0300, expected_tasks=expected
    )


@pytest.mark.parametrize(
    ("expected", "replicas"),
    [(0, 1), (1, 1), (200, 10), (201, 11), (10_000, 50)],
    ids=["unknown", "one-task", "exact", "rounded-up", "clamped-to-max"],
)
def test_the_warm_fleet_is_sized_from_the_tasks_the_last_run_produced(
    expected: int, replicas: int
) -> None:
    policy = Policy(max_replicas=50, target_per_replica=20)
    snap = Snapshot(0, 0, 0, 0, 0, next_tick=due(5, expected), startup_s=10)
    d = decide(policy, snap)
    assert d.replicas == replicas, d.reason
    assert (f"{expected} tasks last run" in d.reason) == (expected > 0)


@pytest.mark.parametrize(
    ("startup_s", "in_s", "replicas"),
    [
        (30.0, 31.0, 1),  # measured 30 s + a 2 s poll: warmed 32 s ahead
        (30.0, 33.0, 0),  # ... not earlier, though scheduleLeadSeconds says 60
        (90.0, 91.0, 1),  # a slow pull: earlier than scheduleLeadSeconds
        (None, 59.0, 1),  # nothing measured yet: scheduleLeadSeconds
        (None, 61.0, 0),
    ],
    ids=["within-measured", "beyond-measured", "beyond-configured", "fallback", "fallback-out"],
)
def test_the_lead_before_a_tick_is_the_measured_start_up(
    startup_s: float | None, in_s: float, replicas: int
) -> None:
    policy = Policy(schedule_lead_s=60, poll_s=2)
    d = decide(policy, Snapshot(0, 0, 0, 0, 0, next_tick=due(in_s), startup_s=startup_s))
    assert d.replicas == replicas, d.reason


def test_the_warming_reason_names_the_schedule_and_its_time() -> None:
    snap = Snapshot(0, 0, 0, 0, 0, next_tick=due(12, 400), startup_s=10)
    reason = decide(Policy(max_replicas=50, target_per_replica=20), snap).reason
    assert reason.startswith("warming for schedule nightly-report at 03:00 on reports")
    assert "due in 12s (lead 12s, measured start-up)" in reason
    assert reason.endswith("400 tasks last run → 20")
    # before a start-up is measured, the lead is the configured one, and says so
    unmeasured = decide(Policy(), Snapshot(0, 0, 0, 0, 0, next_tick=due(12)))
    assert "(lead 1m 0s, scheduleLeadSeconds)" in unmeasured.reason


def test_the_warm_fleet_is_kept_for_two_polls_after_its_tick_is_claimed() -> None:
    policy = Policy(max_replicas=50, target_per_replica=20, stabilization_s=0)
    warm = decide(policy, Snapshot(0, 0, 0, 0, 0, next_tick=due(2, 200), startup_s=10))
    assert warm.replicas == 10
    # the tick is claimed: its tasks are being enqueued, few are in yet
    kept = decide(policy, Snapshot(2, 3, 0, 10, 10, startup_s=10), warm.state)
    assert kept.replicas == 10 and "kept warm for schedule nightly-report" in kept.reason
    later = decide(policy, Snapshot(6, 3, 0, 10, 10, startup_s=10), kept.state)
    assert later.replicas == 1


# --- releasing by the schedule: when every recent arrival was a tick's ----------------------


def sched(name: str, in_s: float, expected: int) -> ScheduledTick:
    return ScheduledTick(name, "jobs", in_s=in_s, expected_tasks=expected)


SCHED = Policy(max_replicas=50, target_per_replica=10, stabilization_s=45)


def after_a_tick(upcoming: tuple[ScheduledTick, ...]) -> Decision:
    """A fleet at zero warmed for `reports` (100 tasks: 10 replicas), which ran them; then
    idle, with `upcoming` ahead."""
    reports = (sched("reports", 11, 100),)
    d = decide(SCHED, Snapshot(0, 0, 0, 0, 0, upcoming_ticks=reports, startup_s=10), WATCHED)
    assert d.replicas == 10
    d = decide(SCHED, Snapshot(12, 60, 40, 10, 10, arrival_rate=50, startup_s=10), d.state)
    d = decide(SCHED, Snapshot(14, 0, 20, 10, 10, completion_rate=40, startup_s=10), d.state)
    assert d.replicas == 10  # still working
    idle = Snapshot(16, 0, 0, 10, 10, completion_rate=10, upcoming_ticks=upcoming, startup_s=10)
    return decide(SCHED, idle, d.state)


def test_replicas_no_tick_needs_within_a_start_up_are_released_at_once() -> None:
    # `sync` (3 replicas) fires 30 s from now: its warm-up starts in 18 s, more than a start-up
    # and a poll away: starting 3 pods then costs less than holding them (no window, no spells)
    d = after_a_tick((sched("sync", 30, 25), sched("reports", 284, 100)))
    assert d.replicas == 0, d.reason
    assert "only scheduled work lately" in d.reason


def test_replicas_the_next_warm_up_needs_soon_are_kept() -> None:
    # `sync`'s warm-up starts in 8 s: its 3 replicas are kept, the other 7 go
    d = after_a_tick((sched("sync", 20, 25), sched("reports", 284, 100)))
    assert d.replicas == 3, d.reason
    assert "schedule sync's warm-up in 8s needs 3" in d.reason


def test_ticks_due_together_are_warmed_for_together() -> None:
    ticks = (sched("sync", 8, 25), sched("rollup", 10, 200), sched("sync", 68, 25))
    d = decide(SCHED, Snapshot(0, 0, 0, 0, 0, upcoming_ticks=ticks, startup_s=10))
    assert d.replicas == 3 + 20, d.reason
    assert "schedule sync" in d.reason and "and 1 more tick with it" in d.reason


def test_an_unscheduled_arrival_puts_the_window_back() -> None:
    # the same fleet, but a task no tick explains arrived while it was idle before the tick
    upcoming = (sched("sync", 30, 25),)
    first = decide(SCHED, Snapshot(-100, 1, 0, 0, 0, arrival_rate=0.5, startup_s=10))
    d = decide(SCHED, Snapshot(-98, 0, 0, 1, 1, completion_rate=0.5, startup_s=10), first.state)
    reports = (sched("reports", 11, 100),)
    d = decide(SCHED, Snapshot(0, 0, 0, 1, 1, upcoming_ticks=reports, startup_s=10), d.state)
    d = decide(SCHED, Snapshot(12, 60, 40, 10, 10, arrival_rate=50, startup_s=10), d.state)
    idle = Snapshot(16, 0, 0, 10, 10, completion_rate=10, upcoming_ticks=upcoming, startup_s=10)
    held = decide(SCHED, idle, d.state)
    assert held.replicas == 10 and "stabilisation window" in held.reason


def _noisy_hour(
    policy: Policy, startup_s: float, ticks: Callable[[int], tuple[ScheduledTick, ...]]
) -> list[str]:
    """The reasons of every replica change over an hour of ±33 % noise around 90 tasks, with
    ``ticks(t)`` as the upcoming scheduled ticks at second ``t``."""
    rng = random.Random(7)
    state, replicas, reasons = State(), 0, []
    for t in range(0, 3600, 2):
        work = round(90 * rng.uniform(0.67, 1.33))
        upcoming = ticks(t)
        snap = Snapshot(
            t,
            work // 2,
            work - work // 2,
            replicas,
            replicas,
            arrival_rate=45,
            upcoming_ticks=upcoming,
            next_tick=upcoming[0] if upcoming else None,
            startup_s=startup_s,
        )
        decision = decide(policy, snap, state)
        if decision.replicas != replicas:
            reasons.append(decision.reason)
        replicas, state = decision.replicas, decision.state
    return reasons


def test_no_flapping_on_noise_with_a_schedule_ticking_every_minute() -> None:
    # Given the noisy steady load of the test above, and a schedule firing every minute whose
    # warm-ups come and go: the queue never idles, so its work is never the schedule's alone
    def every_minute(t: int) -> tuple[ScheduledTick, ...]:
        until = 60 - t % 60
        return (sched("sync", until, 20), sched("sync", until + 60, 20))

    reasons = _noisy_hour(LEARN, 10, every_minute)
    assert not [r for r in reasons if "released early" in r or "scheduled work" in r]
    assert len(reasons) <= 8, reasons


@pytest.mark.parametrize("startup_s", [3.0, 10.0])
def test_a_far_scheduled_tick_does_not_make_a_noisy_load_flap(startup_s: float) -> None:
    # a nightly schedule is far away all day: it must not excuse releasing what noise needs
    policy = Policy(max_replicas=50, target_per_replica=10, stabilization_s=60)

    def nightly(t: int) -> tuple[ScheduledTick, ...]:
        return (ScheduledTick("nightly", "q", in_s=6 * 3600 - t),)

    without = _noisy_hour(policy, startup_s, lambda t: ())
    assert len(_noisy_hour(policy, startup_s, nightly)) <= max(8, len(without))


def test_a_restarted_operator_does_not_trust_the_schedules_before_it_has_watched() -> None:
    # Given a fresh policy state (an operator restart) over 4 idle replicas whose queue has a
    # schedule 6 h away and, now and then, unscheduled tasks
    far = (sched("nightly", 6 * 3600, 10),)
    idle = Snapshot(0, 0, 0, 4, 4, upcoming_ticks=far, next_tick=far[0], startup_s=10)
    # Then it does not drop to zero at once as if all the work were the schedule's
    d = decide(SCHED, idle)
    assert d.replicas > 0, d.reason
    assert "only scheduled work lately" not in d.reason


def test_following_the_schedules_still_steps_down_by_max_scale_down_step() -> None:
    stepped = Policy(
        max_replicas=50, target_per_replica=10, stabilization_s=45, max_scale_down_step=2
    )
    reports = (sched("reports", 11, 100),)
    d = decide(stepped, Snapshot(0, 0, 0, 0, 0, upcoming_ticks=reports, startup_s=10), WATCHED)
    d = decide(stepped, Snapshot(12, 60, 40, 10, 10, arrival_rate=50, startup_s=10), d.state)
    d = decide(stepped, Snapshot(14, 0, 20, 10, 10, completion_rate=40, startup_s=10), d.state)
    far = (sched("reports", 284, 100),)
    idle = Snapshot(16, 0, 0, 10, 10, completion_rate=10, upcoming_ticks=far, startup_s=10)
    d = decide(stepped, idle, d.state)
    assert d.replicas == 8, d.reason


def test_a_fleet_held_by_its_queues_rate_limits_gets_no_more_replicas() -> None:
    # Given 2 replicas completing 19/s of a queue limited to 20/s, with a backlog that would
    # otherwise ask for many more
    busy = Snapshot(0, 5_000, 8, 2, 2, completion_rate=19.0, arrival_rate=25.0, rate_cap=20.0)

    # Then it holds: more replicas would only idle, and the reason says so
    held = decide(POLICY, busy)
    assert held.replicas == 2 and "rate limits (20/s)" in held.reason

    # While one below its limit (or with no limit) still scales out
    assert decide(POLICY, replace(busy, completion_rate=10.0)).replicas > 2
    assert decide(POLICY, replace(busy, rate_cap=None)).replicas > 2
