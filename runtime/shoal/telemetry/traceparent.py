"""The producer's span context in a message's headers, read without the propagator machinery.

A worker reads one ``traceparent`` per task, and the global propagator's ``extract`` costs more
than the rest of a lean span. A header in the one form every W3C propagator writes
(``00-<32 hex>-<16 hex>-<2 hex>``, lowercase, alone in the headers) is read here with one regex;
anything else (``tracestate``, ``baggage``, another version, spaces, an invalid value, or a
global propagator that is not W3C trace context) goes to ``opentelemetry.propagate.extract``, so
the answer is always the one the SDK gives. Imports no OpenTelemetry until that fallback.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanContext, TraceState

_STRICT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_W3C_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})


class Parent(NamedTuple):
    """The remote parent of a consumer span: what a W3C ``traceparent`` carries."""

    trace_id: int
    span_id: int
    flags: int
    trace_state: TraceState | None = None
    """None when the message had no ``tracestate`` (the common case)."""
    extracted: Context | None = None
    """The whole context the propagator extracted (baggage too), when it was asked."""


class _Textmap:
    """Whether the global propagator reads ``traceparent`` the W3C way (re-checked when the
    app installs another one)."""

    textmap: object = None
    w3c: bool = False


def _w3c_textmap() -> bool:
    from opentelemetry import propagate
    from opentelemetry.propagators.composite import CompositePropagator
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    textmap = propagate.get_global_textmap()
    if textmap is not _Textmap.textmap:
        fields = set(textmap.fields)
        _Textmap.w3c = (
            type(textmap) in (CompositePropagator, TraceContextTextMapPropagator)
            and "traceparent" in fields
            and fields <= _W3C_FIELDS
        )
        _Textmap.textmap = textmap
    return _Textmap.w3c


def remote_parent(headers: Any) -> Parent | None:
    """The valid span context ``headers`` carry, or None (no parent: the span is a root)."""
    if not headers:
        return None
    if len(headers) == 1:
        value = headers.get("traceparent")
        if type(value) is str and len(value) == 55:
            match = _STRICT.fullmatch(value)
            if match is not None and _w3c_textmap():
                trace_id, span_id, flags = match.groups()
                parent = Parent(int(trace_id, 16), int(span_id, 16), int(flags, 16))
                return parent if parent.trace_id and parent.span_id else None
    return _extract(headers)


def _extract(headers: Any) -> Parent | None:
    """The generic way: the global propagator, as ``propagate.extract`` does it."""
    from opentelemetry import propagate, trace

    try:
        extracted = propagate.extract(headers)
        context = trace.get_current_span(extracted).get_span_context()
    except Exception:  # e.g. a non-string header: no parent, never a failed task
        return None
    if not context.is_valid:
        return None
    state = context.trace_state if len(context.trace_state) else None
    return Parent(context.trace_id, context.span_id, int(context.trace_flags), state, extracted)


def span_context(parent: Parent) -> SpanContext:
    """The parent as the remote ``SpanContext`` the W3C propagator would have made."""
    from opentelemetry import trace

    return trace.SpanContext(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=trace.TraceFlags(parent.flags),
        trace_state=parent.trace_state,
    )


def parent_context(parent: Parent | None, span_context: SpanContext | None) -> Context:
    """The context ``propagate.extract`` returns for ``parent``, for ``start_span(context=)``."""
    from opentelemetry import trace
    from opentelemetry.context import Context

    if parent is not None and parent.extracted is not None:
        return parent.extracted
    if span_context is None:
        return Context()
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context), Context())
