"""OpenTelemetry tracing, following the messaging semantic conventions.

Enqueue opens a PRODUCER span ``send <queue>`` (one per batch) and writes the W3C trace context
into each message's headers. Execution opens a CONSUMER span ``process <queue>``: a child of the
producer span with a link to it, current while the task runs, so the task's own spans nest
under it. Each retry is a new CONSUMER span in the same trace; retries and dead letters are span
events. With no tracer provider configured every hook returns at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from shoal import telemetry
from shoal.middleware.base import Middleware
from shoal.version import __version__

if TYPE_CHECKING:
    from shoal.message import Message
    from shoal.task import Task

SYSTEM = "shoal"


def _common(queue: str, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
    }


class Tracing(Middleware):
    """Spans for enqueue and execution; owns the SDK setup of worker processes.

    Uses the global tracer provider unless given one (``Tracing(tracer_provider=...)``)."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._provider = tracer_provider
        self._owned: telemetry.OwnedProvider | None = None
        self._cached: trace.Tracer | None = None

    def _enabled(self) -> bool:
        return self._provider is not None or telemetry.tracing_configured()

    def active_in_worker(self) -> bool:
        # Decided once the worker booted (and set up OTLP export if asked to): with no tracer
        # provider, this middleware leaves the worker's per-message path entirely.
        return self._enabled()

    def _tracer(self) -> trace.Tracer:
        if self._cached is None:  # the provider is fixed once real: build its tracer once
            tracer = trace.get_tracer(telemetry.TRACER_NAME, __version__, self._provider)
            if not self._enabled():
                return tracer
            self._cached = tracer
        return self._cached

    # --- producer ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _send_span(self, task: Task[Any, Any], messages: Sequence[Message]) -> Iterator[None]:
        attributes = _common(task.queue, "send")
        attributes["shoal.task.name"] = task.name
        if len(messages) == 1:
            attributes["messaging.message.id"] = messages[0].id
        else:
            attributes["messaging.batch.message_count"] = len(messages)
        with self._tracer().start_as_current_span(
            f"send {task.queue}", kind=SpanKind.PRODUCER, attributes=attributes
        ):
            for message in messages:
                propagate.inject(message.headers)
            yield

    def enqueue_context(
        self, task: Task[Any, Any], messages: Sequence[Message]
    ) -> contextlib.AbstractContextManager[None]:
        if not self._enabled():
            return contextlib.nullcontext()
        return self._send_span(task, messages)

    @contextlib.contextmanager
    def _workflow_span(
        self, kind: str, workflow_id: str, messages: Sequence[Message]
    ) -> Iterator[None]:
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

    @contextlib.contextmanager
    def _process_span(
        self, task: Task[Any, Any] | None, message: Message, queue: str
    ) -> Iterator[None]:
        parent = propagate.extract(message.headers)
        producer = trace.get_current_span(parent).get_span_context()
        attributes = _common(queue, "process")
        attributes["messaging.message.id"] = message.id
        attributes["shoal.task.name"] = message.task
        attributes["shoal.attempt"] = message.attempt + 1
        links = [Link(producer)] if producer.is_valid else []
        with self._tracer().start_as_current_span(
            f"process {queue}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=links,
            record_exception=False,  # the worker reports task failures in after_process
            set_status_on_exception=False,
        ):
            yield

    def process_context(
        self, task: Task[Any, Any] | None, message: Message, queue: str
    ) -> contextlib.AbstractContextManager[None]:
        if not self._enabled():
            return contextlib.nullcontext()
        return self._process_span(task, message, queue)

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
        span = trace.get_current_span()
        span.record_exception(exception)
        span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))

    def after_retry(self, task: Task[Any, Any], message: Message, delay_s: float) -> None:
        trace.get_current_span().add_event(
            "retry scheduled",
            {"shoal.retry.delay_s": delay_s, "shoal.attempt": message.attempt + 1},
        )

    def after_dead_letter(
        self, queue: str, message: Message | None, reason: str, error: BaseException
    ) -> None:
        span = trace.get_current_span()
        span.add_event(
            "dead-lettered",
            {
                "shoal.dlq.reason": reason,
                "exception.type": type(error).__qualname__,
                "exception.message": str(error),
            },
        )
        span.set_status(Status(StatusCode.ERROR, f"dead-lettered: {reason}"))
