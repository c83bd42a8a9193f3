"""Lean consumer spans: the ``process <queue>`` span of a worker whose tracing Shoal set up.

The SDK builds a span from general parts (a sampler call with a parent ``Context``, attribute
validation, locks, a ``ReadableSpan`` copy at the end) for ~90 µs a task. A consumer span is
always the same shape, so :class:`ProcessSpans` builds it from the message directly: ids from
the provider's id generator, the decision from the provider's (standard) sampler
(:mod:`shoal.telemetry.sampling`), attributes encoded once per (queue, task)
(:class:`~shoal.telemetry.otlp.Shape`). It is a real ``opentelemetry.trace.Span``, current while
the task runs: the task's own spans nest under it, and ``trace.get_current_span()`` in a task
sets attributes, adds events and records exceptions on it, as on an SDK span.

A message that is not sampled (a parent that was not, or the ratio's decision) gets an
:class:`UnsampledSpan` instead: what propagation needs and nothing else, so that most messages
at 10 % cost little more than reading their ``traceparent``.

Safe to use from any thread: a span is entered and left in one context (the worker's ``with``),
ended once, encoded as it ends and queued for export as bytes through a thread-safe deque
(bytes are no work for the garbage collector; hundreds of live spans waiting for their
batch were).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import deque
from collections.abc import Mapping
from random import getrandbits
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.context import Context
from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Span, SpanContext, Status, StatusCode, TraceFlags

from shoal.telemetry import otlp
from shoal.telemetry.conventions import kept, process_attributes
from shoal.telemetry.traceparent import remote_parent, simple

if TYPE_CHECKING:
    from contextvars import ContextVar
    from types import TracebackType

    from opentelemetry.sdk.trace import SpanLimits
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.util import types

    from shoal.message import Message
    from shoal.telemetry.export import Pipeline
    from shoal.telemetry.sampling import Decider

log = logging.getLogger("shoal.telemetry")

_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, Context())))
"""The key OpenTelemetry keeps the current span under (made per process, read once)."""
_RUNTIME = getattr(otel_context, "_RUNTIME_CONTEXT", None)
_CONTEXT_VAR: ContextVar[Context] | None = (
    getattr(_RUNTIME, "_current_context", None)
    if type(_RUNTIME) is ContextVarsRuntimeContext
    else None
)
"""OpenTelemetry's current context, when it is its default ContextVar (else None: the public
attach and detach are used). Chosen when OpenTelemetry is imported (``OTEL_PYTHON_CONTEXT``),
so read once here."""

_FLAGS = {f"{n:02x}": n for n in range(256)}
"""Trace flags by their two hex digits (a dict look-up, not a parse)."""


class ProcessSpans:
    """Makes the consumer spans of one tracer provider that Shoal owns."""

    def __init__(
        self,
        pipeline: Pipeline,
        decider: Decider,
        ids: IdGenerator,
        limits: SpanLimits,
    ) -> None:
        self.pipeline = pipeline
        self.decider = decider
        self.ids = ids
        self.limits = limits
        self.random_ids = type(ids) is RandomIdGenerator
        """The SDK's default: its ids are ``random.getrandbits``, called here without it."""
        is_random = getattr(ids, "is_trace_id_random", None)  # OpenTelemetry >= 1.39
        self.random_root_flag = 2 if is_random is not None and is_random() else 0
        self.value_limit = limits.max_span_attribute_length
        self._shapes: dict[tuple[str, str], otlp.Shape] = {}
        self.encode_failures = 0

    def unencodable(self, span: ProcessSpan) -> None:
        """Count a span the encoder failed on (inside ``except``); log the first and every
        10,000th with the traceback: a bug must show, not flood the log once per task."""
        self.encode_failures += 1
        if self.encode_failures == 1 or self.encode_failures % 10_000 == 0:
            log.exception(
                "tracing: could not encode the span of message %s (%d spans so far)",
                span.message_id,
                self.encode_failures,
            )

    def shape(self, queue: str, task: str) -> otlp.Shape:
        return kept(self._shapes, (queue, task), self._new_shape)

    def _new_shape(self, queue: str, task: str) -> otlp.Shape:
        constant = process_attributes(queue, task)
        limit = self.value_limit
        if limit is not None:
            constant = {k: v[:limit] for k, v in constant.items()}
        return otlp.Shape(f"process {queue}", otlp.KIND_CONSUMER, constant)

    def start(self, message: Message, queue: str) -> ProcessSpan | UnsampledSpan:
        """The consumer span of ``message``; ``with`` it to make it current and end it.

        A message that is not sampled gets an :class:`UnsampledSpan`: only what the task's own
        spans and the messages it sends need (the trace id and flags; a span id when asked)."""
        decider = self.decider
        headers = message.headers
        if headers:
            value = simple(headers)
            trace_id = int(value[3:35], 16) if value is not None else 0
            if trace_id:  # the common case: a W3C traceparent alone, parsed in place
                flags = _FLAGS[value[53:55]]  # type: ignore[index]
                if decider.sample(trace_id, flags):
                    parent_id = int(value[36:52], 16)  # type: ignore[index]
                    flags = 1 | flags & 2
                    return ProcessSpan(self, queue, trace_id, parent_id, flags, None, message)
                return UnsampledSpan(self, trace_id, flags & 2, None)
            parent = remote_parent(headers)
            if parent is not None:
                trace_id, flags, state = parent.trace_id, parent.flags & 2, parent.trace_state
                if decider.sample(trace_id, parent.flags):
                    parent_id = parent.span_id
                    return ProcessSpan(self, queue, trace_id, parent_id, 1 | flags, state, message)
                return UnsampledSpan(self, trace_id, flags, state)
        trace_id = (getrandbits(128) if self.random_ids else 0) or self.ids.generate_trace_id()
        if decider.sample(trace_id, None):
            flags = 1 | self.random_root_flag
            return ProcessSpan(self, queue, trace_id, 0, flags, None, message)
        return UnsampledSpan(self, trace_id, self.random_root_flag, None)


