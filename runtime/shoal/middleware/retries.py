"""Retries with exponential backoff and full jitter; the delay waits in Redis, never in memory."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any, ClassVar

from shoal.errors import ConfigurationError, Retry
from shoal.middleware.base import Middleware, Outcome
from shoal.settings import to_seconds

if TYPE_CHECKING:
    from shoal.message import Message
    from shoal.task import Task


def backoff_s(attempt: int, min_s: float, max_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number ``attempt`` (1-based): uniform in [min, min·2^(attempt-1)],
    capped at ``max_s``. Full jitter spreads a thundering herd of failures over time."""
    ceiling = min(max_s, min_s * (2 ** max(0, attempt - 1)))
    return (rng or _rng).uniform(min_s, max(min_s, ceiling))


_rng = random.Random()


class Retries(Middleware):
    """Decides whether a failed message is retried, and after how long.

    ``rng`` makes the jitter reproducible (tests); the default is a private Random."""

    task_options: ClassVar[frozenset[str]] = frozenset(
        {"max_retries", "min_backoff", "max_backoff", "retry_on", "no_retry_on"}
    )

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or _rng

    def validate_options(self, task_name: str, options: dict[str, Any]) -> None:
        retries = options.get("max_retries")
        if retries is not None and (not isinstance(retries, int) or retries < 0):
            raise ConfigurationError(
                f"task {task_name!r}: max_retries must be an int >= 0, got {retries!r}"
            )
        for name in ("retry_on", "no_retry_on"):
            kinds = options.get(name)
            if kinds is not None and not (
                isinstance(kinds, tuple) and all(isinstance(k, type) for k in kinds)
            ):
                raise ConfigurationError(
                    f"task {task_name!r}: {name} must be a tuple of exception classes"
                )
        for name in ("min_backoff", "max_backoff"):
            if name in options:
                options[name] = to_seconds(options[name])

    def after_failure(
        self, task: Task[Any, Any] | None, message: Message, outcome: Outcome
    ) -> None:
        if task is None or outcome.reason != "failed":
            return
        exc = outcome.exception
        opts = outcome.options
        settings = task.producer.settings
        max_retries = opts.get("max_retries", settings.default_max_retries)
        if isinstance(exc, Retry):
            if message.attempt < max_retries:
                outcome.retry_in_s = exc.delay
            else:
                outcome.reason = "retries_exhausted"
            if outcome.retry_in_s is not None:
                return
        retry_on = opts.get("retry_on")
        no_retry_on = opts.get("no_retry_on")
        if (retry_on and not isinstance(exc, retry_on)) or (
            no_retry_on and isinstance(exc, no_retry_on)
        ):
            outcome.reason = "not_retryable"
            return
        if message.attempt >= max_retries:
            outcome.reason = "retries_exhausted"
            return
        outcome.retry_in_s = backoff_s(
            message.attempt + 1,
            opts.get("min_backoff", settings.min_backoff_s),
            opts.get("max_backoff", settings.max_backoff_s),
            self.rng,
        )
