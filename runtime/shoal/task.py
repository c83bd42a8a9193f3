"""A task: a function plus its options; the handle an enqueue returns; the send pipeline.

The :class:`Producer` is the one way a message goes out to Redis. Every message (a task's
enqueue, a workflow's steps, a schedule's tick) takes the same path: the ``enqueue_context``
hooks open around the batch (tracing adds its headers there), each envelope is encoded and
size-checked, sealed by the signer, and the batch is stored in one script call;
``after_enqueue`` follows once Redis has stored it. When no middleware hooks sending, a task's
enqueue builds no :class:`Message` and runs no hooks: it encodes the envelope straight from its
arguments (the same bytes). Tasks, workflows, schedules and the DLQ depend on a Producer, not on
the :class:`~shoal.app.App` that builds it.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

import orjson

from shoal.errors import DecodeError, EnqueueError, ResultTimeout, TaskFailed, TaskNotFound
from shoal.message import Message, encode_envelope, message_id_at, new_message_id
from shoal.middleware.hooks import Hooks
from shoal.priority import DEFAULT_PRIORITY
from shoal.priority import checked as checked_priority
from shoal.priority import offset_ms as priority_offset_ms
from shoal.protocol import AsyncBroker, Broker, Guard, Outgoing
from shoal.protocol.results import decode_result, encode_cancelled
from shoal.settings import Seconds, Settings, to_seconds
from shoal.signing import BadSignature, Signer
from shoal.task_progress import Progress

if TYPE_CHECKING:
    from shoal.canvas import Signature
    from shoal.task_status import TaskStatus

P = ParamSpec("P")
R = TypeVar("R")

EXPIRES_AT = "expires_at"
"""The envelope option a message with ``expires`` carries: the Unix time it must start by."""

WORKFLOW_KINDS = frozenset({"chain", "group", "chord", "task"})
"""The ``task_name`` of a workflow's handle (see :mod:`shoal.canvas`)."""


class Handle(Generic[R]):
    """What an enqueue returns at once: the message id, and a way to wait for the result."""

    __slots__ = ("id", "producer", "queue", "task_name")

    def __init__(self, producer: Producer, queue: str, task_name: str, message_id: str) -> None:
        self.producer = producer
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
        raw = self.producer.broker.wait_result(self.queue, self.id, timeout_s)
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

    def status(self) -> TaskStatus:
        """Where the message is now: ``waiting``, ``delayed``, ``running``, ``retrying``,
        ``succeeded``, ``failed``, ``dead``, ``cancelled`` or ``unknown`` (see
        :mod:`shoal.task_status`), with the attempt, the worker running it and its progress."""
        return self.producer.status(self.queue, self.id)

    def cancel(self) -> str:
        """Make sure the message never runs (again): a waiting or delayed one is removed at
        once; a running one is stopped by its worker within a heartbeat (an async task is
        cancelled, a sync one gets the soft-timeout exception). Its outcome is ``cancelled``,
        never retried. Returns what it was: ``waiting``, ``delayed``, ``running`` or ``gone``
        (already finished: nothing to cancel)."""
        return self.producer.cancel(self.queue, self.id)

    def progress(self) -> Progress | None:
        """The task's last ``shoal.progress()`` report, or None."""
        raw = self.producer.broker.progress(self.queue, self.id)
        return None if raw is None else Progress.from_json(raw)


@dataclass(frozen=True, slots=True)
class SendOptions:
    """Per-message options, kept apart from the task's own arguments (see ``Task.options``)."""

    delay_s: float = 0.0
    timeout_s: float | None = None
    dedupe_key: str | None = None
    expires_s: float | None = None
    priority: int | None = None
    """None: the task's ``priority`` option, else the default."""

    @property
    def delay_ms(self) -> int:
        return int(self.delay_s * 1000)

    def message_options(self) -> dict[str, Any]:
        """What the envelope's ``options`` carry (a fresh dict: middleware may edit it)."""
        options: dict[str, Any] = {}
        if self.timeout_s is not None:
            options["timeout"] = self.timeout_s
        if self.dedupe_key is not None:
            options["dedupe_key"] = self.dedupe_key
        if self.expires_s is not None:  # from now: the delay is part of the time allowed
            options[EXPIRES_AT] = round(time.time() + self.expires_s, 3)
        return options


