"""Measuring a fleet's queues for the autoscaler: one round trip for all its queues, plus
arrival and completion rates from the previous tick's counters. Used by the operator and by
``shoal dev``; the deciding is ``shoal.autoscale``'s.

A paused queue's backlog and arrivals are left out (nothing of it can run, so no replica is
added for it); what it still has in flight counts until it finishes."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from shoal.autoscale import Snapshot
from shoal.protocol import Broker, QueueStats
from shoal.rate_limit import parse_rate


@dataclass
class FleetMeter:
    """Remembers each queue's counters between ticks to turn them into rates."""

    last: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """queue → (measured at ms, enqueued, completed) at the previous tick."""
    stats: list[QueueStats] = field(default_factory=list)
    """Each queue's figures from the last tick (what a schedule's run added is read there)."""

    def snapshot(
        self, broker: Broker, queues: Sequence[str], replicas: int, ready: int
    ) -> Snapshot:
        stats = self.stats = broker.measure_many(list(queues))
        arrival = completion = 0.0
        for s in stats:
            prev = self.last.get(s.queue)
            if prev is not None and s.measured_at_ms > prev[0]:
                span_s = (s.measured_at_ms - prev[0]) / 1000
                if not s.paused:
                    arrival += max(0, s.enqueued - prev[1]) / span_s
                completion += max(0, s.completed - prev[2]) / span_s
            self.last[s.queue] = (s.measured_at_ms, s.enqueued, s.completed)
        runnable = [s for s in stats if not s.paused]
        return Snapshot(
            rate_cap=_rate_cap(runnable),
            now=time.monotonic(),
            waiting=sum(s.waiting for s in runnable),
            in_flight=sum(s.in_flight for s in stats),
            current_replicas=replicas,
            ready_replicas=ready,
            delayed_due_soon=sum(s.due_soon for s in runnable),
            oldest_wait_s=max((s.oldest_age_s for s in runnable), default=0.0),
            arrival_rate=arrival,
            completion_rate=completion,
        )


def per_second(before: QueueStats, after: QueueStats) -> dict[str, float]:
    """One queue's counter rates between two measurements (per second): ``enqueued``,
    ``completed``, ``retried`` and ``dead`` (new dead letters). A counter that went down (the
    queue's keys were deleted) counts as 0."""
    span_s = max(0.001, (after.measured_at_ms - before.measured_at_ms) / 1000)
    return {
        "enqueued": max(0, after.enqueued - before.enqueued) / span_s,
        "completed": max(0, after.completed - before.completed) / span_s,
        "retried": max(0, after.retried - before.retried) / span_s,
        "dead": max(0, after.dead_total - before.dead_total) / span_s,
    }


def _rate_cap(stats: Sequence[QueueStats]) -> float | None:
    """The starts per second the queues with work allow in all, when each has a rate limit."""
    busy = [s for s in stats if s.waiting or s.due_soon or s.in_flight]
    if not busy or any(s.rate_limit is None for s in busy):
        return None
    return sum(parse_rate(s.rate_limit, f"queue {s.queue!r}").per_second for s in busy)


def in_flight_by_instance(broker: Broker) -> dict[str, int]:
    """Tasks in flight per worker instance (pod), from the live registrations."""
    out: dict[str, int] = {}
    for w in broker.workers():
        out[w.host] = out.get(w.host, 0) + w.in_flight
    return out
