"""The OpenTelemetry SDK of a traced row's producer and of Celery's traced workers.

Imported only when the harness traces the row (``BENCH_TRACING=1``); everything else comes from
the standard ``OTEL_*`` variables it sets: the sampler (``OTEL_TRACES_SAMPLER[_ARG]``) and the
receiver (``OTEL_EXPORTER_OTLP_ENDPOINT``). It is what Shoal's workers set up for themselves from
those variables (``shoal.telemetry.configure``): an SDK ``TracerProvider``, a
``BatchSpanProcessor`` at its defaults and the OTLP/HTTP span exporter, so the traced rows pay
for the same exporter on both sides and for both peers.
"""

from __future__ import annotations

import os
from typing import Any


def enabled() -> bool:
    return os.environ.get("BENCH_TRACING") == "1"


def install(service_name: str) -> Any:
    """Install and return the global SDK tracer provider."""
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    return provider


def producer_provider() -> Any:
    """The producer's provider when this row is traced, else None (nothing imported)."""
    return install("bench-producer") if enabled() else None


def shutdown(provider: Any) -> None:
    """Flush the last batch (a producer's spans must reach the receiver before it exits)."""
    if provider is not None:
        provider.shutdown()
