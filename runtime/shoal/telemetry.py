"""OpenTelemetry setup for worker processes, from the standard ``OTEL_*`` variables only.

Pointing workers at Jaeger is one variable: ``OTEL_EXPORTER_OTLP_ENDPOINT``. An application
that configured its own tracer provider keeps it; with nothing configured, no SDK is loaded and
tracing costs nothing.
"""

from __future__ import annotations

import logging

from opentelemetry import trace
from opentelemetry.trace import NoOpTracerProvider, ProxyTracerProvider

from shoal.settings import Settings
from shoal.version import __version__

log = logging.getLogger("shoal.telemetry")

TRACER_NAME = "shoal"


def tracing_configured() -> bool:
    """Whether a real tracer provider is installed (by the app or by :func:`configure`)."""
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)


class OwnedProvider:
    """A tracer provider Shoal installed, flushed when the worker process ends."""

    def __init__(self, provider: object) -> None:
        self.provider = provider

    def shutdown(self) -> None:
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()  # flushes the batch processor: the last spans are not lost


def configure(
    settings: Settings, default_service_name: str = "shoal-worker"
) -> OwnedProvider | None:
    """Install an SDK tracer provider exporting over OTLP, when the environment asks for one and
    the app has none; returns it so the worker can flush it on shutdown."""
    if tracing_configured() or not settings.otel_export:
        return None
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    if settings.otel_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
            OTLPSpanExporter,
        )
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name.
    resource = Resource({"service.name": default_service_name, "service.version": __version__})
    resource = resource.merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    log.info("tracing: exporting spans over OTLP (%s)", settings.otel_protocol)
    return OwnedProvider(provider)
