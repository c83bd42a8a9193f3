"""The operator's own traces: a span per autoscaling decision (``autoscaler.traced_decision``),
exported over OTLP when the standard ``OTEL_*`` variables ask for it.

The set-up is the runtime's (:func:`shoal.telemetry.configure`): same variables, same exporter,
service name ``shoal-operator`` unless ``OTEL_SERVICE_NAME`` says otherwise. Without an
endpoint nothing is installed and the spans cost nothing."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from shoal import ConfigurationError, telemetry
from shoal.telemetry import OwnedProvider
from shoal_operator.settings import tracing_settings

SERVICE_NAME = "shoal-operator"
log = logging.getLogger("shoal_operator")


def start_tracing(environ: Mapping[str, str] | None = None) -> OwnedProvider | None:
    """Install the tracer provider (once per process); None when tracing is off or the
    process already has one (then that one gets the spans). A variable it cannot use is
    logged and tracing stays off: traces are not worth stopping the autoscaler for."""
    try:
        settings = tracing_settings(environ)
    except ConfigurationError as exc:
        log.error("tracing: off, the OTEL_* variables are refused: %s", exc)
        return None
    provider = telemetry.configure(settings, default_service_name=SERVICE_NAME)
    if provider is None:
        log.info("tracing: off (set OTEL_EXPORTER_OTLP_ENDPOINT to export decision spans)")
    return provider


def stop_tracing(provider: OwnedProvider | None) -> None:
    """Flush the spans still queued (the operator stops)."""
    if provider is not None:
        provider.shutdown()
