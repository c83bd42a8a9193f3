"""The autoscaling policy: one pure function from a queue snapshot to a replica count and why.

No I/O here (import-linter forbids ``redis``): the operator and ``shoal dev`` measure, this
decides, they act. It is built to beat KEDA + HPA defaults on the failures users hit:

* a burst at zero replicas is answered on the next poll (default 2 s), not the next 30 s;
* scale-up goes to what is needed in one decision, sized from measured per-replica
  throughput when a latency target is set, not by "+4 or double" steps every 15 s;
* in-flight work counts (KEDA's LLEN sees only the waiting list);
* scale-down waits out a stabilisation window (the highest recommendation in it wins, like
  HPA's), moves in bounded steps, and reaches zero only after real idleness, measured from the
  last task activity rather than the last poll;
* missing or stale data never scales anything down;
* a fleet at zero wakes ahead of its queues' next scheduled tick (``schedule_lead_s``, long
  enough for a pod to start) and stays up until a worker has claimed that tick, or for at most
  ``schedule_hold_s`` after it: schedules run whether or not tasks keep a worker up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class Policy:
    """``Worker.spec.autoscaling``, in seconds."""

    min_replicas: int = 0
    max_replicas: int = 10
    target_per_replica: int = 20
    """Waiting + in-flight tasks one replica should hold (KEDA's ``listLength``)."""
    target_wait_s: float | None = None
    """Size the fleet so the oldest waiting task starts within this (needs measured throughput)."""
    activation_threshold: int = 0
    """Waiting tasks above which a fleet at zero wakes up (KEDA's activation)."""
    scale_to_zero_after_s: float = 300.0
    stabilization_s: float = 45.0
    """Scale-down window: the highest recommendation seen in it is what the fleet shrinks to."""
    max_scale_down_step: int | None = None
    poll_s: float = 2.0
    schedule_lead_s: float = 60.0
    """Wake the fleet this long before a scheduled tick is due: a pod's start-up (image pull,
    imports, readiness), so a worker is there to claim the tick on time."""
    schedule_hold_s: float = 300.0
    """Keep a woken fleet up at most this long after a tick no worker has claimed (a pod
    that cannot start, a code schedule no longer in the code), so a tick never pins it up."""

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True, slots=True)
class ScheduledTick:
    """The earliest tick of the fleet's schedules that no worker has claimed yet."""

    schedule: str
    queue: str
    in_s: float
    """Seconds until it is due (Redis's clock); negative once due and still unclaimed."""
    due_at: float | None = None
    """When it is due, epoch seconds (Redis's clock), for saying so ("at 03:00" UTC)."""
    expected_tasks: int = 0
    """How many tasks its last runs produced (0: not known yet): how many replicas to warm."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the operator measured this tick. Rates in tasks/s, times in seconds."""

    now: float
    waiting: int
    in_flight: int
    current_replicas: int
    ready_replicas: int
    delayed_due_soon: int = 0
    oldest_wait_s: float = 0.0
    arrival_rate: float = 0.0
    completion_rate: float = 0.0
    fresh: bool = True
    """False when Redis could not be read this tick: then nothing moves."""
    next_tick: ScheduledTick | None = None
    """The next unclaimed scheduled tick of the fleet's queues, if any."""
    startup_s: float | None = None
    """Measured pod start-up (created → ready), recent median; None until one was seen. The
    lead before a scheduled tick is taken from it rather than a constant."""


@dataclass(frozen=True, slots=True)
class State:
    """What the policy remembers between ticks (kept by the caller, returned anew each tick)."""

    recommendations: tuple[tuple[float, int], ...] = ()
    per_replica_rate: float | None = None
    """Smoothed completions per second per ready replica, measured while there was work."""
    last_activity: float | None = None
    """When the queue last had work or progress; idleness for scale-to-zero counts from here."""


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason: str
    state: State = field(default_factory=State)


def policy_from_spec(autoscaling: dict[str, Any]) -> Policy:
    """``Worker.spec.autoscaling`` (camelCase, as in the CRD) as a Policy."""
    return Policy(
        min_replicas=int(autoscaling.get("minReplicas", 0)),
        max_replicas=int(autoscaling.get("maxReplicas", 10)),
        target_per_replica=int(autoscaling.get("targetPerReplica", 20)),
        target_wait_s=autoscaling.get("targetWaitSeconds"),
        activation_threshold=int(autoscaling.get("activationThreshold", 0)),
        scale_to_zero_after_s=float(autoscaling.get("scaleToZeroAfterSeconds", 300)),
        stabilization_s=float(autoscaling.get("scaleDownStabilizationSeconds", 45)),
        max_scale_down_step=autoscaling.get("maxScaleDownStep"),
        poll_s=float(autoscaling.get("pollSeconds", 2)),
        schedule_lead_s=float(autoscaling.get("scheduleLeadSeconds", 60)),
    )


RATE_SMOOTHING = 0.3
"""Weight of the newest per-replica throughput sample (an EWMA: steady, yet quick to learn)."""


