"""The operator's configuration: read from ``SHOAL_OPERATOR_*`` once, documented here only."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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

    leader_election: bool = False
    """Elect one leader among the operator's replicas on a ``coordination.k8s.io/v1`` Lease
    (``SHOAL_OPERATOR_LEADER_ELECTION``; the chart turns it on and runs 2 replicas). Only the
    leader runs the handlers; a standby waits for the Lease, so a node loss stops
    autoscaling for about :attr:`lease_duration_s`. Off: this process is the only operator."""

    lease_name: str = "shoal-operator"
    """The Lease's name (``SHOAL_OPERATOR_LEASE_NAME``; the chart: ``<fullname>-operator``)."""

    lease_namespace: str = "default"
    """The Lease's namespace (``SHOAL_OPERATOR_LEASE_NAMESPACE``); unset: the pod's own (its
    service account's namespace file), else ``default``."""

    identity: str = ""
    """This replica's name in the Lease's ``holderIdentity`` (``SHOAL_OPERATOR_POD_NAME``, the
    pod's name from the downward API); unset: ``<hostname>_<pid>``."""

    lease_duration_s: float = 15.0
    """How long a standby waits, by its own clock, after it last saw the Lease change before it
    takes the Lease over (``SHOAL_OPERATOR_LEASE_DURATION``, seconds; client-go's
    ``LeaseDuration``). The upper bound of a takeover after a node loss."""

    renew_deadline_s: float = 10.0
    """A leader that could not renew for this long stops (``SHOAL_OPERATOR_LEASE_RENEW_DEADLINE``,
    seconds; client-go's ``RenewDeadline``). Shorter than the lease, so it has stopped before
    any standby may take over, whatever the two nodes' clocks say."""

    retry_period_s: float = 2.0
    """How often the leader renews and a standby tries (``SHOAL_OPERATOR_LEASE_RETRY_PERIOD``,
    seconds; client-go's ``RetryPeriod``)."""

    def __post_init__(self) -> None:
        if self.leader_election and not (
            self.lease_duration_s > self.renew_deadline_s > 1.2 * self.retry_period_s > 0
        ):
            raise ValueError(
                "leader election needs SHOAL_OPERATOR_LEASE_DURATION "
                f"({self.lease_duration_s:g}s) > SHOAL_OPERATOR_LEASE_RENEW_DEADLINE "
                f"({self.renew_deadline_s:g}s) > 1.2 x SHOAL_OPERATOR_LEASE_RETRY_PERIOD "
                f"({self.retry_period_s:g}s) > 0; e.g. 15, 10 and 2 (the defaults)"
            )

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
            leader_election=_yes(env, "SHOAL_OPERATOR_LEADER_ELECTION", cls.leader_election),
            lease_name=env.get("SHOAL_OPERATOR_LEASE_NAME") or cls.lease_name,
            lease_namespace=env.get("SHOAL_OPERATOR_LEASE_NAMESPACE") or _own_namespace(),
            identity=env.get("SHOAL_OPERATOR_POD_NAME") or f"{socket.gethostname()}_{os.getpid()}",
            lease_duration_s=float(env.get("SHOAL_OPERATOR_LEASE_DURATION", cls.lease_duration_s)),
            renew_deadline_s=float(
                env.get("SHOAL_OPERATOR_LEASE_RENEW_DEADLINE", cls.renew_deadline_s)
            ),
            retry_period_s=float(env.get("SHOAL_OPERATOR_LEASE_RETRY_PERIOD", cls.retry_period_s)),
        )


SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def _own_namespace() -> str:
    """The pod's namespace, as its service account token's mount states it; else default."""
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or OperatorSettings.lease_namespace
    except OSError:
        return OperatorSettings.lease_namespace


def _yes(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in {"1", "true", "yes", "on"} | {"0", "false", "no", "off"}:
        return raw in {"1", "true", "yes", "on"}
    raise ValueError(f"environment variable {name}={raw!r} is not a yes or a no; set true or false")


TRACING_ENV_PREFIX = "OTEL_"
"""The operator's own spans (one per autoscaling decision) are exported as the runtime's are:
configured only by the standard variables (``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``…); the chart sets the first two."""


def tracing_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """The runtime Settings that decide the operator's tracing: from the ``OTEL_*`` variables
    only (the operator has no ``SHOAL_*`` runtime settings of its own to read)."""
    env = os.environ if environ is None else environ
    return Settings.from_env({k: v for k, v in env.items() if k.startswith(TRACING_ENV_PREFIX)})