class _Current:
    """Makes a span current for the ``with`` (the worker's scope) and restores the context
    after. When OpenTelemetry keeps its context in a ``ContextVar`` (its default runtime
    context), that variable is set directly: what ``context.attach(set_span_in_context(span))``
    and ``context.detach`` do, without their five calls per message."""

    __slots__ = ("_token",)
    _token: object

    def __enter__(self) -> Any:
        if self._token is None:
            var = _CONTEXT_VAR
            if var is not None:
                self._token = var.set(Context({**var.get(), _SPAN_KEY: self}))
            else:
                span: Any = self  # a Span: every subclass is one
                self._token = otel_context.attach(trace.set_span_in_context(span))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _restore(token)
        self.end()  # type: ignore[attr-defined]


def _restore(token: Any) -> None:
    """Undo a :meth:`_Current.__enter__`."""
    if _CONTEXT_VAR is not None:
        try:
            _CONTEXT_VAR.reset(token)
        except (ValueError, RuntimeError):  # left in another context: logged, as OTel does
            log.exception("Failed to detach context")
    else:
        otel_context.detach(token)


class UnsampledSpan(_Current, Span):
    """The consumer span of a message that is not sampled: current while the task runs, so
    the task's own spans and the messages it sends carry its trace, not sampled (the W3C
    rule); never recorded, never exported. Its span id is drawn on the first
    :meth:`get_span_context`: a task that makes no span and sends nothing never needs one."""

    __slots__ = ("_context", "_factory", "otel_state", "trace_flags", "trace_id")

    def __init__(self, factory: ProcessSpans, trace_id: int, flags: int, trace_state: Any) -> None:
        self._factory = factory
        self.trace_id = trace_id
        self.trace_flags = flags
        self.otel_state = trace_state
        self._context: SpanContext | None = None
        self._token: object = None

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            context = SpanContext(
                self.trace_id,
                self._factory.ids.generate_span_id(),
                is_remote=False,
                trace_flags=TraceFlags(self.trace_flags),
                trace_state=self.otel_state,
            )
            if self._context is None:  # no call in between: another thread's, if any, wins
                self._context = context
        return self._context or context

    def is_recording(self) -> bool:
        return False

    def end(self, end_time: int | None = None) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        pass

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        pass

    def add_event(
        self, name: str, attributes: types.Attributes = None, timestamp: int | None = None
    ) -> None:
        pass

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        pass

    def update_name(self, name: str) -> None:
        pass

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        pass

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        pass


