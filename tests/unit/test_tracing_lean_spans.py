"""Lean consumer spans: the same OTLP bytes, decoded, as the SDK's span and exporter give.

Each case builds the consumer span twice from one message, through the SDK (the path an app's
own provider takes) and through :class:`shoal.telemetry.spans.ProcessSpans`, exports both, and
compares what a collector would decode (``opentelemetry-proto``), ids and times included."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, DEFAULT_ON, ParentBasedTraceIdRatio
from opentelemetry.trace import SpanContext, Status, StatusCode, TraceFlags

from shoal.message import Message
from shoal.middleware.tracing import Tracing
from shoal.telemetry import otlp
from shoal.telemetry.export import Pipeline
from shoal.telemetry.sampling import decider_for
from shoal.telemetry.spans import ProcessSpan, ProcessSpans
from shoal.version import __version__

TID, SID = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
RESOURCE = Resource({"service.name": "billing-worker", "service.version": "9", "pid": 7})


class FixedIds(IdGenerator):
    """Hands out the same ids to both paths."""

    def __init__(self) -> None:
        self.next_span = 0x1000
        self.next_trace = 0x2000

    def generate_span_id(self) -> int:
        self.next_span += 1
        return self.next_span

    def generate_trace_id(self) -> int:
        self.next_trace += 1
        return self.next_trace


class Capture:
    """A sender that keeps the request bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.ok = True

    def send(self, body: bytes) -> bool:
        self.bodies.append(body)
        return self.ok

    def close(self) -> None:
        pass


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Any) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def decoded(body: bytes) -> list[dict[str, Any]]:
    """Every span of a request as a collector sees it, with its resource and scope."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    out = []
    for rs in request.resource_spans:
        resource = {a.key: value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    {
                        "resource": resource,
                        "resource_schema": rs.schema_url,
                        "scope": (ss.scope.name, ss.scope.version),
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent": s.parent_span_id.hex(),
                        "trace_state": s.trace_state,
                        "flags": s.flags,
                        "name": s.name,
                        "kind": s.kind,
                        "times": (s.start_time_unix_nano, s.end_time_unix_nano),
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                        "dropped_attributes": s.dropped_attributes_count,
                        "events": [
                            (
                                e.name,
                                e.time_unix_nano,
                                {a.key: value(a.value) for a in e.attributes},
                                e.dropped_attributes_count,
                            )
                            for e in s.events
                        ],
                        "dropped_events": s.dropped_events_count,
                        "links": [
                            (
                                ln.trace_id.hex(),
                                ln.span_id.hex(),
                                {a.key: value(a.value) for a in ln.attributes},
                                ln.flags,
                            )
                            for ln in s.links
                        ],
                        "status": (s.status.code, s.status.message),
                    }
                )
    return out


def message(headers: dict[str, str] | None = None, attempt: int = 0) -> Message:
    return Message("0123abcd" * 4, "charge", "billing", [1], {}, 1.0, attempt, headers or {})


class Paths:
    """The SDK's path and the lean one, from the same ids, resource and sampler."""

    def __init__(self, sampler: Any = DEFAULT_ON, limits: SpanLimits | None = None) -> None:
        limits = limits or SpanLimits()
        self.sdk_ids, self.lean_ids = FixedIds(), FixedIds()
        self.provider = TracerProvider(
            resource=RESOURCE, sampler=sampler, id_generator=self.sdk_ids, span_limits=limits
        )
        self.kept = Keep()
        self.provider.add_span_processor(SimpleSpanProcessor(self.kept))
        self.sdk = Tracing(self.provider)
        self.capture = Capture()
        self.pipeline = Pipeline(RESOURCE, self.capture, env={})  # type: ignore[arg-type]
        decider = decider_for(sampler)
        assert decider is not None
        self.lean = ProcessSpans(self.pipeline, decider, self.lean_ids, limits)

    def run(self, msg: Message, inside: Any = None, queue: str = "billing") -> None:
        """The worker's use of process_context, on both paths, ``inside`` run in the span."""
        with self.sdk.process_context(None, msg, queue):
            if inside:
                inside(trace.get_current_span())
        with self.lean.start(msg, queue) as lean_span:
            assert trace.get_current_span() is lean_span
            if inside:
                inside(lean_span)

    def compare(self) -> list[dict[str, Any]]:
        assert self.pipeline.force_flush(5000)
        sdk = decoded(encode_spans(self.kept.spans).SerializePartialToString())
        lean = [s for body in self.capture.bodies for s in decoded(body)]
        for span in sdk + lean:  # times differ between the two runs: check, then set aside
            start, end = span.pop("times")
            assert 0 < start <= end <= time.time_ns()
        for span in sdk:  # the SDK's tracer was made by Tracing: the same scope
            assert span["scope"] == ("shoal", __version__)
        assert len(lean) == len(sdk)
        for ours, theirs in zip(lean, sdk, strict=True):
            assert {k: v for k, v in ours.items() if v != theirs[k]} == {}, theirs
        return lean

    def close(self) -> None:
        self.pipeline.shutdown()


