"""OpenTelemetry's API as Shoal's per-send and per-task code uses it, looked up once.

An ``import`` statement inside a function runs the import machinery on every call (several
thousand instructions, more than what a span hook does besides), so the hooks and the header
helpers take what they need from :func:`otel`, imported on its first call: never when tracing
is off.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry.context import Context
    from opentelemetry.trace import (
        Link,
        NonRecordingSpan,
        Span,
        SpanContext,
        SpanKind,
        StatusCode,
        TraceFlags,
    )


class OtelApi(NamedTuple):
    attach: Callable[[Context], Token[Context]]
    detach: Callable[[Token[Context]], None]
    get_current: Callable[[], Context]
    current_span: Callable[[], Span]
    in_context: Callable[..., Context]
    """``trace.set_span_in_context(span, context=None)``."""
    context: type[Context]
    span_context: type[SpanContext]
    flags: type[TraceFlags]
    non_recording: type[NonRecordingSpan]
    link: type[Link]
    producer: SpanKind
    consumer: SpanKind
    error: StatusCode


@functools.cache
def otel() -> OtelApi:
    """OpenTelemetry's API, imported on the first call."""
    from opentelemetry import context, trace

    return OtelApi(
        attach=context.attach,
        detach=context.detach,
        get_current=context.get_current,
        current_span=trace.get_current_span,
        in_context=trace.set_span_in_context,
        context=context.Context,
        span_context=trace.SpanContext,
        flags=trace.TraceFlags,
        non_recording=trace.NonRecordingSpan,
        link=trace.Link,
        producer=trace.SpanKind.PRODUCER,
        consumer=trace.SpanKind.CONSUMER,
        error=trace.StatusCode.ERROR,
    )
