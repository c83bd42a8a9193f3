"""The operator's configuration: read from ``SHOAL_OPERATOR_*`` once, documented here only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from shoal.settings import Settings


@dataclass(frozen=True)
class OperatorSettings:
    """What the operator needs beyond the custom resources themselves."""

    namespaces: tuple[str, ...] = ()
    """Namespaces to watch (``SHOAL_OPERATOR_NAMESPACES``, comma-separated); empty: all."""

    poll_s: float = 5.0
    """How often each Queue is measured into its status (``SHOAL_OPERATOR_POLL``, seconds).
    The measurement is O(1) in Redis, so a few seconds is cheap even for many queues."""

    retry_delay_s: float = 15.0
    """How long before retrying a resource whose reference is missing or whose Redis is down
    (``SHOAL_OPERATOR_RETRY_DELAY``, seconds): slow enough never to hammer the API, fast
    enough that fixing the reference feels immediate."""

    otlp_endpoint: str = ""
    """OTLP endpoint given to every worker pod as ``OTEL_EXPORTER_OTLP_ENDPOINT``
    (``SHOAL_OPERATOR_OTLP_ENDPOINT``; e.g. ``http://jaeger-collector:4318``). Empty: no tracing."""

    health_port: int = 8080
    """Port of the worker pods' /livez and /readyz (``SHOAL_OPERATOR_WORKER_HEALTH_PORT``)."""

    metrics_port: int = 9100
    """Port of the worker pods' Prometheus /metrics (``SHOAL_OPERATOR_WORKER_METRICS_PORT``)."""

    default_timeout_s: int = 300
    """Task timeout assumed for a queue that declares none (matches the runtime's default)."""

    liveness_port: int = 8081
    """The operator's own liveness endpoint (``SHOAL_OPERATOR_LIVENESS_PORT``), /healthz."""

    operator_metrics_port: int = 9100
    """The operator's own Prometheus /metrics and its /readyz (``SHOAL_OPERATOR_METRICS_PORT``;
    0: not served). 9100 as the worker pods': the operator runs in a pod of its own."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ
        names = env.get("SHOAL_OPERATOR_NAMESPACES", "")
        return cls(
            namespaces=tuple(n.strip() for n in names.split(",") if n.strip()),
            poll_s=float(env.get("SHOAL_OPERATOR_POLL", cls.poll_s)),
            retry_delay_s=float(env.get("SHOAL_OPERATOR_RETRY_DELAY", cls.retry_delay_s)),
            otlp_endpoint=env.get("SHOAL_OPERATOR_OTLP_ENDPOINT", ""),
            health_port=int(env.get("SHOAL_OPERATOR_WORKER_HEALTH_PORT", cls.health_port)),
            metrics_port=int(env.get("SHOAL_OPERATOR_WORKER_METRICS_PORT", cls.metrics_port)),
            liveness_port=int(env.get("SHOAL_OPERATOR_LIVENESS_PORT", cls.liveness_port)),
            operator_metrics_port=int(
                env.get("SHOAL_OPERATOR_METRICS_PORT", cls.operator_metrics_port)
            ),
        )


TRACING_ENV_PREFIX = "OTEL_"
"""The operator's own spans (one per autoscaling decision) are exported as the runtime's are:
configured only by the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``…); the chart sets the first two."""


def tracing_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The runtime Settings that decide the operator's tracing: from the ``OTEL_*`` variables
    only (the operator has no ``SHOAL_*`` runtime settings of its own to read)."""
    env = os.environ if environ is None else environ
    return Settings.from_env({k: v for k, v in env.items() if k.startswith(TRACING_ENV_PREFIX)})