@pytest.fixture
def paths() -> Iterator[Paths]:
    p = Paths()
    yield p
    p.close()


def test_a_consumer_span_with_a_producer_parent(paths: Paths) -> None:
    paths.run(message({"traceparent": f"00-{TID:032x}-{SID:016x}-01"}, attempt=2))
    (span,) = paths.compare()
    assert span["trace_id"] == f"{TID:032x}" and span["parent"] == f"{SID:016x}"
    assert span["links"] == [(f"{TID:032x}", f"{SID:016x}", {}, 0x300)]
    assert span["attributes"] == {
        "messaging.system": "shoal",
        "messaging.destination.name": "billing",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.message.id": "0123abcd" * 4,
        "shoal.task.name": "charge",
        "shoal.attempt": 3,
    }
    assert span["name"] == "process billing" and span["kind"] == 5


def test_a_root_consumer_span(paths: Paths) -> None:
    paths.run(message())
    (span,) = paths.compare()
    assert span["parent"] == "" and span["links"] == [] and span["flags"] == 0x100


def test_a_parent_with_tracestate_and_baggage(paths: Paths) -> None:
    headers = {
        "traceparent": f"00-{TID:032x}-{SID:016x}-01",
        "tracestate": "vendor=abc,other=1",
        "baggage": "user=alice",
    }
    paths.run(message(headers))
    (span,) = paths.compare()
    assert span["trace_state"] == "vendor=abc,other=1"


def test_what_a_task_adds_to_its_span(paths: Paths) -> None:
    def inside(span: Any) -> None:
        span.set_attribute("order.id", 42)
        span.set_attributes({"order.total": 9.5, "order.vip": False, "order.tags": ["a", "b"]})
        span.set_attribute("big", -(2**40))
        span.add_event("charged", {"amount": 3}, timestamp=1_500)
        span.add_event("plain", timestamp=1_600)
        try:
            raise ConnectionError("provider refused")
        except ConnectionError as exc:
            span.record_exception(exc, timestamp=1_700)
        span.set_status(Status(StatusCode.ERROR, "ConnectionError: provider refused"))
        span.add_link(SpanContext(TID, SID, is_remote=False), {"why": "batch"})
        span.update_name("process billing (renamed)")

    paths.run(message({"traceparent": f"00-{TID:032x}-{SID:016x}-01"}), inside)
    (span,) = paths.compare()
    assert span["status"] == (2, "ConnectionError: provider refused")
    assert [e[0] for e in span["events"]] == ["charged", "plain", "exception"]


def test_a_task_overriding_an_attribute_of_ours(paths: Paths) -> None:
    def inside(span: Any) -> None:
        span.set_attribute("shoal.attempt", 99)

    paths.run(message(), inside)
    (span,) = paths.compare()
    assert span["attributes"]["shoal.attempt"] == 99


def test_status_rules(paths: Paths) -> None:
    def inside(span: Any) -> None:
        span.set_status(StatusCode.UNSET)
        span.set_status(StatusCode.OK, "ignored: only errors keep a description")
        span.set_status(StatusCode.ERROR, "too late: OK is final")

    paths.run(message(), inside)
    (span,) = paths.compare()
    assert span["status"] == (1, "")


def test_limits_apply_as_in_the_sdk() -> None:
    limits = SpanLimits(
        max_span_attributes=9, max_events=2, max_event_attributes=1, max_attribute_length=4
    )
    paths = Paths(limits=limits)

    def inside(span: Any) -> None:
        for i in range(5):
            span.set_attribute(f"extra.{i}", "long value")
        for i in range(4):
            span.add_event(f"event {i}", {"a": "long value", "b": 2}, timestamp=1_100 + i)

    try:
        paths.run(message(), inside)
        (span,) = paths.compare()
    finally:
        paths.close()
    assert span["dropped_attributes"] == 3 and span["dropped_events"] == 2


