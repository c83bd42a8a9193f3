"""The span pipeline of a worker whose tracing Shoal set up: one batching thread, OTLP/HTTP.

It replaces the SDK's ``BatchSpanProcessor`` + ``OTLPSpanExporter`` pair and takes both kinds
of span: Shoal's lean consumer spans (:meth:`Pipeline.submit`, already encoded by
:mod:`shoal.telemetry.otlp` as they ended) and the SDK spans a task makes itself (``on_end``,
encoded by the SDK's own encoder, imported on the first one). Both land in one request.
Configured only by the standard variables: ``OTEL_BSP_SCHEDULE_DELAY``, ``OTEL_BSP_MAX_QUEUE_SIZE``,
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, ``OTEL_BSP_EXPORT_TIMEOUT``, and for the request
``OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT``, ``_HEADERS``, ``_TIMEOUT`` (seconds, as the Python
SDK reads it), ``_COMPRESSION``, ``_CERTIFICATE``, ``_CLIENT_KEY``, ``_CLIENT_CERTIFICATE``.

Submitting is a deque append; the thread wakes once per full batch or schedule delay, not per
span. Spans beyond the queue size are dropped and counted, as the SDK does.
"""

from __future__ import annotations

import gzip
import http.client
import logging
import os
import random
import ssl
import threading
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

from shoal.telemetry import otlp
from shoal.version import __version__

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Span as SdkSpan

log = logging.getLogger("shoal.telemetry")

_RETRYABLE = frozenset({429, 502, 503, 504})
_MAX_TRIES = 6


def _env(env: Mapping[str, str], name: str, default: str = "") -> str:
    """``OTEL_EXPORTER_OTLP_TRACES_<name>``, else ``OTEL_EXPORTER_OTLP_<name>``."""
    return env.get(f"OTEL_EXPORTER_OTLP_TRACES_{name}") or env.get(
        f"OTEL_EXPORTER_OTLP_{name}", default
    )


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        log.warning("%s=%r is not a number; using %s", name, raw, default)
        return default


def endpoint_of(env: Mapping[str, str]) -> str:
    """Where spans are POSTed: the traces endpoint as given, else the base one + /v1/traces."""
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "http://localhost:4318"
    return f"{base.removesuffix('/')}/v1/traces"


def headers_of(env: Mapping[str, str]) -> dict[str, str]:
    """``k=v,k2=v2`` (URL-encoded), as the OTLP exporters parse it."""
    headers = {
        "Content-Type": "application/x-protobuf",
        "User-Agent": f"shoal/{__version__} (OTLP/HTTP)",
    }
    for pair in _env(env, "HEADERS").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            headers[urllib.parse.unquote(key.strip()).lower()] = urllib.parse.unquote(value.strip())
    return headers


