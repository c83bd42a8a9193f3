"""A task: a function plus its options, and the handle an enqueue returns."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import orjson

from shoal.errors import EnqueueError, ResultTimeout, TaskFailed
from shoal.message import Message, new_message_id
from shoal.protocol import Outgoing
from shoal.protocol.results import decode_result
from shoal.settings import Seconds, to_seconds

if TYPE_CHECKING:
    from shoal.app import App
    from shoal.canvas import Signature

P = ParamSpec("P")
R = TypeVar("R")

WORKFLOW_KINDS = frozenset({"chain", "group", "chord", "task"})
"""The ``task_name`` of a workflow's handle (see :mod:`shoal.canvas`)."""


class Handle(Generic[R]):
    """What an enqueue returns at once: the message id, and a way to wait for the result."""

    __slots__ = ("app", "id", "queue", "task_name")

    def __init__(self, app: App, queue: str, task_name: str, message_id: str) -> None:
        self.app = app
        self.queue = queue
        self.task_name = task_name
        self.id = message_id

    def __repr__(self) -> str:
        return f"<Handle {self.task_name} id={self.id} queue={self.queue}>"

    def result(self, timeout: Seconds = 30.0) -> R:
        """Wait up to ``timeout`` seconds for the task's return value.

        Needs ``@app.task(store_result=True)``. Raises ResultTimeout when nothing arrives in time
        and TaskFailed when the message ended in the dead-letter queue."""
        timeout_s = to_seconds(timeout)
        raw = self.app.broker.wait_result(self.queue, self.id, timeout_s)
        if raw is None:
            wanted = (
                "every queue of the workflow"
                if self.task_name in WORKFLOW_KINDS
                else f"queue {self.queue!r}, and was the task declared with store_result=True"
            )
            raise ResultTimeout(
                f"no result for {self.task_name} {self.id} within {timeout_s:g}s; is a worker "
                f"consuming {wanted}?"
            )
        stored = decode_result(raw)
        if not stored.ok:
            raise TaskFailed(f"{self.task_name} {self.id} failed: {stored.error}")
        value: R = stored.value
        return value


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Per-message options, kept apart from the task's own arguments (see ``Task.options``)."""

    delay_s: float = 0.0
    timeout_s: float | None = None
    dedupe_key: str | None = None


_NOW = SendOptions()


