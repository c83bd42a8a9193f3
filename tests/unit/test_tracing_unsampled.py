"""A message that is not sampled costs next to nothing, and still obeys the W3C / OpenTelemetry
rules for a non-sampled parent: its consumer span is never exported, the task's own spans are
not recorded, and what the task sends carries the same trace, not sampled."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import DEFAULT_ON, ParentBasedTraceIdRatio
from test_tracing_lean_spans import RESOURCE, SID, TID, Capture, FixedIds, decoded
from test_tracing_setup import run

from shoal.message import Message
from shoal.telemetry.export import Pipeline
from shoal.telemetry.sampling import decider_for
from shoal.telemetry.spans import ProcessSpans

UNSAMPLED = f"00-{TID:032x}-{SID:016x}-00"
SAMPLED = f"00-{TID:032x}-{SID:016x}-01"


class Lean:
    """Lean consumer spans with counted ids, and a tracer for the task's own spans that decides
    from the current span as an app's SDK tracer does."""

    def __init__(self, sampler: Any = DEFAULT_ON) -> None:
        self.ids = FixedIds()
        self.capture = Capture()
        self.pipeline = Pipeline(RESOURCE, self.capture, env={})  # type: ignore[arg-type]
        decider = decider_for(sampler)
        assert decider is not None
        self.spans = ProcessSpans(self.pipeline, decider, self.ids, SpanLimits())
        self.task_tracer = TracerProvider(sampler=sampler).get_tracer("task")

    def exported(self) -> list[dict[str, Any]]:
        assert self.pipeline.force_flush(5000)
        return [s for body in self.capture.bodies for s in decoded(body)]


@pytest.fixture
def lean() -> Iterator[Lean]:
    paths = Lean()
    yield paths
    paths.pipeline.shutdown()


def msg(headers: dict[str, str] | None = None, i: int = 0) -> Message:
    return Message(f"m{i}", "charge", "billing", [], {}, 1.0, 0, headers or {})


def test_a_non_sampled_parent_records_nothing_and_sends_the_trace_on(lean: Lean) -> None:
    # Given a message whose producer span was not sampled (parentbased_always_on)
    sent: dict[str, str] = {}
    # When the worker runs it and the task makes a span of its own and sends a message
    with lean.spans.start(msg({"traceparent": UNSAMPLED}), "billing") as span:
        assert trace.get_current_span() is span and not span.is_recording()
        span.set_attribute("ignored", 1)
        span.add_event("ignored")
        span.record_exception(ValueError("ignored"))
        with lean.task_tracer.start_as_current_span("inside the task") as inner:
            assert not inner.is_recording()
            propagate.inject(sent)
    # Then the task's span was not sampled, nothing is exported, and the trace goes on
    context = inner.get_span_context()
    assert context.trace_id == TID and not context.trace_flags.sampled
    assert lean.exported() == []
    assert sent["traceparent"].startswith(f"00-{TID:032x}-")
    assert sent["traceparent"].endswith("-00")
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_a_non_sampled_consumer_span_has_its_own_id_once_asked(lean: Lean) -> None:
    with lean.spans.start(msg({"traceparent": UNSAMPLED}), "billing") as span:
        first = span.get_span_context()
        assert first == span.get_span_context()  # stable once asked
    assert first.trace_id == TID and first.span_id not in {0, SID}
    assert not first.is_remote and not first.trace_flags.sampled


def test_a_non_sampled_message_draws_no_span_id_nobody_asks_for(lean: Lean) -> None:
    before = lean.ids.next_span
    for i in range(3):
        with lean.spans.start(msg({"traceparent": UNSAMPLED}, i), "billing"):
            pass
    assert lean.ids.next_span == before
    assert lean.exported() == []


def test_the_context_is_restored_after_each_span(lean: Lean) -> None:
    outer = otel_context.set_value("outer", 1)
    token = otel_context.attach(outer)
    try:
        for headers in ({"traceparent": UNSAMPLED}, {"traceparent": SAMPLED}, {}):
            with lean.spans.start(msg(headers), "billing") as span:
                assert trace.get_current_span() is span
                assert otel_context.get_value("outer") == 1  # what was current is kept
            assert otel_context.get_current() is outer
    finally:
        otel_context.detach(token)


def test_spans_in_threads_each_see_their_own(lean: Lean) -> None:
    seen: list[bool] = []

    def work(headers: dict[str, str]) -> None:
        for i in range(50):
            with lean.spans.start(msg(headers, i), "billing") as span:
                seen.append(trace.get_current_span() is span)

    threads = [
        threading.Thread(target=work, args=(h,))
        for h in ({"traceparent": UNSAMPLED}, {"traceparent": SAMPLED}, {})
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [True] * 150
    assert len(lean.exported()) == 100


def test_a_ratio_sampler_exports_about_its_share_of_root_spans() -> None:
    paths = Lean(ParentBasedTraceIdRatio(0.1))
    paths.ids = None  # type: ignore[assignment]
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    paths.spans.ids = RandomIdGenerator()
    try:
        for i in range(2000):
            with paths.spans.start(msg({}, i), "billing"):
                pass
        exported = len(paths.exported())
    finally:
        paths.pipeline.shutdown()
    assert 110 <= exported <= 290  # 200 expected; 6.7 standard deviations either side


def test_ten_percent_from_the_environment_exports_about_ten_percent() -> None:
    # A worker set up from OTEL_* only, as `shoal worker` is, on root messages and on messages
    # from a producer that sampled 10 % of its traces (the non-sampled ones carry flags 00)
    from otlp_receiver import OTLPReceiver

    with OTLPReceiver() as otlp:
        run(
            """
import random
from types import SimpleNamespace
from shoal.message import Message
from shoal.middleware.tracing import Tracing
from shoal.settings import Settings

tracing = Tracing()
tracing.before_worker_boot(SimpleNamespace(settings=Settings.from_env()))
for i in range(2000):
    headers = {}
    if i % 2:
        sampled = random.random() < 0.1
        tid, sid = random.getrandbits(128) | 1, random.getrandbits(64) | 1
        headers["traceparent"] = f"00-{tid:032x}-{sid:016x}-{'01' if sampled else '00'}"
    with tracing.process_context(None, Message(f"m{i}", "t", "q", [], {}, 1.0, 0, headers), "q"):
        pass
tracing.after_worker_shutdown(None)
""",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url,
            OTEL_TRACES_SAMPLER="parentbased_traceidratio",
            OTEL_TRACES_SAMPLER_ARG="0.1",
        )
        exported = len(otlp.named("process q"))
    assert 110 <= exported <= 290
