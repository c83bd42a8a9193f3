"""The worker Deployment, built from a Worker and its Queues: the one place that knows what a
Shoal worker pod looks like in Kubernetes. Pure functions; the handlers do the I/O."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shoal_operator.redis_target import RedisTarget
from shoal_operator.settings import OperatorSettings

MANAGED_BY = "shoal-operator"
WORKER_LABEL = "shoal.dev/worker"
HARD_TIMEOUT_GRACE_S = 5
"""The runtime's SHOAL_HARD_TIMEOUT_GRACE default: a stuck task's process is replaced after it."""
KILL_MARGIN_S = 10
"""The supervisor kills children this long after the grace period; Kubernetes waits a bit more."""
UID = 10001
"""The non-root user of the Shoal image."""


@dataclass(frozen=True, slots=True)
class QueueRef:
    """A Queue the Worker consumes: its name, where it lives, its task timeout."""

    name: str
    target: RedisTarget
    timeout_s: float | None


def labels(worker: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "shoal-worker",
        "app.kubernetes.io/instance": worker,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        WORKER_LABEL: worker,
    }


def selector(worker: str) -> str:
    """The label selector of a Worker's pods, as the /scale subresource reports it."""
    return f"{WORKER_LABEL}={worker}"


def shutdown_grace_s(
    spec: dict[str, Any], queues: Sequence[QueueRef], settings: OperatorSettings
) -> int:
    """How long a stopping pod lets tasks finish: the spec's, else the largest queue timeout."""
    if spec.get("shutdownGraceSeconds"):
        return int(spec["shutdownGraceSeconds"])
    timeouts = [q.timeout_s or settings.default_timeout_s for q in queues]
    return math.ceil(max(timeouts, default=settings.default_timeout_s))


def termination_grace_s(shutdown_grace: int) -> int:
    """Kubernetes' terminationGracePeriodSeconds: the drain, the hard timeout, and a margin, so
    the kubelet's SIGKILL never lands before the worker handed back what it held."""
    return shutdown_grace + HARD_TIMEOUT_GRACE_S + KILL_MARGIN_S


RECYCLING_ENV = {
    "maxTasksPerProcess": "SHOAL_WORKER_MAX_TASKS_PER_PROCESS",
    "maxMemoryPerProcessMiB": "SHOAL_WORKER_MAX_MEMORY_PER_PROCESS_MIB",
}
"""Worker spec field → the runtime setting that recycles worker processes (0: off)."""


def recycling_env(spec: dict[str, Any]) -> list[dict[str, str]]:
    """The recycling limits the Worker sets (``shoal worker --max-*-per-process``), as env."""
    return [
        {"name": variable, "value": str(int(spec[field]))}
        for field, variable in RECYCLING_ENV.items()
        if spec.get(field)
    ]


def build(
    name: str,
    namespace: str,
    spec: dict[str, Any],
    queues: Sequence[QueueRef],
    settings: OperatorSettings,
    replicas: int,
) -> dict[str, Any]:
    """The Deployment for Worker ``name``. All ``queues`` share one Redis (checked before)."""
    grace = shutdown_grace_s(spec, queues, settings)
    target = queues[0].target
    env = [
        *target.env(),
        {"name": "SHOAL_SHUTDOWN_GRACE", "value": str(grace)},
        {"name": "OTEL_SERVICE_NAME", "value": name},
        {
            "name": "OTEL_RESOURCE_ATTRIBUTES",
            "value": f"k8s.namespace.name={namespace},k8s.deployment.name={name}",
        },
    ]
    if settings.otlp_endpoint:
        env.append({"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": settings.otlp_endpoint})
    env += recycling_env(spec)
    env += spec.get("env") or []  # the user's env last: it may override any of the above
    health = {"name": "health", "containerPort": settings.health_port}
    metrics = {"name": "metrics", "containerPort": settings.metrics_port}
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec["image"],
        "args": [
            "worker",
            spec["module"],
            "--queues",
            ",".join(q.name for q in queues),
            "--concurrency",
            str(spec.get("concurrency", 16)),
            "--processes",
            str(spec.get("processes", 1)),
            "--health-port",
            str(settings.health_port),
            "--metrics-port",
            str(settings.metrics_port),
        ],
        "env": env,
        "ports": [health, metrics],
        "livenessProbe": _probe("/livez", period=10, failures=3),
        "readinessProbe": _probe("/readyz", period=5, failures=2),
        "startupProbe": _probe("/livez", period=2, failures=30),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
        # /tmp is an emptyDir (the root fs is read-only); the Queue's TLS files, if any
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *target.volume_mounts()],
    }
    if spec.get("imagePullPolicy"):
        container["imagePullPolicy"] = spec["imagePullPolicy"]
    if spec.get("resources"):
        container["resources"] = spec["resources"]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": termination_grace_s(grace),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumes": [{"name": "tmp", "emptyDir": {}}, *target.volumes()],
    }
    for key in ("serviceAccountName", "nodeSelector", "tolerations"):
        if spec.get(key):
            pod_spec[key] = spec[key]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(name)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {WORKER_LABEL: name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": labels(name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(settings.metrics_port),
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "health"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 3,
    }


def drift(desired: Any, live: Any, path: str = "") -> list[str]:
    """Paths where ``live`` differs from ``desired``, ignoring what only the live object has
    (defaults the API server filled in). Empty: nothing to patch."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return [path or "."]
        out: list[str] = []
        for key, value in desired.items():
            out += drift(value, live.get(key), f"{path}.{key}")
        return out
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return [path]
        out = []
        for i, (d, lv) in enumerate(zip(desired, live, strict=True)):
            out += drift(d, lv, f"{path}[{i}]")
        return out
    return [] if desired == live or str(desired) == str(live) else [path]