def decide(policy: Policy, snap: Snapshot, state: State | None = None) -> Decision:
    """The replicas the fleet should have now, and a sentence saying why."""
    state = state or State()
    current = snap.current_replicas
    if not snap.fresh:
        return Decision(current, f"no fresh measurement: holding {current}", state)

    ready_work = snap.waiting + snap.delayed_due_soon
    busy = ready_work + snap.in_flight > 0
    progressing = snap.completion_rate > 0 or snap.arrival_rate > 0
    wake = _schedule_wake(policy, snap.next_tick)
    # A wake counts as activity: once its tick is claimed, the fleet idles from here, then sleeps.
    active = busy or progressing or wake is not None
    state = replace(state, last_activity=snap.now if active else state.last_activity)
    state = _learn_rate(state, snap)

    if current == 0 and ready_work <= policy.activation_threshold and snap.in_flight == 0:
        floor = policy.min_replicas
        if wake is not None:
            woken = policy.clamp(1)
            return Decision(woken, f"{wake} → {woken}", _remember(state, snap.now, woken, policy))
        reason = (
            f"{ready_work} waiting ≤ activation threshold {policy.activation_threshold}"
            if ready_work
            else "idle"
        )
        return Decision(floor, f"{reason} → {floor}", _remember(state, snap.now, floor, policy))

    wanted, why = _needed(policy, snap, state)
    if not busy:
        idle_for = snap.now - (state.last_activity if state.last_activity is not None else snap.now)
        if wake is None and policy.min_replicas == 0 and idle_for >= policy.scale_to_zero_after_s:
            return Decision(
                0,
                f"idle for {idle_for:.0f}s ≥ {policy.scale_to_zero_after_s:.0f}s → 0",
                _remember(state, snap.now, 0, policy),
            )
        wanted = max(wanted, 1 if current > 0 or wake is not None else 0)
        why = wake or f"idle for {idle_for:.0f}s (zero after {policy.scale_to_zero_after_s:.0f}s)"
    target = policy.clamp(wanted)
    state = _remember(state, snap.now, target, policy)

    if target >= current:
        return Decision(target, f"{why} → {target}", state)
    # Scale down: the highest recommendation in the window, then a bounded step.
    window_high = max(r for _, r in state.recommendations)
    shrink_to = max(target, window_high)
    if policy.max_scale_down_step is not None:
        shrink_to = max(shrink_to, current - policy.max_scale_down_step)
    shrink_to = min(shrink_to, current)
    if shrink_to == current:
        return Decision(
            current,
            f"{why} → {target}, held at {current} for the "
            f"{policy.stabilization_s:.0f}s stabilisation window",
            state,
        )
    return Decision(shrink_to, f"{why} → {shrink_to}", state)


def _schedule_wake(policy: Policy, tick: ScheduledTick | None) -> str | None:
    """Why the fleet must be up for a scheduled tick, or None: the tick is due within the
    lead, or due and unclaimed for less than the hold."""
    if tick is None or not -policy.schedule_hold_s <= tick.in_s <= policy.schedule_lead_s:
        return None
    what = f"schedule {tick.schedule} on {tick.queue}"
    if tick.in_s > 0:
        return f"{what} due in {_seconds(tick.in_s)}"
    return f"{what} due {_seconds(-tick.in_s)} ago, not claimed yet"


def _seconds(s: float) -> str:
    whole = max(0, math.ceil(s))
    return f"{whole}s" if whole < 60 else f"{whole // 60}m {whole % 60}s"


def _needed(policy: Policy, snap: Snapshot, state: State) -> tuple[int, str]:
    """Replicas the work needs: by backlog per replica, and by throughput for the latency
    target. The larger wins."""
    backlog = snap.waiting + snap.delayed_due_soon + snap.in_flight
    by_backlog = math.ceil(backlog / policy.target_per_replica)
    parts = [f"{snap.waiting} waiting", f"{snap.in_flight} in flight"]
    if snap.arrival_rate:
        parts.append(f"{snap.arrival_rate:.1f}/s arriving")
    wanted = by_backlog
    rate = state.per_replica_rate
    if rate:
        parts.append(f"{rate:.1f}/s per replica")
        sustain = math.ceil(snap.arrival_rate / rate) if snap.arrival_rate else 0
        wanted = max(wanted, sustain)
        if policy.target_wait_s:
            drain = (
                snap.arrival_rate + (snap.waiting + snap.delayed_due_soon) / policy.target_wait_s
            )
            wanted = max(wanted, math.ceil(drain / rate))
            if snap.oldest_wait_s > policy.target_wait_s:
                parts.append(f"oldest waited {snap.oldest_wait_s:.1f}s > {policy.target_wait_s:g}s")
                wanted = max(wanted, snap.current_replicas + 1)
    return wanted, ", ".join(parts)


def _learn_rate(state: State, snap: Snapshot) -> State:
    """Per-replica throughput, learned only while tasks were waiting: then every ready slot is
    busy (workers pull whenever a slot frees), so completions measure capacity. A fleet with
    free slots completes what arrives, which says nothing about what it could do."""
    saturated = snap.waiting > 0
    if snap.ready_replicas <= 0 or snap.completion_rate <= 0 or not saturated:
        return state
    sample = snap.completion_rate / snap.ready_replicas
    old = state.per_replica_rate
    rate = sample if old is None else old + RATE_SMOOTHING * (sample - old)
    return replace(state, per_replica_rate=rate)


def _remember(state: State, now: float, replicas: int, policy: Policy) -> State:
    keep = tuple((t, r) for t, r in state.recommendations if now - t < policy.stabilization_s)
    return replace(state, recommendations=(*keep, (now, replicas)))
