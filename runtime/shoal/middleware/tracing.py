"""OpenTelemetry tracing, following the messaging semantic conventions.

Enqueue opens a PRODUCER span ``send <queue>`` (one per batch) and writes the W3C trace context
into each message's headers. Execution opens a CONSUMER span ``process <queue>``: a child of the
producer span with a link to it, current while the task runs, so the task's own spans nest
under it. Each retry is a new CONSUMER span in the same trace; retries and dead letters are span
events. With no tracer provider configured every hook returns at once, and OpenTelemetry is not
imported.

A worker whose tracing Shoal set up from ``OTEL_*`` builds its consumer spans on a lean path
(:mod:`shoal.telemetry.spans`; a message that is not sampled gets a bare span that only carries
the trace on); otherwise (the app's own provider) they go through the SDK.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from shoal import telemetry
from shoal.middleware.base import Middleware, failures_only
from shoal.telemetry.api import otel
from shoal.telemetry.conventions import SYSTEM, kept, process_attributes, send_attributes
from shoal.telemetry.traceparent import carried, parent_context, remote_parent, span_context
from shoal.version import __version__

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry import context, trace

    from shoal.message import Message
    from shoal.task import Task
    from shoal.telemetry.spans import ProcessSpans


class Tracing(Middleware):
    """Spans for enqueue and execution; owns the SDK setup of worker processes.

    Uses the global tracer provider unless given one (``Tracing(tracer_provider=...)``)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._owned: telemetry.OwnedProvider | None = None
        self._cached: trace.Tracer | None = None
        self._process_attributes: dict[tuple[str, str], dict[str, Any]] = {}
        self._send_attributes: dict[tuple[str, str], dict[str, Any]] = {}

    def _enabled(self) -> bool:
        return self._provider is not None or telemetry.tracing_configured()

    def active_in_worker(self) -> bool:
        # Decided once the worker booted (and set up OTLP export if asked to): with no tracer
        # provider, this middleware leaves the worker's per-message path entirely.
        return self._enabled()

    def active_for_sending(self) -> bool:
        # With no tracer provider set, a send makes no span: skip the hooks and Message objects
        return self._enabled()

    def _tracer(self) -> trace.Tracer:
        if self._cached is None:  # the provider is fixed once real: build its tracer once
            from opentelemetry import trace

            tracer = trace.get_tracer(telemetry.TRACER_NAME, __version__, self._provider)
            if not self._enabled():
                return tracer
            self._cached = tracer
        return self._cached

    # --- producer ----------------------------------------------------------------------------

    def enqueue_context(
        self, task: Task[Any, Any], messages: Sequence[Message]
    ) -> contextlib.AbstractContextManager[None]:
        if not self._enabled():
            return contextlib.nullcontext()
        queue = task.queue
        constant = kept(self._send_attributes, (queue, task.name), send_attributes)
        if len(messages) == 1:
            attributes = {**constant, "messaging.message.id": messages[0].id}
        else:
            attributes = {**constant, "messaging.batch.message_count": len(messages)}
        return _SendScope(self._tracer(), f"send {queue}", attributes, messages)

    @contextlib.contextmanager
    def _workflow_span(
        self, kind: str, workflow_id: str, messages: Sequence[Message]
    ) -> Iterator[None]:
        from opentelemetry.trace import SpanKind

        attributes: dict[str, Any] = {
            "messaging.system": SYSTEM,
            "messaging.batch.message_count": len(messages),
            "shoal.workflow.id": workflow_id,
            "shoal.workflow.kind": kind,
        }
        with self._tracer().start_as_current_span(
            f"start {kind}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            yield

    def workflow_context(
        self, kind: str, workflow_id: str, messages: Sequence[Message]
    ) -> contextlib.AbstractContextManager[None]:
        # One parent for the first messages' send spans; every later step is sent from inside
        # a member's process span: the whole workflow is one trace.
        if not self._enabled():
            return contextlib.nullcontext()
        return self._workflow_span(kind, workflow_id, messages)

    # --- worker ------------------------------------------------------------------------------

    def before_worker_boot(self, worker: Any) -> None:
        if self._provider is None:
            self._owned = telemetry.configure(worker.settings)

    def after_worker_shutdown(self, worker: Any) -> None:
        if self._owned is not None:
            self._owned.shutdown()

    def process_context(
        self, task: Task[Any, Any] | None, message: Message, queue: str
    ) -> contextlib.AbstractContextManager[Any]:
        owned = self._owned
        if owned is not None:
            lean: ProcessSpans | None = getattr(owned.provider, "shoal_spans", None)
            if lean is not None:
                return lean.start(message, queue)
        if not self._enabled():
            return contextlib.nullcontext()
        constant = kept(self._process_attributes, (queue, message.task), process_attributes)
        attributes = {
            **constant,
            "messaging.message.id": message.id,
            "shoal.attempt": message.attempt + 1,
        }
        return _ProcessScope(self._tracer(), f"process {queue}", attributes, message)

    @failures_only  # a task that returned leaves its span as it is: no call per success
    def after_process(
        self,
        task: Task[Any, Any],
        message: Message,
        *,
        result: Any,
        exception: BaseException | None,
    ) -> None:
        if exception is None:
            return
        _failed(otel().current_span(), exception)

    def after_retry(self, task: Task[Any, Any], message: Message, delay_s: float) -> None:
        otel().current_span().add_event(
            "retry scheduled",
            {"shoal.retry.delay_s": delay_s, "shoal.attempt": message.attempt + 1},
        )

    def after_dead_letter(
        self, queue: str, message: Message | None, reason: str, error: BaseException
    ) -> None:
        span = otel().current_span()
        span.add_event(
            "dead-lettered",
            {
                "shoal.dlq.reason": reason,
                "exception.type": type(error).__qualname__,
                "exception.message": str(error),
            },
        )
        span.set_status(otel().error, f"dead-lettered: {reason}")


def _failed(span: trace.Span, error: BaseException) -> None:
    """Record ``error`` on ``span`` and set its status, as the SDK does for a span's error."""
    span.record_exception(error)
    span.set_status(otel().error, f"{type(error).__name__}: {error}")


class _Scope:
    """An SDK span, current inside the ``with`` and ended on leaving it. A class, not the SDK's
    generator context manager: one runs per send and per task."""

    __slots__ = ("_span", "_token")

    def __init__(self, span: trace.Span) -> None:
        self._span = span
        self._token: Token[context.Context] | None = None

    def __enter__(self) -> None:
        api = otel()
        self._token = api.attach(api.in_context(self._span))

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            otel().detach(token)
        self._end(exc_val)

    def _end(self, error: BaseException | None) -> None:
        self._span.end()


class _SendScope(_Scope):
    """The producer span of one send: current while the batch is stored (a Redis
    instrumentation's spans nest under it), its context written into every message's
    headers (:func:`~shoal.telemetry.traceparent.carried`); ended with the error, as the
    SDK's ``use_span`` records one, if the send failed."""

    __slots__ = ("_messages",)

    def __init__(
        self,
        tracer: trace.Tracer,
        name: str,
        attributes: dict[str, Any],
        messages: Sequence[Message],
    ) -> None:
        super().__init__(tracer.start_span(name, kind=otel().producer, attributes=attributes))
        self._messages = messages

    def __enter__(self) -> None:
        super().__enter__()
        try:
            headers = carried(self._span)  # once: every message of the batch has this parent
        except BaseException as exc:  # (an app's propagator): as if it had failed inside
            self.__exit__(type(exc), exc, exc.__traceback__)
            raise
        for message in self._messages:
            message.headers.update(headers)

    def _end(self, error: BaseException | None) -> None:
        span = self._span
        if isinstance(error, Exception) and span.is_recording():
            _failed(span, error)
        span.end()


class _ProcessScope(_Scope):
    """The consumer span through the SDK (an app's own provider); the worker reports the
    task's failure in ``after_process``, not on leaving."""

    __slots__ = ()

    def __init__(
        self, tracer: trace.Tracer, name: str, attributes: dict[str, Any], message: Message
    ) -> None:
        api = otel()
        parent = remote_parent(message.headers)
        producer = span_context(parent) if parent is not None else None
        super().__init__(
            tracer.start_span(
                name,
                context=parent_context(parent, producer),
                kind=api.consumer,
                attributes=attributes,
                links=[api.link(producer)] if producer is not None else [],
                record_exception=False,
                set_status_on_exception=False,
            )
        )
