"""The operator's own Prometheus metrics and its readiness, served on one port
(``SHOAL_OPERATOR_METRICS_PORT``): ``/metrics`` and ``/readyz``.

The families live in a registry of their own (:data:`REGISTRY`), not the process default, so
they never mix with a worker's. Names start with ``shoal_operator_``, as the worker's start
with ``shoal_``. Per-resource series carry ``resource_namespace`` (not ``namespace``, which
Prometheus sets to the operator pod's own namespace when it scrapes)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from kubernetes import client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

log = logging.getLogger("shoal_operator.metrics")

REGISTRY = CollectorRegistry()

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

RECONCILES = Counter(
    "shoal_operator_reconciles",
    "Reconciliations of Queues and Workers by result (ok, error)",
    ["kind", "result"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "shoal_operator_reconcile_errors",
    "Failed reconciliations by reason (the condition's reason, or the exception's type)",
    ["kind", "reason"],
    registry=REGISTRY,
)
API_LATENCY = Histogram(
    "shoal_operator_api_request_duration_seconds",
    "Kubernetes API calls made by the operator's handlers (not kopf's own watches)",
    ["method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
REDIS_LATENCY = Histogram(
    "shoal_operator_redis_measure_duration_seconds",
    "Measuring a Queue (its status) or a Worker's queues (its autoscaler) in Redis",
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
DECISIONS = Counter(
    "shoal_operator_autoscale_decisions",
    "Autoscaling decisions by direction (up, down, hold)",
    ["resource_namespace", "worker", "direction"],
    registry=REGISTRY,
)
DESIRED = Gauge(
    "shoal_operator_worker_desired_replicas",
    "Replicas the operator wants for a Worker (its status.desiredReplicas)",
    ["resource_namespace", "worker"],
    registry=REGISTRY,
)
CURRENT = Gauge(
    "shoal_operator_worker_current_replicas",
    "Pods of a Worker's Deployment when last read (its status.replicas)",
    ["resource_namespace", "worker"],
    registry=REGISTRY,
)
PROMOTED = Counter(
    "shoal_operator_promoted_messages",
    "Due delayed messages, retries and lapsed leases moved to a queue's waiting list",
    ["resource_namespace", "queue"],
    registry=REGISTRY,
)
LEADER = Gauge(
    "shoal_operator_leader",
    "1 while this replica leads (runs the handlers), 0 while it stands by for the Lease",
    registry=REGISTRY,
)


def leading(yes: bool) -> None:
    """This replica became the leader (or runs alone), or stands by."""
    LEADER.set(1 if yes else 0)


def reconciled(kind: str, error: BaseException | None = None) -> None:
    """Count one reconciliation of a ``kind`` (Queue, Worker); an error counts by its reason."""
    if error is None:
        RECONCILES.labels(kind, "ok").inc()
        return
    RECONCILES.labels(kind, "error").inc()
    RECONCILE_ERRORS.labels(kind, str(getattr(error, "reason", "") or type(error).__name__)).inc()


@contextlib.contextmanager
def reconciling(kind: str) -> Iterator[None]:
    """Count the block as one reconciliation: ok, or an error (re-raised)."""
    try:
        yield
    except Exception as exc:
        reconciled(kind, exc)
        raise
    reconciled(kind)


def decided(namespace: str, worker: str, scaled: int, desired: int, pods: int) -> None:
    """Count an autoscaling decision (its direction from the Deployment's ``scaled`` replicas
    to ``desired``) and set the Worker's replica gauges (``pods``: its status.replicas)."""
    direction = "up" if desired > scaled else "down" if desired < scaled else "hold"
    DECISIONS.labels(namespace, worker, direction).inc()
    replicas(namespace, worker, pods, desired)


def replicas(namespace: str, worker: str, pods: int, desired: int) -> None:
    DESIRED.labels(namespace, worker).set(desired)
    CURRENT.labels(namespace, worker).set(pods)


def worker_gone(namespace: str, worker: str) -> None:
    """Drop a Worker's series (its Deployment is gone, or its autoscaler stopped), so
    dashboards do not show it at its last figures."""
    for gauge in (DESIRED, CURRENT):
        with contextlib.suppress(KeyError):
            gauge.remove(namespace, worker)
    for direction in ("up", "down", "hold"):
        with contextlib.suppress(KeyError):
            DECISIONS.remove(namespace, worker, direction)


def promoted(namespace: str, queue: str, moved: int) -> None:
    PROMOTED.labels(namespace, queue).inc(moved)


@contextlib.contextmanager
def measuring_redis() -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        REDIS_LATENCY.observe(time.perf_counter() - started)


class TimedApiClient(client.ApiClient):
    """The kubernetes client's ApiClient, timing every call into
    ``shoal_operator_api_request_duration_seconds`` by HTTP method."""

    def call_api(self, *args: Any, **kwargs: Any) -> Any:
        method = _verb(args, kwargs)
        started = time.perf_counter()
        try:
            return super().call_api(*args, **kwargs)
        finally:
            API_LATENCY.labels(method).observe(time.perf_counter() - started)


_VERBS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


def _verb(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The HTTP method of a ``call_api`` call: its first argument in kubernetes >= 33, its
    second before (``resource_path, method``)."""
    for candidate in (kwargs.get("method"), *args[:2]):
        if isinstance(candidate, str) and candidate.upper() in _VERBS:
            return candidate.upper()
    return "OTHER"
