"""The hook interface: a no-op base class, typed, in the order a message meets the hooks."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from shoal.message import Message
    from shoal.task import Task


@dataclass(slots=True)
class Outcome:
    """How a failed execution ends. Middleware may change it in ``after_failure``.

    The worker retries the message after ``retry_in_s`` seconds when it is set, otherwise it
    moves the message to the dead-letter queue with ``reason``."""

    exception: BaseException
    options: Mapping[str, Any] = field(default_factory=dict)
    """The message's effective options: its own, then the task's, then the queue defaults."""
    reason: str = "failed"
    retry_in_s: float | None = None


class Middleware:
    """Base class: override the hooks you need. ``task_options`` names the options it owns."""

    task_options: ClassVar[frozenset[str]] = frozenset()
    """Options ``@app.task(...)`` accepts on this middleware's behalf."""

    def validate_options(self, task_name: str, options: dict[str, Any]) -> None:
        """Raise ConfigurationError when one of this middleware's options has a wrong value."""

    # producer side
    def before_enqueue(self, task: Task[Any, Any], message: Message) -> None:
        """Before a message is sent; may add ``message.headers``."""

    def after_enqueue(self, task: Task[Any, Any], message: Message) -> None:
        """After a message was stored in Redis."""

    # worker side
    def before_worker_boot(self, worker: Any) -> None:
        """In each worker process, before it fetches anything."""

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
        """After the task function returned (``exception`` None) or raised."""

    def after_failure(
        self, task: Task[Any, Any] | None, message: Message, outcome: Outcome
    ) -> None:
        """After a failure, before the worker retries or dead-letters; may edit ``outcome``."""

    def before_worker_shutdown(self, worker: Any) -> None:
        """When a worker process starts draining."""
