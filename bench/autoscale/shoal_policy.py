"""Shoal's policy (``shoal.autoscale.decide``), driven as the operator drives it.

Every ``poll_s`` (2 s) it gets the Snapshot the operator's FleetMeter would measure: waiting,
in flight (draining pods included: their tasks are still in flight in Redis), the Deployment's
replicas (created, starting included, draining excluded) and ready replicas, the oldest wait,
and arrival / completion rates over the last poll (0 on the first, as FleetMeter's are), the
measured pod start-up (median of the last pods' created → ready, None before the first is
ready, as the operator measures it from readiness timestamps), and the next scheduled tick of
the trace, if it has any (due in / due at, and the size of that schedule's previous run).

Settings, chosen to be the same sizing rule as the KEDA model's: ``targetPerReplica`` 9, i.e.
KEDA's ``listLength`` 5 waiting per replica plus the 4 tasks a replica runs (Shoal counts
waiting + in flight, LLEN counts waiting only). The other settings are the CRD's defaults
(minReplicas 0, stabilisation 60 s, zero after 300 s idle, poll 2 s), maxReplicas is the
simulator's (100), and ``targetWaitSeconds`` is unset unless ``--target-wait`` is given.

Scale-in removes pods as the ReplicaSet does with the operator's pod-deletion-cost (each pod's
tasks in flight): not-ready first, then the least busy, then the most recently ready. A busy pod
drains: it stops pulling and finishes what it holds before it goes (counted in worker-seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from shoal.autoscale import Policy, ScheduledTick, Snapshot, State, decide

from .simulator import Fleet, Pod, Tick, Workload

EPS = 1e-6
EPOCH_S = 1_767_225_600.0
"""The simulation's t = 0 on the Redis clock: 2026-01-01 00:00 UTC (for "due at HH:MM")."""


def equivalent_policy(workload: Workload, target_wait_s: float | None = None) -> Policy:
    return Policy(
        min_replicas=0,
        max_replicas=workload.max_replicas,
        target_per_replica=5 + workload.concurrency,
        target_wait_s=target_wait_s,
        poll_s=2.0,
    )  # everything else at the Worker CRD's defaults (stabilisation 45 s, zero after 300 s)


@dataclass
class ShoalController:
    policy: Policy
    drains: bool = True
    state: State | None = None
    next_poll: float = 0.0
    last: tuple[float, int, int] | None = None
    """(time, arrived, completed) at the previous poll, for the rates."""
    reasons: list[tuple[float, int, str]] = field(default_factory=list)
    """Decisions that changed the replicas: (time, replicas, reason), for --explain."""

    def tick(self, now: float, fleet: Fleet) -> int | None:
        if now + EPS < self.next_poll:
            return None
        self.next_poll += self.policy.poll_s
        arrival = completion = 0.0
        if self.last is not None and now > self.last[0]:
            span = now - self.last[0]
            arrival = (fleet.arrived - self.last[1]) / span
            completion = (fleet.completed - self.last[2]) / span
        self.last = (now, fleet.arrived, fleet.completed)
        tick = fleet.next_tick(now)
        upcoming = tuple(self._told(t, now) for t in fleet.upcoming_ticks(now))
        snap = Snapshot(
            now=now,
            waiting=fleet.waiting,
            in_flight=fleet.in_flight,
            current_replicas=fleet.replicas,
            ready_replicas=fleet.ready,
            oldest_wait_s=fleet.oldest_wait(now),
            arrival_rate=arrival,
            completion_rate=completion,
            next_tick=None if tick is None else self._told(tick, now),
            upcoming_ticks=upcoming,
            startup_s=fleet.startup_s,
        )
        decision = decide(self.policy, snap, self.state)
        self.state = decision.state
        if decision.replicas != snap.current_replicas:
            self.reasons.append((now, decision.replicas, decision.reason))
        return decision.replicas

    @staticmethod
    def _told(tick: Tick, now: float) -> ScheduledTick:
        return ScheduledTick(
            schedule=tick.schedule,
            queue="default",
            in_s=tick.second - now,
            due_at=EPOCH_S + tick.second,
            expected_tasks=tick.expected,
        )

    def victims(self, pods: Sequence[Pod], count: int) -> list[Pod]:
        ranked = sorted(pods, key=lambda p: (p.ready, p.running, -p.ready_step))
        return ranked[:count]
