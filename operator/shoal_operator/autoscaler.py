"""Autoscaling a Worker: measure its queues, ask the policy (``shoal.autoscale``), act.

Measuring lives in ``metrics``, deciding in ``shoal.autoscale``; this module only turns a
decision into Kubernetes changes: the Deployment's replicas, pod-deletion-cost annotations so
the idlest pods go first on scale-in, the Worker's status, an Event and a span.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from shoal.autoscale import Decision, Policy, Snapshot, State, decide
from shoal_operator.metrics import Connection, QueueMeter

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
tracer = trace.get_tracer("shoal_operator")


def policy_from_spec(autoscaling: dict[str, Any]) -> Policy:
    """``Worker.spec.autoscaling`` as a Policy (the CRD schema filled in the defaults)."""
    return Policy(
        min_replicas=int(autoscaling.get("minReplicas", 0)),
        max_replicas=int(autoscaling.get("maxReplicas", 10)),
        target_per_replica=int(autoscaling.get("targetPerReplica", 20)),
        target_wait_s=autoscaling.get("targetWaitSeconds"),
        activation_threshold=int(autoscaling.get("activationThreshold", 0)),
        scale_to_zero_after_s=float(autoscaling.get("scaleToZeroAfterSeconds", 300)),
        stabilization_s=float(autoscaling.get("scaleDownStabilizationSeconds", 60)),
        max_scale_down_step=autoscaling.get("maxScaleDownStep"),
        poll_s=float(autoscaling.get("pollSeconds", 2)),
    )


@dataclass
class FleetMeter:
    """One Worker's queues measured together, with rates from the previous tick."""

    meter: QueueMeter
    last: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """queue → (measured at ms, enqueued, completed) of the previous tick."""

    def snapshot(self, conn: Connection, queues: list[str], replicas: int, ready: int) -> Snapshot:
        app = self.meter.app(conn)
        stats = app.broker.measure_many(queues)  # one round trip for all queues
        arrival = completion = 0.0
        for s in stats:
            prev = self.last.get(s.queue)
            if prev is not None and s.measured_at_ms > prev[0]:
                span_s = (s.measured_at_ms - prev[0]) / 1000
                arrival += max(0, s.enqueued - prev[1]) / span_s
                completion += max(0, s.completed - prev[2]) / span_s
            self.last[s.queue] = (s.measured_at_ms, s.enqueued, s.completed)
        return Snapshot(
            now=time.monotonic(),
            waiting=sum(s.waiting for s in stats),
            in_flight=sum(s.in_flight for s in stats),
            current_replicas=replicas,
            ready_replicas=ready,
            delayed_due_soon=sum(s.due_soon for s in stats),
            oldest_wait_s=max((s.oldest_age_s for s in stats), default=0.0),
            arrival_rate=arrival,
            completion_rate=completion,
        )


def deletion_costs(pods: list[str], workers: list[dict[str, Any]]) -> dict[str, int]:
    """pod name → pod-deletion-cost: its tasks in flight, so the ReplicaSet removes idle pods
    first on scale-in. A pod without a live registration (still starting) costs 0."""
    in_flight: dict[str, int] = {}
    for w in workers:
        in_flight[w["host"]] = in_flight.get(w["host"], 0) + int(w.get("in_flight", 0))
    return {pod: in_flight.get(pod, 0) for pod in pods}


def traced_decision(worker: str, policy: Policy, snap: Snapshot, state: State | None) -> Decision:
    """decide(), inside a span carrying its inputs and its verdict (explainable scaling)."""
    with tracer.start_as_current_span("autoscale " + worker) as span:
        decision = decide(policy, snap, state)
        span.set_attributes(
            {
                "shoal.worker": worker,
                "shoal.autoscale.waiting": snap.waiting,
                "shoal.autoscale.in_flight": snap.in_flight,
                "shoal.autoscale.current": snap.current_replicas,
                "shoal.autoscale.desired": decision.replicas,
                "shoal.autoscale.reason": decision.reason,
            }
        )
        return decision