_NOW = SendOptions()
_EMPTY: dict[str, Any] = {}
"""The ``headers`` and ``options`` a plain enqueue encodes (only ever read)."""


class Task(Generic[P, R]):
    """A function registered with ``@app.task``. Calling it runs it here; ``enqueue`` sends it."""

    def __init__(
        self,
        producer: Producer,
        fn: Callable[P, R] | Callable[P, Awaitable[R]],
        *,
        name: str,
        queue: str,
        store_result: bool,
        options: dict[str, Any],
    ) -> None:
        self.producer = producer
        """How this task's messages are sent (its App's send pipeline)."""
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

    def on_queue(self, queue: str) -> Task[P, R]:
        """This task, its messages sent to ``queue`` instead of its own."""
        return Task(
            self.producer,
            self.fn,
            name=self.name,
            queue=queue,
            store_result=self.store_result,
            options=self.options,
        )

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
        producer = self.producer
        message_id = producer.send_one(self, args, kwargs, _NOW)
        return Handle(producer, self.queue, self.name, message_id)

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
        expires: Seconds | None = None,
        priority: int | None = None,
    ) -> Sender[P, R]:
        """Per-message options: ``task.with_options(delay=60).enqueue(...)``.

        ``delay`` (seconds) or ``eta`` (an aware datetime) hold the message in Redis until due;
        ``timeout`` overrides the task's timeout for these messages; while a message with the
        same ``dedupe_key`` is waiting, delayed or running, enqueueing returns its handle
        instead of a duplicate; a message not started within ``expires`` seconds of its enqueue
        never runs: it goes to the dead-letter queue as ``expired`` (retries of a message that
        started are not affected); ``priority`` (0-9, lower runs first, default 5: see
        :mod:`shoal.priority`) orders it among the waiting messages of its queue."""
        delay_s = to_seconds(delay)
        if eta is not None:
            if eta.tzinfo is None:
                raise EnqueueError(f"task {self.name!r}: eta must be timezone-aware, got {eta!r}")
            delay_s = max(delay_s, (eta - datetime.now(eta.tzinfo)) / timedelta(seconds=1))
        timeout_s = None if timeout is None else to_seconds(timeout)
        expires_s = None if expires is None else to_seconds(expires)
        if expires_s is not None and expires_s <= 0:
            raise EnqueueError(
                f"task {self.name!r}: expires must be a positive number of seconds, got {expires!r}"
            )
        if priority is not None:
            checked_priority(priority, f"task {self.name!r}")
        send = SendOptions(max(0.0, delay_s), timeout_s, dedupe_key or None, expires_s, priority)
        return Sender(self, send)


