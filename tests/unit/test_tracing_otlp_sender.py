"""Shoal's OTLP/HTTP sender: the standard variables, compression, retries, and a collector that
decodes what it gets (the tests' OTLP receiver)."""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from otlp_receiver import OTLPReceiver
from shoal.message import Message
from shoal.telemetry.export import Pipeline, Sender, endpoint_of, headers_of
from shoal.telemetry.sampling import decider_for
from shoal.telemetry.spans import ProcessSpans


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs with the next status of ``replies`` (then 200), keeping what it got."""

    replies: ClassVar[list[int]] = []
    got: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Scripted.got.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status = Scripted.replies.pop(0) if Scripted.replies else 200
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[str]:
    Scripted.replies, Scripted.got = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_endpoint_comes_from_the_standard_variables() -> None:
    assert endpoint_of({}) == "http://localhost:4318/v1/traces"
    assert (
        endpoint_of({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    )
    both = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t:443/custom/path",
    }
    assert endpoint_of(both) == "https://t:443/custom/path"  # taken as is, no /v1/traces


def test_headers_are_parsed_as_the_otlp_exporters_parse_them() -> None:
    env = {"OTEL_EXPORTER_OTLP_HEADERS": "api-key=a%20b, X-Team = red ,broken,=nokey"}
    headers = headers_of(env)
    assert headers["api-key"] == "a b" and headers["x-team"] == "red"
    assert headers["Content-Type"] == "application/x-protobuf"
    assert "broken" not in headers and "" not in headers
    traces = {**env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "only=traces"}
    assert "api-key" not in headers_of(traces) and headers_of(traces)["only"] == "traces"


def test_not_an_http_endpoint_is_refused() -> None:
    with pytest.raises(ValueError, match="not an http"):
        Sender({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "grpc://collector:4317"})


@pytest.mark.parametrize("compression", ["gzip", "deflate", "none"])
def test_a_request_is_posted_with_its_headers_and_compression(
    scripted: str, compression: str
) -> None:
    sender = Sender(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": scripted,
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t",
            "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
        }
    )
    assert sender.send(b"payload")
    assert sender.send(b"again")  # on the kept-alive connection
    sender.close()
    (path, headers, body), _ = Scripted.got
    assert path == "/v1/traces" and headers["authorization"] == "Bearer t"
    assert headers["content-type"] == "application/x-protobuf"
    unpacked = {"gzip": gzip.decompress, "deflate": zlib.decompress}.get(compression, bytes)
    assert unpacked(body) == b"payload"
    assert headers.get("content-encoding") == (None if compression == "none" else compression)


def test_retryable_answers_are_retried_then_succeed(scripted: str) -> None:
    Scripted.replies = [503, 429]
    sender = Sender({"OTEL_EXPORTER_OTLP_ENDPOINT": scripted})
    assert sender.send(b"x")
    assert len(Scripted.got) == 3


def test_a_refused_request_is_given_up_at_once(
    scripted: str, caplog: pytest.LogCaptureFixture
) -> None:
    Scripted.replies = [400]
    sender = Sender({"OTEL_EXPORTER_OTLP_ENDPOINT": scripted})
    assert not sender.send(b"x")
    assert len(Scripted.got) == 1
    assert "HTTP 400" in caplog.text


def test_no_collector_is_given_up_within_the_timeout(caplog: pytest.LogCaptureFixture) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sender = Sender(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "0.5",
        }
    )
    assert not sender.send(b"x")
    assert "could not export spans" in caplog.text


def test_a_collector_receives_the_spans_of_a_pipeline() -> None:
    resource = Resource({"service.name": "billing-worker"}, schema_url="https://example/1.0")
    with OTLPReceiver() as otlp:
        pipeline = Pipeline(resource, Sender({"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}), env={})
        decider = decider_for(ALWAYS_ON)
        assert decider is not None
        spans = ProcessSpans(pipeline, decider, RandomIdGenerator(), SpanLimits())
        for i in range(3):
            message = Message(f"m{i}", "charge", "billing", [], {}, 1.0, 0, {})
            with spans.start(message, "billing"):
                pass
        pipeline.shutdown()  # flushes what is left
        received = otlp.named("process billing")
    assert sorted(s.attributes["messaging.message.id"] for s in received) == ["m0", "m1", "m2"]
    assert {s.service for s in received} == {"billing-worker"}
    assert pipeline.exported == 3
