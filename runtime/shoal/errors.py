"""Every exception Shoal raises, under one root so users can write ``except shoal.ShoalError``."""

from __future__ import annotations

import importlib
import traceback
from pathlib import Path


class ShoalError(Exception):
    """Base class of every error raised by Shoal."""


class ConfigurationError(ShoalError):
    """Raised when a setting, a task option or a Redis URL is invalid."""


class BrokerError(ShoalError):
    """Raised when Redis cannot be reached or answers unexpectedly."""


class EnqueueOutcomeUnknown(BrokerError):
    """Raised when the connection to Redis failed after an enqueue was sent: the messages may or
    may not have been stored (and may run). A ``dedupe_key`` makes enqueueing them again safe."""


class ReplicationUnconfirmed(EnqueueOutcomeUnknown):
    """Raised when an enqueue was stored on the primary but fewer replicas than
    ``SHOAL_REDIS_WAIT_REPLICAS`` confirmed it in time: it runs, unless the primary fails before
    replicating it. Enqueueing again with the same ``dedupe_key`` is safe."""


class RedisFull(BrokerError):
    """Raised when Redis refused an enqueue because it reached its ``maxmemory``; nothing was
    stored. A broker condition, not a bad message: the same enqueue succeeds once Redis has room."""


class TaskModuleError(ConfigurationError):
    """Raised when a task module (``shoal worker MODULE``, :func:`shoal.load_app`) raised while
    it was imported; ``error`` is its exception, :meth:`user_traceback` its traceback."""

    def __init__(self, module: str, error: BaseException) -> None:
        super().__init__(
            f"could not import {module!r}: fix the error above "
            f"(run `python -c 'import {module}'` to reproduce)"
        )
        self.module = module
        self.error = error

    def user_traceback(self) -> str:
        """The module's traceback from its own code on: without the frames of the import
        machinery and of load_app, which imported it."""
        tb = self.error.__traceback__
        while tb is not None and _is_import_machinery(tb.tb_frame.f_code.co_filename):
            tb = tb.tb_next
        return "".join(traceback.format_exception(type(self.error), self.error, tb))


def _is_import_machinery(filename: str) -> bool:
    return filename.startswith("<frozen importlib") or filename in _IMPORTERS


_IMPORTERS = frozenset({importlib.__file__, str(Path(__file__).with_name("app.py"))})
"""Files whose frames lead into a task module's import (``load_app`` lives in app.py)."""


class EnqueueError(ShoalError):
    """Raised when a message is refused at enqueue; nothing was sent."""


class WorkflowError(ShoalError):
    """Raised in a worker when a workflow member's result cannot be carried on (not JSON, too
    large, the workflow's state expired); the member is dead-lettered as ``workflow_error``."""


class DecodeError(ShoalError):
    """Raised when bytes read from Redis are not a valid Shoal message envelope."""

    def __init__(self, data: bytes, reason: str) -> None:
        super().__init__(reason)
        self.data = data
        self.reason = reason


class BadSignature(DecodeError):
    """Raised when a worker with signing keys reads an unsigned or wrongly signed message
    (dead-lettered as ``bad_signature``), or a DLQ replay finds a body that does not verify."""


class TaskTimeout(ShoalError):
    """Raised in (or for) a task that ran longer than its timeout."""


class HardTimeout(TaskTimeout):
    """Raised for a sync task that ignored its soft timeout: its thread is abandoned, and the
    worker process must be replaced to get the slot back."""


class TaskStopped(ShoalError):
    """Raised inside a sync task's thread when the worker stops waiting for it: its lease was
    lost (another worker may run it now), or the shutdown grace period ended."""


class TaskNotFound(ShoalError):
    """Raised when a message names a task the worker's app does not define."""


class ResultTimeout(ShoalError):
    """Raised when ``handle.result(timeout=…)`` waited longer than its timeout."""


class TaskFailed(ShoalError):
    """Raised by ``handle.result()`` when the task ended in the dead-letter queue."""


class Retry(Exception):
    """Raised by a task to ask for another attempt after ``delay`` seconds (None: the backoff)."""

    def __init__(self, delay: float | None = None, message: str = "") -> None:
        super().__init__(message or "retry requested")
        self.delay = delay