class Sender(Generic[P, R]):
    """A task bound to per-message options; builds, checks and sends envelopes."""

    __slots__ = ("send", "task")

    def __init__(self, task: Task[P, R], send: SendOptions) -> None:
        self.task = task
        self.send = send

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> Handle[R]:
        task = self.task
        producer = task.producer
        message_id = producer.send_one(task, args, kwargs, self.send)
        return Handle(producer, task.queue, task.name, message_id)

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

        send = self.send
        if (
            send.delay_s
            or send.dedupe_key
            or send.expires_s is not None
            or send.priority is not None
        ):
            raise EnqueueError(
                f"task {self.task.name!r}: a workflow step takes timeout= only; delay, eta, "
                "expires, priority and dedupe_key apply to a whole enqueue (delay the workflow's "
                "producer instead)"
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
        task, send = self.task, self.send
        now = time.time()
        options = send.message_options()
        messages = [
            Message(new_message_id(), task.name, task.queue, args, kwargs, now, options=options)
            for args, kwargs in batch
        ]
        producer = task.producer
        ids = producer.send(
            task,
            messages,
            delay_ms=send.delay_ms,
            dedupe_key=send.dedupe_key,
            priority=send.priority,
        )
        return [Handle(producer, task.queue, task.name, mid) for mid in ids]


class Producer:
    """Settings, signer, hooks, the known tasks and the lazily opened blocking Redis client:
    what sending a message needs, and nothing else of the App."""

    def __init__(
        self,
        settings: Settings,
        signer: Signer,
        hooks: Hooks,
        tasks: Mapping[str, Task[..., Any]],
    ) -> None:
        self.settings = settings
        self.signer = signer
        self.hooks = hooks
        """The App's hooks; replaced when middleware is added."""
        self.tasks = tasks
        """The App's registry (the same mapping, so tasks declared later are found)."""
        self._broker: Broker | None = None

    @property
    def broker(self) -> Broker:
        """The blocking Redis client, opened on first use."""
        if self._broker is None:
            self._broker = Broker(self.settings)
        return self._broker

    def close(self) -> None:
        if self._broker is not None:
            self._broker.close()
            self._broker = None

    # --- which task sends ---------------------------------------------------------------------

    def remote(self, name: str, queue: str) -> Task[..., Any]:
        """A stand-in for a task this process does not define, to send it by name."""

        def not_here(*_: Any, **__: Any) -> Any:
            raise TaskNotFound(f"task {name!r} runs on workers; this process only enqueues it")

        return Task(self, not_here, name=name, queue=queue, store_result=False, options={})

    def task_on(self, name: str, queue: str) -> Task[..., Any]:
        """The task that sends ``name`` to ``queue``: this process's own (bound to ``queue``
        when it is declared on another one), else a stand-in."""
        task = self.tasks.get(name)
        if task is None:
            return self.remote(name, queue)
        return task if task.queue == queue else task.on_queue(queue)

    # --- task control ---------------------------------------------------------------------

    def status(self, queue: str, message_id: str) -> TaskStatus:
        """One message's status (see :mod:`shoal.task_status`)."""
        from shoal.task_status import read_status

        where = self.broker.status(queue, message_id)
        return read_status(queue, message_id, where, self._open, self.broker.workers)

    def _open(self, data: bytes) -> Message | None:
        try:
            return Message.decode(self.signer.open(data))
        except (BadSignature, DecodeError):
            return None

    def cancel(self, queue: str, message_id: str) -> str:
        """Cancel one message (see :meth:`Handle.cancel`)."""
        return self.broker.cancel(queue, message_id, encode_cancelled("before it ran"))

    # --- sending ------------------------------------------------------------------------------

    def send_one(
        self, task: Task[..., Any], args: Sequence[Any], kwargs: dict[str, Any], send: SendOptions
    ) -> str:
        """Send one call of ``task`` (``task.enqueue``); returns its message id (for a
        deduplicated message, the live one's). The same hooks, checks and errors as
        :meth:`send`, without a Message or the hooks when no middleware hooks sending."""
        if self.hooks.sending():
            message = Message(
                new_message_id(),
                task.name,
                task.queue,
                list(args),
                kwargs,
                time.time(),
                options=send.message_options(),
            )
            return self.send(
                task,
                [message],
                delay_ms=send.delay_ms,
                dedupe_key=send.dedupe_key,
                priority=send.priority,
            )[0]
        if send is _NOW:
            options, delay_ms, dedupe_key = _EMPTY, 0, None
        else:
            options, delay_ms, dedupe_key = send.message_options(), send.delay_ms, send.dedupe_key
        now_ns = time.time_ns()
        message_id = message_id_at(now_ns)
        enqueued_at = now_ns / 1e9
        try:
            body = encode_envelope(
                message_id, task.name, task.queue, args, kwargs, enqueued_at, 0, _EMPTY, options
            )
        except TypeError:
            message = Message(message_id, task.name, task.queue, list(args), kwargs, enqueued_at)
            raise EnqueueError(_describe_bad_argument(task.name, message)) from None
        if len(body) > self.settings.max_message_bytes:
            message = Message(message_id, task.name, task.queue, list(args), kwargs, enqueued_at)
            raise self._too_big(task, message, body)
        item = (message_id, delay_ms, self.signer.seal(body), dedupe_key)
        priority_ms = self._priority_ms(task, send.priority)
        return self.broker.enqueue(task.queue, [item], task=task.name, priority_ms=priority_ms)[0]

    def _priority_ms(self, task: Task[..., Any], priority: int | None) -> int | None:
        """The score offset of a message of ``task`` sent with ``priority`` (None: default)."""
        if priority is None:
            priority = task.options.get("priority", DEFAULT_PRIORITY)
            if priority == DEFAULT_PRIORITY:
                return None
        return priority_offset_ms(priority, self.settings.priority_aging_s)

    def send(
        self,
        task: Task[..., Any],
        messages: Sequence[Message],
        *,
        delay_ms: int = 0,
        dedupe_key: str | None = None,
        priority: int | None = None,
    ) -> list[str]:
        """Send a batch of ``task``'s messages to its queue in one round trip; returns each
        one's id (for a deduplicated message, the live one's). See ``Broker.enqueue`` for the
        errors."""
        hooks = self.hooks
        priority_ms = self._priority_ms(task, priority)
        if not hooks.sending():
            items = self.encode(task, messages, delay_ms, dedupe_key)
            return self.broker.enqueue(task.queue, items, task=task.name, priority_ms=priority_ms)
        with hooks.context("enqueue_context", task, messages):
            items = self.encode(task, messages, delay_ms, dedupe_key)
            ids = self.broker.enqueue(task.queue, items, task=task.name, priority_ms=priority_ms)
        hooks.emit("after_enqueue", task, messages)
        return ids

    async def send_async(
        self,
        broker: AsyncBroker,
        task: Task[..., Any],
        messages: Sequence[Message],
        guard: Guard,
        hooks: Hooks | None = None,
    ) -> list[str] | None:
        """Send a guarded batch from a worker's event loop; None (and nothing stored, no
        ``after_enqueue``) when the guard refuses. ``hooks``: the worker's, when not the App's."""
        hooks = self.hooks if hooks is None else hooks
        if not hooks.sending():
            return await broker.enqueue(task.queue, self.encode(task, messages), guard)
        with hooks.context("enqueue_context", task, messages):
            items = self.encode(task, messages)
            ids = await broker.enqueue(task.queue, items, guard)
        if ids is not None:
            hooks.emit("after_enqueue", task, messages)
        return ids

    def encode(
        self,
        task: Task[..., Any],
        messages: Sequence[Message],
        delay_ms: int = 0,
        dedupe_key: str | None = None,
    ) -> list[Outgoing]:
        """Encode, size-check and seal messages (inside the ``enqueue_context`` hooks, which
        add the trace headers). Raises EnqueueError naming the offending argument."""
        seal = self.signer.seal
        return [(m.id, delay_ms, seal(self._encode(task, m)), dedupe_key) for m in messages]

    def _encode(self, task: Task[..., Any], message: Message) -> bytes:
        limit = self.settings.max_message_bytes
        try:
            body = message.encode()
        except TypeError:
            raise EnqueueError(_describe_bad_argument(task.name, message)) from None
        if len(body) > limit:
            raise self._too_big(task, message, body)
        return body

    def _too_big(self, task: Task[..., Any], message: Message, body: bytes) -> EnqueueError:
        limit = self.settings.max_message_bytes
        name, size = max(_argument_sizes(message), key=lambda item: item[1])
        return EnqueueError(
            f"task {task.name!r}: message is {len(body)} bytes, over the "
            f"{limit}-byte limit (largest argument: {name}, {size} bytes). Store big data "
            "elsewhere and pass a reference, or raise SHOAL_MAX_MESSAGE_BYTES."
        )


def _describe_bad_argument(task_name: str, message: Message) -> str:
    for name, value in _arguments(message):
        try:
            orjson.dumps(value)
        except TypeError as exc:
            return (
                f"task {task_name!r}: argument {name} ({type(value).__name__}) is not "
                f"JSON-serialisable ({exc}); pass plain data (str, int, float, bool, None, "
                "list, dict) or an id to load it in the task"
            )
    return f"task {task_name!r}: the message headers are not JSON-serialisable"


def _arguments(message: Message) -> Iterable[tuple[str, Any]]:
    yield from ((f"args[{i}]", v) for i, v in enumerate(message.args))
    yield from ((f"{k}=", v) for k, v in message.kwargs.items())


def _argument_sizes(message: Message) -> list[tuple[str, int]]:
    return [(name, len(orjson.dumps(value))) for name, value in _arguments(message)] or [("-", 0)]