class ProcessSpan(_Current, Span):
    """The consumer span of a sampled message: recording until it ends, then exported; the
    attribute and event API of an SDK span, applying the same limits."""

    __slots__ = (
        "_context",
        "_factory",
        "all_attributes",
        "attempt",
        "dropped_events",
        "end_time",
        "events",
        "links",
        "message_id",
        "name",
        "otel_state",
        "parent_id",
        "shape",
        "span_id",
        "start_time",
        "status_code",
        "status_description",
        "trace_flags",
        "trace_id",
    )

    def __init__(
        self,
        factory: ProcessSpans,
        queue: str,
        trace_id: int,
        parent_id: int,
        flags: int,
        trace_state: Any,
        message: Message,
    ) -> None:
        self._factory = factory
        self.trace_id = trace_id
        span_id = getrandbits(64) if factory.random_ids else 0
        self.span_id = span_id or factory.ids.generate_span_id()
        self.parent_id = parent_id
        self.trace_flags = flags
        self.otel_state = trace_state
        # (the cache read inline: a call to factory.shape per sampled message costs more)
        self.shape = factory._shapes.get((queue, message.task)) or factory.shape(
            queue, message.task
        )
        self.message_id = message.id[: factory.value_limit]
        self.attempt = message.attempt + 1
        self.start_time = time.time_ns()
        self.end_time: int | None = None
        self.name: str | None = None
        self.all_attributes: BoundedAttributes | None = None
        """None until a task sets an attribute: the encoder then uses the shape's bytes."""
        self.events: deque[tuple[str, BoundedAttributes, int, int]] | None = None
        self.links: list[tuple[int, int, BoundedAttributes, bool]] | None = None
        self.dropped_events = 0
        self.status_code = 0
        self.status_description: str | None = None
        self._context: SpanContext | None = None
        self._token: object = None

    # --- opentelemetry.trace.Span ------------------------------------------------------------

    @property
    def trace_state(self) -> str:
        return self.otel_state.to_header() if self.otel_state is not None else ""

    def get_span_context(self) -> SpanContext:
        if self._context is None:
            self._context = SpanContext(
                self.trace_id,
                self.span_id,
                is_remote=False,
                trace_flags=TraceFlags(self.trace_flags),
                trace_state=self.otel_state,
            )
        return self._context

    def is_recording(self) -> bool:
        return self.end_time is None  # only a sampled message gets one (else UnsampledSpan)

    def end(self, end_time: int | None = None) -> None:
        if self.end_time is not None:
            return
        self.end_time = end_time if end_time is not None else time.time_ns()
        try:  # encoded now (ended, it cannot change): the queue holds bytes, not live objects
            encoded = otlp.encode(self)
        except Exception:  # an encoder bug costs this span, never the task
            self._factory.unencodable(self)
            return
        self._factory.pipeline.submit(encoded)

    @property
    def dropped_attributes(self) -> int:
        return self.all_attributes.dropped if self.all_attributes is not None else 0

    def own_attributes(self) -> dict[str, Any]:
        """Every attribute Shoal sets on this span."""
        own = dict(self.shape.constant)
        own["messaging.message.id"] = self.message_id
        own["shoal.attempt"] = self.attempt
        return own

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: types.AnyValue) -> None:
        if not self.is_recording():
            return
        if self.all_attributes is None:  # from now on, the SDK's bounded mapping, as it fills
            limits = self._factory.limits
            self.all_attributes = BoundedAttributes(
                limits.max_span_attributes,
                self.own_attributes(),
                immutable=False,
                max_value_len=limits.max_span_attribute_length,
            )
        self.all_attributes[key] = value

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        if not self.is_recording():
            return
        limits = self._factory.limits
        if self.events is None:
            self.events = deque(maxlen=limits.max_events)
        elif self.events.maxlen is not None and len(self.events) == self.events.maxlen:
            self.dropped_events += 1  # the oldest goes, as in the SDK's bounded list
        bounded = BoundedAttributes(
            limits.max_event_attributes,
            attributes,
            max_value_len=limits.max_attribute_length,
        )
        when = timestamp if timestamp is not None else time.time_ns()
        self.events.append((name, bounded, when, bounded.dropped))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if not self.is_recording() or (not context.is_valid and not attributes):
            return
        limits = self._factory.limits
        if self.links is None:
            self.links = []
        if limits.max_links is not None and len(self.links) + 1 >= limits.max_links:
            return  # the producer link counts too
        bounded = BoundedAttributes(
            limits.max_link_attributes, attributes, max_value_len=limits.max_attribute_length
        )
        self.links.append((context.trace_id, context.span_id, bounded, context.is_remote))

    def update_name(self, name: str) -> None:
        if self.is_recording():
            self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if not self.is_recording() or self.status_code == StatusCode.OK.value:
            return  # ended (already encoded), or OK: final, as in the SDK
        if isinstance(status, Status):
            code, description = status.status_code, status.description
        else:
            code = status
        if code is StatusCode.UNSET:
            return
        self.status_code = code.value
        self.status_description = description if code is StatusCode.ERROR else None

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        module = type(exception).__module__
        qualname = type(exception).__qualname__
        recorded: dict[str, Any] = {
            "exception.type": f"{module}.{qualname}" if module != "builtins" else qualname,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        if attributes:
            recorded.update(attributes)
        self.add_event("exception", recorded, timestamp)
