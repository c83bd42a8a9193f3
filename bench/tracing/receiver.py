"""A local OTLP/HTTP receiver for the tracing benches: counts requests and spans (decoding is
the collector's cost, not the worker's; the span count is a cheap scan, done here, not there)."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler
from typing import Any


class Receiver(BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and counts them."""

    exports = 0
    spans = 0

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Receiver.exports += 1
        Receiver.spans += count_spans(body)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def count_spans(body: bytes) -> int:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
