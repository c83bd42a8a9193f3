"""The autoscaling policy as a table, and as scenarios over ticks (time is injected)."""

from __future__ import annotations

import pytest

from shoal.autoscale import (
    Decision,
    Policy,
    ScheduledTick,
    Snapshot,
    State,
    decide,
    policy_from_spec,
)

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
    policy = Policy(
        max_replicas=10, target_per_replica=10, scale_to_zero_after_s=300, stabilization_s=0
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
    # When the tick has been claimed (the next one is a day away) and its task ran
    ran = decide(policy, Snapshot(1061, 0, 0, 1, 1, completion_rate=0.5), woken.state)
    assert ran.replicas == 1
    # Then the fleet idles scale_to_zero_after_s from its last activity, then sleeps
    assert (
        decide(policy, Snapshot(1300, 0, 0, 1, 1, next_tick=tick(86_000)), ran.state).replicas == 1
    )
    asleep = decide(policy, Snapshot(1361, 0, 0, 1, 1, next_tick=tick(86_000)), ran.state)
    assert asleep.replicas == 0 and "idle for 300s" in asleep.reason


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
