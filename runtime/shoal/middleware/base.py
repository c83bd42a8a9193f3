"""The hook interface: a no-op base class, typed, in the order a message meets the hooks."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from shoal.reasons import Reason

if TYPE_CHECKING:
    from collections.abc import Callable

    from shoal.message import Message
    from shoal.task import Task

Hook = TypeVar("Hook", bound="Callable[..., None]")

FAILURES_ONLY = "shoal_failures_only"
"""The attribute :func:`failures_only` sets on a hook."""


def failures_only(hook: Hook) -> Hook:
    """Mark an ``after_process`` that does nothing when the task returned: the worker then
    calls it only for failures and stops, not once per successful task. A subclass that
    overrides the method without the mark is called for every task again."""
    setattr(hook, FAILURES_ONLY, True)
    return hook


@dataclass(slots=True)
class Outcome:
    """How a failed execution ends. Middleware may change it in ``after_failure``.

    The worker retries the message after ``retry_in_s`` seconds when it is set, otherwise it
    moves the message to the dead-letter queue with ``reason``."""

    exception: BaseException
    options: Mapping[str, Any] = field(default_factory=dict)
    """The message's effective options: its own, then the task's, then the queue defaults."""
    reason: Reason = "failed"
    retry_in_s: float | None = None


class Middleware:
    """Base class: override the hooks you need; the others cost nothing.

    ``*_context`` hooks return a context manager wrapped around the whole step (tracing uses
    them to keep a span current); ``before_*`` hooks run in list order, ``after_*`` in reverse."""

    task_options: ClassVar[frozenset[str]] = frozenset()
    """Options ``@app.task(...)`` accepts on this middleware's behalf."""

    def validate_options(self, task_name: str, options: dict[str, Any]) -> None:
        """Raise ConfigurationError when one of this middleware's options has a wrong value."""

    def active_in_worker(self) -> bool:
        """Asked once per worker process, after ``before_worker_boot``: False drops this
        middleware from the worker's per-message hooks (so a disabled feature costs nothing)."""
        return True

    def active_for_sending(self) -> bool:
        """Asked before each send: False says this middleware needs no enqueue hooks for it;
        when no middleware needs them, the producer skips the hooks (and the Message objects
        they take) entirely. When another one does, every middleware's hooks run, so they must
        still do the right thing when called. Must be cheap. (A subclass of ``Tracing``
        inherits its answer: no tracer provider, no send hooks; override this to have yours
        run regardless.)"""
        return True

    # --- producer side ---------------------------------------------------------------------------

    def enqueue_context(
        self, task: Task[Any, Any], messages: Sequence[Message]
    ) -> contextlib.AbstractContextManager[None]:
        """Wraps sending a batch (one message or many); may add ``message.headers``."""
        return contextlib.nullcontext()

    def after_enqueue(self, task: Task[Any, Any], messages: Sequence[Message]) -> None:
        """After Redis stored the batch."""

    def workflow_context(
        self, kind: str, workflow_id: str, messages: Sequence[Message]
    ) -> contextlib.AbstractContextManager[None]:
        """Wraps sending a workflow's first messages (each batch in its ``enqueue_context``)."""
        return contextlib.nullcontext()

    # --- worker side -----------------------------------------------------------------------------

    def before_worker_boot(self, worker: Any) -> None:
        """In each worker process, before it fetches anything."""

    def process_context(
        self, task: Task[Any, Any] | None, message: Message, queue: str
    ) -> contextlib.AbstractContextManager[None]:
        """Wraps a message's whole handling, from start to its verdict (ack, retry or DLQ).

        ``task`` is None for a message rejected before it could run (unknown task)."""
        return contextlib.nullcontext()

    def before_process(self, task: Task[Any, Any], message: Message) -> None:
        """Just before the task function runs."""

    def after_process(
        self,
        task: Task[Any, Any],
        message: Message,
        *,
        result: Any,
        exception: BaseException | None,
    ) -> None:
        """After the task function returned (``exception`` None) or raised, or the worker
        stopped it; mark it :func:`failures_only` when it has nothing to do on success."""

    def after_failure(
        self, task: Task[Any, Any] | None, message: Message, outcome: Outcome
    ) -> None:
        """After a failure, before the worker retries or dead-letters; may edit ``outcome``."""

    def after_retry(self, task: Task[Any, Any], message: Message, delay_s: float) -> None:
        """After a failed message was put back to run again in ``delay_s`` seconds."""

    def after_dead_letter(
        self, queue: str, message: Message | None, reason: str, error: BaseException
    ) -> None:
        """After a message went to the dead-letter queue (``message`` None: not decodable)."""

    def before_worker_shutdown(self, worker: Any) -> None:
        """When a worker process starts draining."""

    def after_worker_shutdown(self, worker: Any) -> None:
        """When a worker process has handed everything back; flush buffers here."""
