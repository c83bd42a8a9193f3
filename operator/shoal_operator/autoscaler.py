"""Autoscaling a Worker in the cluster: turn the policy's decision into Kubernetes changes.

Measuring is ``shoal.fleet``'s, deciding is ``shoal.autoscale``'s (both shared with
``shoal dev``); this module adds what only a cluster has: pod-deletion-cost annotations so the
idlest pods go first on scale-in, and a span per decision.
"""

from __future__ import annotations

from opentelemetry import trace

from shoal.autoscale import Decision, Policy, Snapshot, State, decide

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
tracer = trace.get_tracer("shoal_operator")


def deletion_costs(pods: list[str], in_flight: dict[str, int]) -> dict[str, int]:
    """pod name → pod-deletion-cost: its tasks in flight, so the ReplicaSet removes idle pods
    first on scale-in. A pod without a live registration (still starting) costs 0."""
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
        if snap.startup_s is not None:
            span.set_attribute("shoal.autoscale.startup_s", snap.startup_s)
        tick = snap.next_tick
        if tick is not None:
            span.set_attributes(
                {
                    "shoal.autoscale.next_tick.schedule": tick.schedule,
                    "shoal.autoscale.next_tick.queue": tick.queue,
                    "shoal.autoscale.next_tick.in_s": tick.in_s,
                    "shoal.autoscale.next_tick.expected_tasks": tick.expected_tasks,
                }
            )
            if tick.due_at is not None:
                span.set_attribute("shoal.autoscale.next_tick.due_at", tick.due_at)
        return decision
