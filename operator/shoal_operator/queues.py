"""A Queue's status: its defaults and schedules written to Redis, what is due promoted to its
waiting list, its figures measured, its conditions.

One writer per Queue (the monitor's tick), so conditions never race."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from shoal_operator import conditions as cond
from shoal_operator import metrics
from shoal_operator.errors import ReconcileError, RedisUnreachable
from shoal_operator.kube import patch_status
from shoal_operator.redis_gateway import Connection, Reading, RedisGateway
from shoal_operator.redis_target import RedisTarget


def queue_connection(
    memo: kopf.Memo, namespace: str, name: str, spec: dict[str, Any]
) -> Connection:
    gateway: RedisGateway = memo.redis
    return gateway.connect(RedisTarget.from_queue(name, spec), memo.core, namespace)


@dataclass
class QueueMonitor:
    """Each tick (``poll_s``): write the spec's defaults to Redis when the spec changed, promote
    what came due into the waiting list, measure the queue (O(1) in Redis), and report;
    problems become conditions and one Event per transition, and the next tick tries again
    (never a crash loop)."""

    name: str
    namespace: str
    memo: kopf.Memo
    logger: kopf.Logger
    configured: int | None = None
    """The generation whose defaults are in Redis."""
    problem: str | None = ""
    """The reason last reported ("" = nothing reported yet, None = healthy)."""
    invalid_schedules: dict[str, str] = field(default_factory=dict)
    """Schedules of the configured generation that were not written, with why."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """Serialises ticks and the deletion clean-up: kopf may cancel the daemon while a tick
    runs in its thread, and that tick must not write schedules back after the clean-up."""
    gone: bool = False

    def tick(self, body: kopf.Body, spec: kopf.Spec) -> None:
        with self.lock:
            if not self.gone:
                self._tick(body, spec)

    def _tick(self, body: kopf.Body, spec: kopf.Spec) -> None:
        name, namespace, memo = self.name, self.namespace, self.memo
        generation = body["metadata"].get("generation")
        conditions = body.get("status", {}).get("conditions")
        status: dict[str, Any] = {}
        try:
            conn = queue_connection(memo, namespace, name, dict(spec))
            # Every tick, not only on a spec change: Redis may have lost them (a restart
            # without persistence, a failover to an empty replica). Only differences are written.
            defaults, rewritten = memo.redis.configure(conn, name, dict(spec))
            if rewritten:
                self.logger.info("Queue %s: defaults in Redis: %s", name, defaults or "none")
            valid, invalid, changed = memo.redis.write_schedules(conn, name, dict(spec))
            if changed:
                self.logger.info("Queue %s: %d schedule(s) written to Redis", name, len(valid))
            if invalid and (invalid != self.invalid_schedules or self.configured != generation):
                kopf.warn(body, reason="InvalidSchedule", message=_describe(invalid))
            self.invalid_schedules = invalid
            self.configured = generation
            # Before measuring: what came due since (delayed, retries, lapsed leases) is counted
            # as waiting even with no worker running, for us and for a KEDA ScaledObject.
            promoted = memo.redis.promote(conn, name)
            metrics.promoted(namespace, name, promoted.moved)
            if promoted.moved:
                self.logger.info(
                    "Queue %s: %d due delayed/retry and %d lapsed lease(s) moved to waiting",
                    name,
                    promoted.delayed,
                    promoted.recovered,
                )
            reading = memo.redis.measure(conn, namespace, name)
            runs = None
            if spec.get("schedules") or body.get("status", {}).get("schedules"):
                runs = memo.redis.schedule_runs(conn, name, int(time.time() * 1000))
        except ReconcileError as exc:
            metrics.reconciled("Queue", exc)
            if self.problem != exc.reason:
                kopf.warn(body, reason=exc.reason, message=exc.message)
                self.problem = exc.reason
            if isinstance(exc, RedisUnreachable):  # other problems say nothing about Redis
                conditions = cond.set_condition(
                    conditions, "RedisReachable", False, exc.reason, exc.message, generation
                )
            conditions = cond.set_condition(
                conditions, "Ready", False, exc.reason, exc.message, generation
            )
        else:
            metrics.reconciled("Queue")
            if self.problem:
                kopf.info(body, reason="Recovered", message="the Queue is measured again")
            self.problem = None
            status = _queue_figures(reading)
            if runs is not None:
                status["schedules"] = runs
            conditions = cond.set_condition(
                conditions, "RedisReachable", True, "Connected", "Redis answered", generation
            )
            conditions = cond.set_condition(
                conditions,
                "Ready",
                True,
                "Measured",
                "defaults written, figures current",
                generation,
            )
            status["observedGeneration"] = generation
        if self.configured is not None:
            conditions = self._schedules_condition(conditions, generation)
        status["conditions"] = conditions
        patch_status(memo, namespace, "queues", name, status, self.logger)

    def deleted(self, spec: kopf.Spec) -> None:
        """The Queue is gone: stop ticking, and remove its schedules (after any tick in
        progress, which could have written them back)."""
        with self.lock:
            self.gone = True
            remove_queue_schedules(self.memo, self.namespace, self.name, spec, self.logger)

    def _schedules_condition(self, conditions: Any, generation: int | None) -> list[Any]:
        """``SchedulesValid``: False naming each schedule that was refused, and why."""
        if self.invalid_schedules:
            return cond.set_condition(
                conditions,
                "SchedulesValid",
                False,
                "InvalidSchedule",
                _describe(self.invalid_schedules),
                generation,
            )
        return cond.set_condition(
            conditions, "SchedulesValid", True, "Written", "schedules in Redis", generation
        )


def remove_queue_schedules(
    memo: kopf.Memo, namespace: str, name: str, spec: kopf.Spec, logger: kopf.Logger
) -> None:
    """A deleted Queue's schedules leave Redis, so no worker ticks them on (code schedules
    stay). Best effort, never blocking the deletion: Redis or its Secret may be gone too."""
    if not spec.get("schedules"):
        return
    try:
        memo.redis.remove_schedules(queue_connection(memo, namespace, name, dict(spec)), name)
        logger.info("Queue %s deleted: its schedules removed from Redis", name)
    except ReconcileError as exc:
        logger.warning(
            "Queue %s deleted, but its schedules could not be removed from Redis (%s); workers "
            "tick them until their fields are deleted from the hashes {prefix}:{%s}:schedules "
            "and {prefix}:{%s}:schedule:runs",
            name,
            exc.message,
            name,
            name,
        )


def _describe(invalid: dict[str, str]) -> str:
    return (
        "; ".join(invalid.values())
        + " (each keeps its last valid version in Redis; the other schedules are running)"
    )


def _queue_figures(reading: Reading) -> dict[str, Any]:
    s = reading.stats
    return {
        "waiting": s.waiting,
        "inFlight": s.in_flight,
        "paused": s.paused,
        "delayed": s.delayed,
        "dead": s.dead,
        "completed": s.completed,
        "oldestWaitingSeconds": round(s.oldest_age_s, 3),
        "oldestWaiting": _age(s.oldest_age_s) if s.waiting else "-",
        "throughputPerSecond": round(reading.throughput, 2),
        "throughput": f"{reading.throughput:.1f}/s",
        "lastMeasured": cond.now_iso(),
    }


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"
