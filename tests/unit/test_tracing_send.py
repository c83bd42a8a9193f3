"""The producer span of a send: a PRODUCER span ``send <queue>``, current while the messages are
stored, whose context every message of the batch carries in exactly the headers the global
propagator would write (``traceparent`` alone is written directly; baggage, a ``tracestate`` or
another propagator go through ``propagate.inject``); a send that fails records its error."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shoal import App
from shoal.message import Message, new_message_id
from shoal.middleware import Tracing
from shoal.middleware.tracing import _SendScope
from shoal.task import Task


@pytest.fixture
def traced() -> Iterator[tuple[Tracing, InMemorySpanExporter, Task[Any, Any]]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(tracer_provider=provider)
    app = App("redis://127.0.0.1:1/0", middleware=[tracing])
    task = app.task(queue="billing", name="charge")(lambda n: n)
    yield tracing, exporter, task
    provider.shutdown()


def messages(n: int) -> list[Message]:
    return [Message(new_message_id(), "charge", "billing", [i], {}, 1.0) for i in range(n)]


@contextlib.contextmanager
def within(outer: Context) -> Iterator[None]:
    """``outer`` made the current context for the ``with``."""
    token = context.attach(outer)
    try:
        yield
    finally:
        context.detach(token)


def sent_within(
    outer: Context, send: Callable[[list[Message]], contextlib.AbstractContextManager[Any]]
) -> tuple[Message, dict[str, str]]:
    """One message sent in ``outer``: it, and what ``propagate.inject`` writes in the send."""
    [message] = messages(1)
    expected: dict[str, str] = {}
    with within(outer), send([message]):
        propagate.inject(expected)
    return message, expected


def test_one_send_is_a_producer_span_whose_context_the_message_carries(
    traced: tuple[Tracing, InMemorySpanExporter, Task[Any, Any]],
) -> None:
    tracing, exporter, task = traced
    [message] = messages(1)
    with tracing.enqueue_context(task, [message]):
        current = trace.get_current_span()  # what the Redis call (and its instrumentation) sees
        expected: dict[str, str] = {}
        propagate.inject(expected)
    [span] = exporter.get_finished_spans()
    assert current.get_span_context() == span.get_span_context()
    assert span.name == "send billing" and span.kind is SpanKind.PRODUCER
    assert dict(span.attributes or {}) == {
        "messaging.system": "shoal",
        "messaging.destination.name": "billing",
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "shoal.task.name": "charge",
        "messaging.message.id": message.id,
    }
    assert message.headers == expected
    ctx = span.get_span_context()
    flags = int(ctx.trace_flags)  # sampled, and (OpenTelemetry >= 1.39) a random trace id
    assert message.headers == {
        "traceparent": f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags:02x}"
    }
    assert not trace.get_current_span().get_span_context().is_valid  # restored after


def test_a_batch_is_one_span_and_every_message_carries_it(
    traced: tuple[Tracing, InMemorySpanExporter, Task[Any, Any]],
) -> None:
    tracing, exporter, task = traced
    batch = messages(3)
    with tracing.enqueue_context(task, batch):
        pass
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 3
    assert "messaging.message.id" not in span.attributes
    assert len({m.headers["traceparent"] for m in batch}) == 1


def test_baggage_and_a_parents_tracestate_travel_as_the_propagator_writes_them(
    traced: tuple[Tracing, InMemorySpanExporter, Task[Any, Any]],
) -> None:
    tracing, exporter, task = traced
    parent = SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("vendor", "value")]),
    )
    outer = trace.set_span_in_context(NonRecordingSpan(parent))
    message, expected = sent_within(
        baggage.set_baggage("user", "alice", outer), partial(tracing.enqueue_context, task)
    )
    assert message.headers == expected
    assert message.headers["baggage"] == "user=alice"
    assert message.headers["tracestate"] == "vendor=value"
    [span] = exporter.get_finished_spans()
    assert span.parent is not None and span.parent.span_id == parent.span_id


class Custom(TextMapPropagator):
    """A propagator of its own header (not W3C)."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return context

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        carrier["x-trace"] = f"{span_context.trace_id:x}"

    @property
    def fields(self) -> set[str]:
        return {"x-trace"}