def test_unsampled_spans_are_current_but_not_exported() -> None:
    paths = Paths(sampler=ParentBasedTraceIdRatio(0.0))
    inner_tracer = TracerProvider(sampler=ParentBasedTraceIdRatio(0.0)).get_tracer("task")
    contexts = []

    def inside(span: Any) -> None:
        span.set_attribute("ignored unless sampled", 1)
        with inner_tracer.start_as_current_span("inside the task") as inner:
            contexts.append(inner.get_span_context())

    try:
        paths.run(message({"traceparent": f"00-{TID:032x}-{SID:016x}-01"}), inside)
        paths.run(message({"traceparent": f"00-{TID:032x}-{SID:016x}-00"}), inside)
        paths.run(message(), inside)
        assert paths.compare()[0]["parent"] == f"{SID:016x}"  # only the sampled parent's
    finally:
        paths.close()
    # The task's own spans follow the consumer span's decision on both paths (pairs: sdk, lean)
    assert [c.trace_flags.sampled for c in contexts] == [True, True, False, False, False, False]
    assert {c.trace_id for c in contexts[4:]} == {0x2001}  # an unsampled root has a trace id


def test_a_tasks_own_span_nests_under_the_lean_span(paths: Paths) -> None:
    tracer = paths.provider.get_tracer("task")
    msg = message({"traceparent": f"00-{TID:032x}-{SID:016x}-01"})
    with paths.lean.start(msg, "billing") as span, tracer.start_as_current_span("inner") as inner:
        assert inner.parent == span.get_span_context()
        assert span.get_span_context().trace_flags == TraceFlags(1)
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_spans_from_many_threads_all_arrive(paths: Paths) -> None:
    def work(n: int) -> None:
        for i in range(200):
            msg = Message(f"{n}-{i}", "charge", "billing", [], {}, 1.0, 0, {})
            with paths.lean.start(msg, "billing"):
                time.sleep(0)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert paths.pipeline.force_flush(5000)
    ids = [
        s["attributes"]["messaging.message.id"] for b in paths.capture.bodies for s in decoded(b)
    ]
    assert sorted(ids) == sorted(f"{n}-{i}" for n in range(8) for i in range(200))


def test_sdk_spans_and_lean_spans_share_a_request() -> None:
    capture = Capture()
    pipeline = Pipeline(RESOURCE, capture, env={})  # type: ignore[arg-type]
    provider = TracerProvider(resource=RESOURCE, sampler=ALWAYS_ON)
    provider.add_span_processor(pipeline)
    decider = decider_for(ALWAYS_ON)
    assert decider is not None
    lean = ProcessSpans(pipeline, decider, FixedIds(), SpanLimits())
    try:
        tracer = provider.get_tracer("task", "1.0")
        with lean.start(message(), "billing"), tracer.start_as_current_span("inner"):
            pass
        assert pipeline.force_flush(5000)
    finally:
        pipeline.shutdown()
    (body,) = capture.bodies
    spans = decoded(body)
    assert sorted((s["name"], s["scope"]) for s in spans) == [
        ("inner", ("task", "1.0")),
        ("process billing", ("shoal", __version__)),
    ]
    inner = next(s for s in spans if s["name"] == "inner")
    outer = next(s for s in spans if s["name"] != "inner")
    assert inner["parent"] == outer["span_id"] and inner["resource"] == outer["resource"]


def test_the_general_encoder_matches_protobuf_for_every_value_kind() -> None:
    values: list[Any] = ["", "é ✓", True, False, 0, 1, -1, 2**63 - 1, -(2**63), 0.5, -1e300]
    values += [b"\x00\xff", [1, 2], ["a", "b"], [True], [0.5, 1.5], [], {"k": "v", "n": 1}]
    for v in values:
        ours = AnyValue()
        ours.ParseFromString(otlp.any_value(v))
        assert value(ours) == (list(v) if isinstance(v, tuple) else v), v
    assert otlp.varint(300) == b"\xac\x02"


