"""``handle.status()`` and ``shoal task status``: one message's state, from what Redis holds.

Nothing is written on the hot path to answer it: the state is read off the records a message
leaves anyway (``status.lua`` reads them in one atomic step). A waiting, delayed or running
message is always known, as is a dead letter (while the DLQ keeps it) and a cancelled one (for
the result TTL). A success or a failure is known for the result TTL when the task stores its
results (``store_result=True``); otherwise a finished message reads ``unknown``, like one that
was never enqueued: keeping every outcome would cost a key per task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from shoal.message import Message
from shoal.protocol.registry import WorkerRegistration
from shoal.protocol.results import CANCELLED, decode_result
from shoal.protocol.scripts import Whereabouts
from shoal.task_progress import Progress

State = Literal[
    "waiting",
    "delayed",
    "running",
    "retrying",
    "succeeded",
    "failed",
    "dead",
    "cancelled",
    "unknown",
]
"""Every state a message can be read in."""

TASK_FAILURES = frozenset({"retries_exhausted", "not_retryable", "failed", "bad_arguments"})
"""DLQ reasons that mean the task's own code failed for good: such a dead letter reads
``failed``; any other (it never ran properly: poison, unknown task, expired, …) reads ``dead``."""


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """What is known of one message now."""

    id: str
    queue: str
    state: State
    task: str | None = None
    attempt: int | None = None
    """The attempt running or next to run (1 = the first); for a dead letter, the last one."""
    worker: str | None = None
    """The worker running it (while ``running``)."""
    due_at: float | None = None
    """Unix time a delayed or retrying message becomes ready."""
    reason: str | None = None
    """Why it is dead, failed or cancelled (a DLQ reason, or ``cancelled``)."""
    error: str | None = None
    progress: Progress | None = None
    cancel_requested: bool = False
    """A cancel was asked while it ran: its worker stops it at its next lease renewal."""

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            name: getattr(self, name) for name in self.__dataclass_fields__ if name != "progress"
        }
        data["progress"] = None if self.progress is None else orjson.loads(self.progress.to_json())
        return data


def read_status(
    queue: str,
    message_id: str,
    where: Whereabouts,
    open_envelope: Callable[[bytes], Message | None],
    workers: Callable[[], Sequence[WorkerRegistration]],
) -> TaskStatus:
    """The status of ``message_id`` from its records. ``open_envelope`` decodes a stored
    envelope (None when it cannot); ``workers`` lists live workers (asked only while the
    message runs)."""
    progress = Progress.from_json(where.progress) if where.progress else None
    base: dict[str, Any] = {"id": message_id, "queue": queue, "progress": progress}
    if where.envelope is not None:
        message = open_envelope(where.envelope)
        if message is not None:
            base.update(task=message.task, attempt=message.attempt + 1)
        if where.lease_deadline_ms is not None:
            runner = next((w.id for w in workers() if _runs(w, queue, message_id)), None)
            cancel = where.cancel_asked_ms is not None
            return TaskStatus(**base, state="running", worker=runner, cancel_requested=cancel)
        if where.due_ms is not None:
            retrying = message is not None and message.attempt > 0
            due = where.due_ms / 1000
            return TaskStatus(**base, state="retrying" if retrying else "delayed", due_at=due)
        return TaskStatus(**base, state="waiting")
    if where.dead_entry is not None:
        entry = _json_object(where.dead_entry)
        reason = str(entry.get("reason") or "")
        attempts = entry.get("attempts")
        return TaskStatus(
            **base,
            state="failed" if reason in TASK_FAILURES else "dead",
            task=_text(entry.get("task")),
            attempt=attempts if isinstance(attempts, int) else None,
            reason=reason or None,
            error=_text(entry.get("error")),
        )
    if where.result is not None:
        stored = decode_result(where.result)
        if stored.ok:
            return TaskStatus(**base, state="succeeded")
        if stored.reason == CANCELLED:
            return TaskStatus(**base, state="cancelled", reason=CANCELLED, error=stored.error)
        return TaskStatus(**base, state="failed", reason=stored.reason, error=stored.error)
    return TaskStatus(**base, state="unknown")


def _runs(worker: WorkerRegistration, queue: str, message_id: str) -> bool:
    return any(r.id == message_id and r.queue == queue for r in worker.running)


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