class Sender:
    """POSTs encoded requests on one kept-alive connection, retrying as the SDK exporter
    does (429, 502, 503, 504 and lost connections, with exponential back-off, within the
    timeout). Used from the pipeline's thread only."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.endpoint = endpoint_of(env)
        url = urllib.parse.urlsplit(self.endpoint)
        if url.scheme not in {"http", "https"} or not url.hostname:
            raise ValueError(f"OTLP endpoint {self.endpoint!r} is not an http(s) URL")
        self._https = url.scheme == "https"
        self._host, self._port = url.hostname, url.port
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.headers = headers_of(env)
        self.timeout = _number(env, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 0) or _number(
            env, "OTEL_EXPORTER_OTLP_TIMEOUT", 10.0
        )
        self.compression = _env(env, "COMPRESSION", "none").strip().lower()
        if self.compression not in {"gzip", "deflate"}:
            self.compression = "none"
        else:
            self.headers["Content-Encoding"] = self.compression
        self._tls: ssl.SSLContext | None = None
        if self._https:
            self._tls = ssl.create_default_context(cafile=_env(env, "CERTIFICATE") or None)
            cert, key = _env(env, "CLIENT_CERTIFICATE"), _env(env, "CLIENT_KEY")
            if cert:
                self._tls.load_cert_chain(cert, key or None)
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self, timeout: float) -> http.client.HTTPConnection:
        if self._connection is None:
            if self._tls is not None:
                self._connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=timeout, context=self._tls
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=timeout
                )
        self._connection.timeout = timeout
        if self._connection.sock is not None:
            self._connection.sock.settimeout(timeout)
        return self._connection

    def _post(self, body: bytes, timeout: float) -> tuple[int, str]:
        connection = self._connect(timeout)
        try:
            connection.request("POST", self._path, body, self.headers)
            reply = connection.getresponse()
            reply.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        if reply.will_close:
            self.close()
        return reply.status, reply.getheader("Retry-After") or ""

    def send(self, body: bytes) -> bool:
        """POST one encoded ``ExportTraceServiceRequest``; False when it was given up on."""
        if self.compression == "gzip":
            body = gzip.compress(body)
        elif self.compression == "deflate":
            body = zlib.compress(body)
        deadline = time.monotonic() + self.timeout
        problem = ""
        for attempt in range(_MAX_TRIES):
            retry_after = ""
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                status, retry_after = self._post(body, left)
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if attempt == 0:
                    continue  # a kept-alive connection the collector closed: retry at once
            else:
                if 200 <= status < 300:
                    return True
                problem = f"HTTP {status}"
                if status not in _RETRYABLE:
                    break
            pause = 2**attempt * random.uniform(0.8, 1.2)
            if retry_after.strip().isdigit():
                pause = float(retry_after)
            if time.monotonic() + pause >= deadline:
                break
            time.sleep(pause)
        log.warning("tracing: could not export spans to %s: %s", self.endpoint, problem)
        return False

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class Pipeline(SpanProcessor):
    """Batches spans and exports them from one daemon thread (see the module docstring)."""

    def __init__(
        self,
        resource: Resource,
        sender: Sender,
        env: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if env is None else env
        self.sender = sender
        self.delay_s = _number(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self.max_queue = int(_number(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)) or 2048
        batch = int(_number(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)) or 512
        self.batch = min(batch, self.max_queue)
        self.export_timeout_s = _number(env, "OTEL_BSP_EXPORT_TIMEOUT", 30000) / 1000
        self._resource = otlp.resource(resource.attributes, resource.schema_url)
        self._scope = otlp.scope("shoal", __version__)
        self._queue: deque[bytes | ReadableSpan] = deque()
        self._wake = threading.Event()
        self._flushed = threading.Condition()
        self._flush_requests = 0
        self._flushes_done = 0
        self._stopping = False
        self.dropped = 0
        self.exported = 0
        self._encode_sdk: Any = None
        self._thread = threading.Thread(target=self._run, name="shoal-spans", daemon=True)
        self._thread.start()

    # --- intake (any thread) ---------------------------------------------------------------

    def submit(self, span: bytes | ReadableSpan) -> None:
        """Queue a lean span's encoding (:func:`shoal.telemetry.otlp.encode`) or an SDK span."""
        queue = self._queue
        if len(queue) >= self.max_queue:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                log.warning(
                    "tracing: span queue full (%d): %d spans dropped", self.max_queue, self.dropped
                )
            return
        queue.append(span)
        if len(queue) >= self.batch and not self._wake.is_set():
            self._wake.set()

    def on_start(self, span: SdkSpan, parent_context: Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is not None and context.trace_flags.sampled:
            self.submit(span)

    # --- export (the pipeline's thread) ------------------------------------------------------

    def _run(self) -> None:
        while True:
            woken = self._wake.wait(self.delay_s)
            self._wake.clear()
            with self._flushed:
                flushing = self._flush_requests
            stopping = self._stopping
            self._export_all(whole=not woken or flushing > self._flushes_done or stopping)
            if flushing > self._flushes_done:
                with self._flushed:
                    self._flushes_done = flushing
                    self._flushed.notify_all()
            if stopping:
                return

    def _export_all(self, whole: bool) -> None:
        """Export full batches; the remainder too when ``whole`` (the delay passed, a flush)."""
        queue = self._queue
        while len(queue) >= self.batch or (whole and queue):
            spans = [queue.popleft() for _ in range(min(self.batch, len(queue)))]
            try:
                self._export(spans)
            except Exception:  # a bad span or an encoder bug must not stop the thread
                log.exception("tracing: could not export %d spans", len(spans))

    def _export(self, spans: list[bytes | ReadableSpan]) -> None:
        own = [s for s in spans if type(s) is bytes]
        body = otlp.request(self._resource, self._scope, b"".join(own)) if own else b""
        if len(own) < len(spans):
            body += self._encode_sdk_spans([s for s in spans if type(s) is not bytes])
        if self.sender.send(body):
            self.exported += len(spans)

    def _encode_sdk_spans(self, spans: list[Any]) -> bytes:
        if self._encode_sdk is None:
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

            self._encode_sdk = encode_spans
        return bytes(self._encode_sdk(spans).SerializePartialToString())

    # --- flush and shutdown (any thread) ------------------------------------------------------

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        if not self._thread.is_alive():
            return not self._queue
        deadline = time.monotonic() + timeout_millis / 1000
        with self._flushed:
            self._flush_requests += 1
            wanted = self._flush_requests
            self._wake.set()
            while self._flushes_done < wanted:
                left = deadline - time.monotonic()
                if left <= 0 or not self._flushed.wait(left):
                    return self._flushes_done >= wanted
        return True

    def shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._thread.join(self.export_timeout_s)
        self.sender.close()