def test_a_batch_is_exported_when_full_and_the_rest_after_the_delay() -> None:
    capture = Capture()
    env = {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "10", "OTEL_BSP_SCHEDULE_DELAY": "200"}
    pipeline = Pipeline(RESOURCE, capture, env=env)  # type: ignore[arg-type]
    decider = decider_for(ALWAYS_ON)
    assert decider is not None
    lean = ProcessSpans(pipeline, decider, FixedIds(), SpanLimits())
    try:
        for _ in range(25):
            with lean.start(message(), "billing"):
                pass
        deadline = time.monotonic() + 10
        while sum(len(decoded(b)) for b in capture.bodies) < 25 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        pipeline.shutdown()
    assert [len(decoded(b)) for b in capture.bodies] == [10, 10, 5]
    assert pipeline.exported == 25 and pipeline.dropped == 0


def test_a_full_queue_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    capture = Capture()
    env = {"OTEL_BSP_MAX_QUEUE_SIZE": "5", "OTEL_BSP_SCHEDULE_DELAY": "600000"}
    pipeline = Pipeline(RESOURCE, capture, env=env)  # type: ignore[arg-type]
    decider = decider_for(ALWAYS_ON)
    assert decider is not None
    lean = ProcessSpans(pipeline, decider, FixedIds(), SpanLimits())
    waiting = pipeline._wake
    pipeline._wake = threading.Event()  # the exporter is not woken: the queue only fills
    for _ in range(8):
        with lean.start(message(), "billing"):
            pass
    assert pipeline.dropped == 3
    pipeline._wake = waiting
    pipeline.shutdown()
    assert len(decoded(capture.bodies[0])) == 5
    assert "span queue full" in caplog.text


def test_an_ended_span_ignores_everything(paths: Paths) -> None:
    span: ProcessSpan = paths.lean.start(message(), "billing")
    span.end(5)
    span.end(6)
    span.set_attribute("late", 1)
    span.add_event("late")
    span.set_status(StatusCode.ERROR, "late")
    assert span.end_time == 5 and span.all_attributes is None and span.events is None
    assert span.status_code == 0 and not span.is_recording()


def test_a_span_the_encoder_fails_on_is_counted_and_logged_once(
    paths: Paths, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(span: ProcessSpan) -> bytes:
        raise ValueError("encoder bug")

    monkeypatch.setattr(otlp, "encode", broken)
    for _ in range(3):
        with paths.lean.start(message(), "billing"):
            pass  # the task is untouched: nothing raises here
    assert paths.lean.encode_failures == 3
    assert caplog.text.count("could not encode the span") == 1


@pytest.mark.parametrize(
    ("message_id", "attempt"),
    [("m", 0), ("é✓" * 40, 31), ("x" * 300, 32), ("y" * 20_000, 1000)],
    ids=["short", "non-ascii", "long", "huge"],
)
def test_message_ids_and_attempts_of_every_size(
    paths: Paths, message_id: str, attempt: int
) -> None:
    headers = {"traceparent": f"00-{TID:032x}-{SID:016x}-01"}
    paths.run(Message(message_id, "charge", "billing", [1], {}, 1.0, attempt, headers))
    paths.run(Message(message_id, "charge", "billing", [1], {}, 1.0, attempt, {}))
    root, child = sorted(paths.compare(), key=lambda s: s["parent"])
    assert child["attributes"]["messaging.message.id"] == message_id
    assert root["attributes"]["shoal.attempt"] == attempt + 1


def test_the_common_span_encoder_writes_what_the_general_one_writes() -> None:
    capture = Capture()
    env = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}
    pipeline = Pipeline(RESOURCE, capture, env=env)  # type: ignore[arg-type]
    decider = decider_for(ALWAYS_ON)
    assert decider is not None
    lean = ProcessSpans(pipeline, decider, FixedIds(), SpanLimits())
    parent = {"traceparent": f"00-{TID:032x}-{SID:016x}-01"}
    batch = []
    for n, (message_id, attempt) in enumerate(
        [("m", 0), ("é✓" * 40, 31), ("x" * 300, 32), ("y" * 20_000, 1000), ("z" * 60, 5)]
    ):
        for headers in (parent, {}):
            msg = Message(message_id, "charge", f"q{n}", [], {}, 1.0, attempt, headers)
            with lean.start(msg, f"q{n}") as span:
                if n == 4 and headers:
                    span.set_attribute("own", 1)  # not the common shape: the general encoder
            batch.append(span)
    pipeline.shutdown()
    assert [otlp.encode(s) for s in batch] == [otlp.span(s) for s in batch]
