"""Prometheus metrics of task execution, aggregated across worker processes.

Added by ``shoal worker --metrics-port``. Each worker process writes to the multiprocess
directory the supervisor created; the supervisor serves ``/metrics`` from all of them, plus the
per-queue gauges it measures in Redis at scrape time (see :mod:`shoal.metrics`).

``shoal_tasks_total{outcome}``: each execution counts once as ``ok``, ``failed``, ``timed_out`` or
``stopped`` (its lease was lost, or the shutdown grace ended: it runs again elsewhere); each
failure then counts once as ``retried`` or ``dead``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge, Histogram

from shoal.errors import TaskStopped, TaskTimeout
from shoal.middleware.base import Middleware

if TYPE_CHECKING:
    from shoal.message import Message
    from shoal.task import Task

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)


class Prometheus(Middleware):
    """Counts outcomes and observes durations and queue waits."""

    def __init__(self) -> None:
        self.tasks = Counter(
            "shoal_tasks", "Task executions and verdicts by outcome", ["queue", "task", "outcome"]
        )
        self.duration = Histogram(
            "shoal_task_duration_seconds",
            "Task execution time",
            ["queue", "task"],
            buckets=LATENCY_BUCKETS,
        )
        self.queue_wait = Histogram(
            "shoal_task_queue_wait_seconds",
            "From enqueue to the start of the first attempt",
            ["queue"],
            buckets=LATENCY_BUCKETS,
        )
        self.in_flight = Gauge(
            "shoal_tasks_in_flight", "Tasks running now", ["queue"], multiprocess_mode="livesum"
        )
        self._started: dict[str, float] = {}

    def before_process(self, task: Task[Any, Any], message: Message) -> None:
        self._started[message.id] = time.perf_counter()
        self.in_flight.labels(message.queue).inc()
        if message.attempt == 0:
            self.queue_wait.labels(message.queue).observe(
                max(0.0, time.time() - message.enqueued_at)
            )

    def after_process(
        self,
        task: Task[Any, Any],
        message: Message,
        *,
        result: Any,
        exception: BaseException | None,
    ) -> None:
        started = self._started.pop(message.id, None)
        if started is not None:
            self.duration.labels(message.queue, task.name).observe(time.perf_counter() - started)
        self.in_flight.labels(message.queue).dec()
        if exception is None:
            outcome = "ok"
        elif isinstance(exception, TaskTimeout):
            outcome = "timed_out"
        elif isinstance(exception, TaskStopped):
            outcome = "stopped"
        else:
            outcome = "failed"
        self.tasks.labels(message.queue, task.name, outcome).inc()

    def after_retry(self, task: Task[Any, Any], message: Message, delay_s: float) -> None:
        self.tasks.labels(message.queue, task.name, "retried").inc()

    def after_dead_letter(
        self, queue: str, message: Message | None, reason: str, error: BaseException
    ) -> None:
        self.tasks.labels(queue, message.task if message else "", "dead").inc()
