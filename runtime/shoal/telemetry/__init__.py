"""OpenTelemetry setup for worker processes, from the standard ``OTEL_*`` variables only.

Pointing workers at Jaeger is one variable: ``OTEL_EXPORTER_OTLP_ENDPOINT``. An application
that configured its own tracer provider keeps it; with nothing configured, OpenTelemetry is not
even imported and tracing costs nothing.

When Shoal sets tracing up itself over OTLP/HTTP (the default protocol) with one of the standard
samplers, consumer spans take a lean path (:mod:`shoal.telemetry.spans`, :mod:`.otlp`,
:mod:`.export`): same spans, same attributes, a fraction of the SDK's CPU. Any other set-up (an
app's own provider, gRPC, a custom sampler, a span processor added later) keeps the SDK's path.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from shoal.version import __version__

if TYPE_CHECKING:
    from shoal.settings import Settings
    from shoal.telemetry.spans import ProcessSpans

log = logging.getLogger("shoal.telemetry")

TRACER_NAME = "shoal"
_CREDENTIALS_ENV = "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER"


class _Seen:
    provider_from_env: bool | None = None
    configured = False


def tracing_configured() -> bool:
    """Whether a real tracer provider is installed (by the app or by :func:`configure`).

    Never imports OpenTelemetry itself: if nothing imported it, nothing installed a provider
    (unless ``OTEL_PYTHON_TRACER_PROVIDER`` names one to load, which OpenTelemetry then does)."""
    if _Seen.configured:
        return True  # a real global provider is never replaced
    if "opentelemetry.trace" not in sys.modules:
        if _Seen.provider_from_env is None:
            _Seen.provider_from_env = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
        if not _Seen.provider_from_env:
            return False
    from opentelemetry import trace

    provider = trace.get_tracer_provider()
    _Seen.configured = not isinstance(
        provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider
    )
    return _Seen.configured


class OwnedProvider:
    """A tracer provider Shoal installed, flushed when the worker process ends."""

    def __init__(self, provider: Any) -> None:
        self.provider = provider

    @property
    def process_spans(self) -> ProcessSpans | None:
        """The lean consumer spans, when this provider can take them (else None)."""
        return getattr(self.provider, "shoal_spans", None)

    def shutdown(self) -> None:
        shutdown = getattr(self.provider, "shutdown", None)
        if shutdown is not None:
            shutdown()  # flushes the span pipeline: the last spans are not lost


def configure(
    settings: Settings, default_service_name: str = "shoal-worker"
) -> OwnedProvider | None:
    """Install an SDK tracer provider exporting over OTLP, when the environment asks for one and
    the app has none; returns it so the worker can flush it on shutdown."""
    if not settings.otel_export or tracing_configured():
        return None
    from opentelemetry import trace
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider

    class ShoalTracerProvider(TracerProvider):
        """Hands consumer spans to the lean path until someone adds a span processor of their
        own (those must see every span, so the SDK's path takes over)."""

        shoal_spans: ProcessSpans | None = None

        def add_span_processor(self, span_processor: Any) -> None:
            self.shoal_spans = None
            super().add_span_processor(span_processor)

    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name.
    resource = Resource({"service.name": default_service_name, "service.version": __version__})
    resource = resource.merge(OTELResourceDetector().detect())
    provider = ShoalTracerProvider(resource=resource)  # sampler from OTEL_TRACES_SAMPLER
    if settings.otel_protocol == "grpc" or os.environ.get(_CREDENTIALS_ENV):
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if settings.otel_protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        how = "the SDK's exporter"
    else:
        from shoal.telemetry.export import Pipeline, Sender
        from shoal.telemetry.sampling import decider_for
        from shoal.telemetry.spans import ProcessSpans

        pipeline = Pipeline(resource, Sender())
        provider.add_span_processor(pipeline)
        decider = decider_for(provider.sampler)
        if decider is not None:
            provider.shoal_spans = ProcessSpans(
                pipeline, decider, provider.id_generator, SpanLimits()
            )
        how = "lean consumer spans" if decider else f"sampler {provider.sampler.get_description()}"
    trace.set_tracer_provider(provider)
    log.info("tracing: exporting spans over OTLP (%s, %s)", settings.otel_protocol, how)
    return OwnedProvider(provider)