def test_another_global_propagator_writes_its_own_headers(
    traced: tuple[Tracing, InMemorySpanExporter, Task[Any, Any]],
) -> None:
    tracing, exporter, task = traced
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(Custom())
    try:
        [message] = messages(1)
        with tracing.enqueue_context(task, [message]):
            pass
    finally:
        propagate.set_global_textmap(before)
    [span] = exporter.get_finished_spans()
    assert message.headers == {"x-trace": f"{span.get_span_context().trace_id:x}"}


def test_a_failed_send_records_its_error_and_raises_it(
    traced: tuple[Tracing, InMemorySpanExporter, Task[Any, Any]],
) -> None:
    tracing, exporter, task = traced
    with (
        pytest.raises(ConnectionError, match="redis is down"),
        tracing.enqueue_context(task, messages(1)),
    ):
        raise ConnectionError("redis is down")
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ConnectionError: redis is down"
    assert [e.name for e in span.events] == ["exception"]
    assert not trace.get_current_span().get_span_context().is_valid


def test_an_unsampled_send_still_carries_its_trace(
    traced: tuple[Tracing, InMemorySpanExporter, Task[Any, Any]],
) -> None:
    tracing, exporter, task = traced
    parent = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=TraceFlags(0))
    message, _ = sent_within(
        trace.set_span_in_context(NonRecordingSpan(parent)), partial(tracing.enqueue_context, task)
    )
    assert exporter.get_finished_spans() == ()
    assert message.headers["traceparent"].startswith(f"00-{0xABC:032x}-")
    assert message.headers["traceparent"].endswith("-00")


@pytest.mark.parametrize("with_baggage", [False, True], ids=["alone", "with baggage"])
def test_a_span_with_no_valid_context_writes_what_the_propagator_writes(
    with_baggage: bool,
) -> None:
    # A provider may hand out the invalid span (a no-op tracer, OTEL_SDK_DISABLED)
    tracer = trace.NoOpTracerProvider().get_tracer("t")
    outer = baggage.set_baggage("user", "alice") if with_baggage else Context()
    message, expected = sent_within(
        outer, lambda batch: _SendScope(tracer, "send billing", {}, batch)
    )
    assert message.headers == expected
    assert message.headers == ({"baggage": "user=alice"} if with_baggage else {})


def test_a_parents_tracestate_alone_travels_too(
    traced: tuple[Tracing, InMemorySpanExporter, Task[Any, Any]],
) -> None:
    tracing, _exporter, task = traced
    parent = SpanContext(
        0xABC,
        0xDEF,
        is_remote=True,
        trace_flags=TraceFlags(1),
        trace_state=TraceState([("v", "1")]),
    )
    message, expected = sent_within(
        trace.set_span_in_context(NonRecordingSpan(parent)), partial(tracing.enqueue_context, task)
    )
    assert message.headers == expected and message.headers["tracestate"] == "v=1"


class VendorTraceContext(TraceContextTextMapPropagator):
    """A W3C propagator of a vendor's that writes one more header."""

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        super().inject(carrier, context)
        carrier["tracestate"] = "vendor=1"


@pytest.mark.parametrize(
    "textmap",
    [VendorTraceContext(), CompositePropagator([VendorTraceContext(), W3CBaggagePropagator()])],
    ids=["alone", "in a composite"],
)
def test_a_subclassed_w3c_propagator_writes_its_own_headers(
    traced: tuple[Tracing, InMemorySpanExporter, Task[Any, Any]], textmap: TextMapPropagator
) -> None:
    tracing, _exporter, task = traced
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(textmap)
    try:
        [message] = messages(1)
        with tracing.enqueue_context(task, [message]):
            pass
    finally:
        propagate.set_global_textmap(before)
    assert message.headers["tracestate"] == "vendor=1"


class Failing(TextMapPropagator):
    """An app's propagator with a bug."""

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return context

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        raise RuntimeError("propagator bug")

    @property
    def fields(self) -> set[str]:
        return {"x-trace"}


def test_a_propagator_that_raises_leaves_no_span_current_and_ends_it(
    traced: tuple[Tracing, InMemorySpanExporter, Task[Any, Any]],
) -> None:
    tracing, exporter, task = traced
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([Failing()]))
    try:
        with pytest.raises(RuntimeError, match="propagator bug"):
            tracing.enqueue_context(task, messages(1)).__enter__()
    finally:
        propagate.set_global_textmap(before)
    assert not trace.get_current_span().get_span_context().is_valid
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