class Task(Generic[P, R]):
    """A function registered with ``@app.task``. Calling it runs it here; ``enqueue`` sends it."""

    def __init__(
        self,
        app: App,
        fn: Callable[P, R] | Callable[P, Awaitable[R]],
        *,
        name: str,
        queue: str,
        store_result: bool,
        options: dict[str, Any],
    ) -> None:
        self.app = app
        self.fn = fn
        self.name = name
        self.queue = queue
        self.store_result = store_result
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Task {self.name} queue={self.queue}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Any:
        return self.fn(*args, **kwargs)

    def accepts(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bool:
        """Whether the function can be called with these arguments (asked only after a
        TypeError, to tell a call that did not fit from the task's own TypeError)."""
        try:
            inspect.signature(self.fn).bind(*args, **kwargs)
        except TypeError:
            return False
        except ValueError:  # no signature to check (some builtins): assume it fits
            return True
        return True

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        """Send one message; returns once Redis has stored it.

        Raises EnqueueError for arguments that cannot be sent, RedisFull when Redis is out of
        memory, BrokerError when it cannot be reached (nothing stored in these cases), and
        EnqueueOutcomeUnknown when the connection failed after the message was sent: it may
        have been stored, so enqueue again only with a ``dedupe_key`` (README, "Dedupe")."""
        return Sender(self, _NOW).enqueue(*args, **kwargs)

    def enqueue_many(self, calls: Iterable[tuple[Any, ...] | Mapping[str, Any]]) -> list[Handle[R]]:
        """Send a batch in one round trip: each item is an args tuple or a kwargs mapping."""
        return Sender(self, _NOW).enqueue_many(calls)

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature for workflows: ``chain(add.s(1), double.s())``. In a chain, the previous
        step's result comes first, before ``args``."""
        from shoal.canvas import Signature

        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: it ignores the previous step's result."""
        from shoal.canvas import Signature

        return Signature(self, args, kwargs, immutable=True)

    def with_options(
        self,
        *,
        delay: Seconds = 0.0,
        eta: datetime | None = None,
        timeout: Seconds | None = None,
        dedupe_key: str | None = None,
    ) -> Sender[P, R]:
        """Per-message options: ``task.with_options(delay=60).enqueue(...)``.

        ``delay`` (seconds) or ``eta`` (an aware datetime) hold the message in Redis until due;
        ``timeout`` overrides the task's timeout for these messages; while a message with the
        same ``dedupe_key`` is waiting, delayed or running, enqueueing returns its handle
        instead of a duplicate."""
        delay_s = to_seconds(delay)
        if eta is not None:
            if eta.tzinfo is None:
                raise EnqueueError(f"task {self.name!r}: eta must be timezone-aware, got {eta!r}")
            delay_s = max(delay_s, (eta - datetime.now(eta.tzinfo)) / timedelta(seconds=1))
        timeout_s = None if timeout is None else to_seconds(timeout)
        return Sender(self, SendOptions(max(0.0, delay_s), timeout_s, dedupe_key or None))


class Sender(Generic[P, R]):
    """A task bound to per-message options; builds, checks and sends envelopes."""

    __slots__ = ("send", "task")

    def __init__(self, task: Task[P, R], send: SendOptions) -> None:
        self.task = task
        self.send = send

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        return self._send([(list(args), dict(kwargs))])[0]

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A workflow step with these options: ``task.with_options(timeout=5).s()``."""
        return self._signature(args, kwargs, immutable=False)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable workflow step with these options (see :meth:`Task.si`)."""
        return self._signature(args, kwargs, immutable=True)

    def _signature(
        self, args: tuple[Any, ...], kwargs: dict[str, Any], immutable: bool
    ) -> Signature:
        from shoal.canvas import Signature

        if self.send.delay_s or self.send.dedupe_key:
            raise EnqueueError(
                f"task {self.task.name!r}: a workflow step takes timeout= only; delay, eta and "
                "dedupe_key apply to a whole enqueue (delay the workflow's producer instead)"
            )
        options = {} if self.send.timeout_s is None else {"timeout": self.send.timeout_s}
        return Signature(self.task, args, kwargs, immutable=immutable, options=options)

    def enqueue_many(self, calls: Iterable[tuple[Any, ...] | Mapping[str, Any]]) -> list[Handle[R]]:
        batch: list[tuple[list[Any], dict[str, Any]]] = []
        for call in calls:
            if isinstance(call, Mapping):
                batch.append(([], dict(call)))
            elif isinstance(call, tuple | list):
                batch.append((list(call), {}))
            else:
                raise EnqueueError(
                    f"task {self.task.name!r}: enqueue_many takes args tuples or kwargs dicts, "
                    f"got {type(call).__name__}: wrap a single argument as ({call!r},)"
                )
        return self._send(batch) if batch else []

    def _send(self, batch: list[tuple[list[Any], dict[str, Any]]]) -> list[Handle[R]]:
        task, app = self.task, self.task.app
        now = time.time()
        send = self.send
        options: dict[str, Any] = {}
        if send.timeout_s is not None:
            options["timeout"] = send.timeout_s
        if send.dedupe_key is not None:
            options["dedupe_key"] = send.dedupe_key
        delay_ms = int(send.delay_s * 1000)
        messages = [
            Message(new_message_id(), task.name, task.queue, args, kwargs, now, options=options)
            for args, kwargs in batch
        ]
        hooks = app.hooks
        with hooks.context("enqueue_context", task, messages):
            items = encode_batch(task, messages, delay_ms, send.dedupe_key)
            ids = app.broker.enqueue(task.queue, items, task=task.name)
        hooks.emit("after_enqueue", task, messages)
        return [Handle(app, task.queue, task.name, mid) for mid in ids]


def encode_batch(
    task: Task[Any, Any],
    messages: Sequence[Message],
    delay_ms: int = 0,
    dedupe_key: str | None = None,
) -> list[Outgoing]:
    """Encode, size-check and sign messages for the broker (call inside the ``enqueue_context``
    hook, which adds the trace headers). Raises EnqueueError naming the offending argument."""
    seal = task.app.signer.seal
    return [(m.id, delay_ms, seal(_encode(task, m)), dedupe_key) for m in messages]


def _encode(task: Task[Any, Any], message: Message) -> bytes:
    limit = task.app.settings.max_message_bytes
    try:
        body = message.encode()
    except TypeError:
        raise EnqueueError(_describe_bad_argument(task, message)) from None
    if len(body) > limit:
        name, size = max(_argument_sizes(message), key=lambda item: item[1])
        raise EnqueueError(
            f"task {task.name!r}: message is {len(body)} bytes, over the "
            f"{limit}-byte limit (largest argument: {name}, {size} bytes). Store big data "
            "elsewhere and pass a reference, or raise SHOAL_MAX_MESSAGE_BYTES."
        )
    return body


def _describe_bad_argument(task: Task[Any, Any], message: Message) -> str:
    for name, value in _arguments(message):
        try:
            orjson.dumps(value)
        except TypeError as exc:
            return (
                f"task {task.name!r}: argument {name} ({type(value).__name__}) is not "
                f"JSON-serialisable ({exc}); pass plain data (str, int, float, bool, None, "
                "list, dict) or an id to load it in the task"
            )
    return f"task {task.name!r}: the message headers are not JSON-serialisable"


def _arguments(message: Message) -> Iterable[tuple[str, Any]]:
    yield from ((f"args[{i}]", v) for i, v in enumerate(message.args))
    yield from ((f"{k}=", v) for k, v in message.kwargs.items())


def _argument_sizes(message: Message) -> list[tuple[str, int]]:
    return [(name, len(orjson.dumps(value))) for name, value in _arguments(message)] or [("-", 0)]
