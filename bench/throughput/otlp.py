"""A local OTLP/HTTP receiver for the traced rows, and a span count of what it received.

It answers every ``POST /v1/traces`` with 200 and keeps the bodies; decoding waits until the
row's run is over (:meth:`Receiver.take`), so that the harness spends no CPU on it while the
workers are measured. A collector's own cost is not what the bench is about.
"""

from __future__ import annotations

import gzip
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Span.kind values (opentelemetry/proto/trace/v1/trace.proto)
KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


class Receiver:
    """``with Receiver() as rx``: serves on a free 127.0.0.1 port until the block ends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bodies: list[bytes] = []
        self._failed = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding", "") == "gzip":
                    body = gzip.decompress(body)
                receiver._keep(body if self.path == "/v1/traces" else None)
                self.send_response(200 if self.path == "/v1/traces" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        """The base URL for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter adds /v1/traces)."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _keep(self, body: bytes | None) -> None:
        with self._lock:
            if body is None:
                self._failed += 1
            else:
                self._bodies.append(body)

    def take(self) -> dict[str, int]:
        """Counts of everything received since the last call: ``exports`` (POSTs), ``spans`` and
        spans per kind (``producer``, ``consumer``, ...), ``bad_requests`` (other paths)."""
        with self._lock:
            bodies, self._bodies = self._bodies, []
            failed, self._failed = self._failed, 0
        kinds: Counter[str] = Counter()
        for body in bodies:
            kinds.update(span_kinds(body))
        return {
            "exports": len(bodies),
            "spans": sum(kinds.values()),
            **{kind: kinds.get(kind, 0) for kind in ("producer", "consumer")},
            "bad_requests": failed,
        }

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def span_kinds(request: bytes) -> Iterator[str]:
    """The kind of every span in an ``ExportTraceServiceRequest`` (protobuf wire format, walked
    without the generated classes: resource_spans=1 > scope_spans=2 > spans=2 > kind=6)."""
    view = memoryview(request)
    for resource in _submessages(view, 1):
        for scope in _submessages(resource, 2):
            for span in _submessages(scope, 2):
                kind = next((v for n, v in _fields(span) if n == 6 and isinstance(v, int)), 0)
                yield KINDS.get(kind, "unspecified")


def _submessages(buf: memoryview, number: int) -> Iterator[memoryview]:
    for n, value in _fields(buf):
        if n == number and isinstance(value, memoryview):
            yield value


def _fields(buf: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) pairs: an int for varints, a view for anything length-delimited;
    fixed-width fields are skipped over (their value is not needed here)."""
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == 2:
            size, pos = _varint(buf, pos)
            yield number, buf[pos : pos + size]
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
