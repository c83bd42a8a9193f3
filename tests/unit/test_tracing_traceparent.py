"""Reading a message's trace context directly gives exactly what the SDK's propagator gives."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from shoal.telemetry.traceparent import Parent, parent_context, remote_parent, span_context

TID, SID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
VALID = f"00-{TID}-{SID}-01"

HEADERS: list[dict[str, Any]] = [
    {},
    {"traceparent": VALID},
    {"traceparent": f"00-{TID}-{SID}-00"},  # not sampled
    {"traceparent": f"00-{TID}-{SID}-03"},  # sampled, random trace id
    {"traceparent": f"00-{TID}-{SID}-ff"},
    {"traceparent": VALID.upper()},  # uppercase hex is invalid
    {"traceparent": f"00-{'0' * 32}-{SID}-01"},  # all-zero trace id
    {"traceparent": f"00-{TID}-{'0' * 16}-01"},  # all-zero span id
    {"traceparent": f"ff-{TID}-{SID}-01"},  # version ff is invalid
    {"traceparent": f"01-{TID}-{SID}-01"},  # a future version...
    {"traceparent": f"01-{TID}-{SID}-01-future"},  # ... may carry more fields
    {"traceparent": f"00-{TID}-{SID}-01-extra"},  # version 00 may not
    {"traceparent": f" {VALID} "},  # spaces around are allowed
    {"traceparent": f"00-{TID[:-1]}-{SID}-01"},  # too short
    {"traceparent": f"00-{TID}x-{SID}-01"},
    {"traceparent": f"00_{TID}_{SID}_01"},
    {"traceparent": f"00-{TID[:-1]}_-{SID}-01"},  # int(x, 16) would take an underscore
    {"traceparent": ""},
    {"traceparent": 5},  # not a string: never a failed task
    {"traceparent": None},
    {"traceparent": [VALID]},
    {"traceparent": VALID, "tracestate": "vendor=value,other=x"},
    {"traceparent": VALID, "tracestate": "not a valid tracestate"},
    {"traceparent": VALID, "baggage": "user=alice"},
    {"tracestate": "vendor=value"},  # a tracestate alone is no parent
    {"other": "header"},
    {"traceparent": VALID, "other": "header"},
]


def sdk_reading(headers: dict[str, Any]) -> Parent | None:
    """What the SDK's global propagator makes of ``headers`` (None: no valid parent)."""
    try:
        context = trace.get_current_span(propagate.extract(headers)).get_span_context()
    except Exception:
        return None
    if not context.is_valid:
        return None
    state = context.trace_state if len(context.trace_state) else None
    return Parent(context.trace_id, context.span_id, int(context.trace_flags), state)


def comparable(parent: Parent | None) -> tuple[Any, ...] | None:
    if parent is None:
        return None
    state = None if parent.trace_state is None else parent.trace_state.to_header()
    return parent.trace_id, parent.span_id, parent.flags, state


@pytest.mark.parametrize("headers", HEADERS, ids=[repr(h)[:60] for h in HEADERS])
def test_a_header_reads_as_the_sdk_reads_it(headers: dict[str, Any]) -> None:
    assert comparable(remote_parent(headers)) == comparable(sdk_reading(headers))


def test_random_valid_headers_round_trip_through_the_sdk_propagator() -> None:
    rng = random.Random(15)
    for _ in range(500):
        trace_id, span_id = rng.getrandbits(128) or 1, rng.getrandbits(64) or 1
        flags = rng.choice([0, 1, 2, 3])
        context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags))
        headers: dict[str, str] = {}
        propagate.inject(headers, trace.set_span_in_context(NonRecordingSpan(context)))
        parent = remote_parent(headers)
        assert parent == Parent(trace_id, span_id, flags)
        assert comparable(parent) == comparable(sdk_reading(headers))


def test_the_sdk_context_it_builds_is_the_propagators() -> None:
    headers = {"traceparent": VALID, "tracestate": "vendor=value"}
    parent = remote_parent(headers)
    assert parent is not None
    producer = span_context(parent)
    assert producer == trace.get_current_span(propagate.extract(headers)).get_span_context()
    assert producer.is_remote and producer.trace_state == TraceState([("vendor", "value")])
    built = trace.get_current_span(parent_context(parent, producer)).get_span_context()
    assert built == producer
    fast = remote_parent({"traceparent": VALID})
    assert fast is not None and fast.extracted is None
    fast_context = span_context(fast)
    rebuilt = trace.get_current_span(parent_context(fast, fast_context)).get_span_context()
    assert rebuilt == fast_context
    assert trace.get_current_span(parent_context(None, None)).get_span_context().is_valid is False


class B3Only(TextMapPropagator):
    """A propagator that does not read ``traceparent``."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        from opentelemetry.context import Context

        return context if context is not None else Context()

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        pass

    @property
    def fields(self) -> set[str]:
        return {"b3"}


@pytest.fixture
def b3_only() -> Iterator[None]:
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(B3Only())
    try:
        yield
    finally:
        propagate.set_global_textmap(before)


def test_a_non_w3c_global_propagator_is_obeyed(b3_only: None) -> None:
    assert remote_parent({"traceparent": VALID}) is None
