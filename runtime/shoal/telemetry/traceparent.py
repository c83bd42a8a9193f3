"""The producer's span context in a message's headers, read and written without the propagator
machinery.

A worker reads one ``traceparent`` per task, and the global propagator's ``extract`` costs more
than the rest of a lean span; a producer writes one per send (:func:`carried`). A header in
the one form every W3C propagator writes (``00-<32 hex>-<16 hex>-<2 hex>``, lowercase, alone
in the headers) is read here with one regex; anything else (``tracestate``, ``baggage``, another
version, spaces, an invalid value, or a global propagator that is not W3C trace context) goes
to ``opentelemetry.propagate.extract``, so the answer is always the one the SDK gives. Imports
no OpenTelemetry until that fallback.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from shoal.telemetry.api import otel

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanContext, TraceState

_fullmatch = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}").fullmatch
_W3C_FIELDS = frozenset({"traceparent", "tracestate", "baggage"})
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


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
    """What the global propagator is (re-checked when the app installs another one): whether
    it reads ``traceparent`` the W3C way, and whether it is only OpenTelemetry's own W3C
    propagators (so what it writes is known exactly)."""

    textmap: object = None
    w3c: bool = False
    plain: bool = False
    get: Callable[[], TextMapPropagator] | None = None


def _refresh() -> None:
    get_textmap = _Textmap.get
    if get_textmap is None:  # imported once: an import statement per message costs as much
        from opentelemetry import propagate  # as the rest of an unsampled message

        get_textmap = _Textmap.get = propagate.get_global_textmap
    textmap = get_textmap()
    if textmap is not _Textmap.textmap:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        fields = set(textmap.fields)
        _Textmap.w3c = (
            type(textmap) in (CompositePropagator, TraceContextTextMapPropagator)
            and "traceparent" in fields
            and fields <= _W3C_FIELDS
        )
        members = getattr(textmap, "_propagators", [textmap])
        _Textmap.plain = _Textmap.w3c and all(
            type(m) in (TraceContextTextMapPropagator, W3CBaggagePropagator) for m in members
        )
        _Textmap.textmap = textmap


def _w3c_textmap() -> bool:
    _refresh()
    return _Textmap.w3c


def simple(headers: Any) -> str | None:
    """The ``traceparent`` of ``headers`` when it is alone there, in the strict form, with a
    valid span id, and the global propagator is W3C's; else None (then :func:`remote_parent`
    reads the headers). The caller checks that the trace id is not zero. The lean path parses
    only the parts it needs."""
    if len(headers) != 1:
        return None
    value = headers.get("traceparent")
    if (
        type(value) is not str
        or len(value) != 55
        or _fullmatch(value) is None
        or value[36:52] == _ZERO_SPAN
    ):
        return None
    get_textmap = _Textmap.get  # _w3c_textmap's cache read inline: this runs per message
    if get_textmap is not None and get_textmap() is _Textmap.textmap:
        return value if _Textmap.w3c else None
    return value if _w3c_textmap() else None


def carried(span: Span) -> dict[str, str]:
    """The headers the global propagator writes for the current context, whose span is
    ``span``: a ``traceparent`` formatted here when that is all it would write (only
    OpenTelemetry's W3C propagators, a valid span context without ``tracestate``, nothing but
    the span in the context: no baggage), else what ``propagate.inject`` writes."""
    context = span.get_span_context()
    _refresh()
    if (
        _Textmap.plain
        and context.is_valid
        and not context.trace_state
        and len(otel().get_current()) == 1
    ):
        trace_id, span_id, flags = context.trace_id, context.span_id, context.trace_flags
        return {"traceparent": f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"}
    return _injected()


def _injected() -> dict[str, str]:
    """What the global propagator writes for the current context."""
    from opentelemetry import propagate

    headers: dict[str, str] = {}
    propagate.inject(headers)
    return headers


def remote_parent(headers: Any) -> Parent | None:
    """The valid span context ``headers`` carry, or None (no parent: the span is a root)."""
    if not headers:
        return None
    value = simple(headers)
    if value is not None and value[3:35] != _ZERO_TRACE:
        return Parent(int(value[3:35], 16), int(value[36:52], 16), int(value[53:55], 16))
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
    api = otel()
    return api.span_context(
        parent.trace_id,
        parent.span_id,
        is_remote=True,
        trace_flags=api.flags(parent.flags),
        trace_state=parent.trace_state,
    )


def parent_context(parent: Parent | None, span_context: SpanContext | None) -> Context:
    """The context ``propagate.extract`` returns for ``parent``, for ``start_span(context=)``."""
    if parent is not None and parent.extracted is not None:
        return parent.extracted
    api = otel()
    if span_context is None:
        return api.context()
    return api.in_context(api.non_recording(span_context), api.context())
