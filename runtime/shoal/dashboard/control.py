"""Flow and task control for the dashboard, as JSON-ready data: one message's status, and the
writes (pause, resume, purge a queue; cancel a message), each the runtime's own call
(``app.pause``, ``app.producer.cancel``, …) so the dashboard does exactly what the CLI does.

Blocking (Redis): the server runs these in a thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shoal.dashboard.snapshot import trace_id_of
from shoal.dead_letter import DeadLetter
from shoal.errors import DecodeError
from shoal.message import Message
from shoal.signing import unsealed
from shoal.task_status import read_status

if TYPE_CHECKING:
    from shoal.app import App
    from shoal.protocol.scripts import Whereabouts

CANCELLABLE = frozenset({"waiting", "delayed", "retrying", "running"})
"""States a cancel acts on (a retrying message waits as delayed)."""
QUEUE_ACTIONS = ("pause", "resume", "purge")


def task(app: App, queue: str, message_id: str) -> dict[str, Any]:
    """One message's :class:`~shoal.task_status.TaskStatus` (as ``shoal task status -o json``)
    with its trace id, whether the DLQ holds it, and whether a cancel would act on it; all
    from one atomic read of its records."""
    where = app.broker.status(queue, message_id)

    def open_envelope(data: bytes) -> Message | None:
        try:
            return Message.decode(app.producer.signer.open(data))
        except DecodeError:  # BadSignature is one: a stranger's bytes read as unknown
            return None

    status = read_status(queue, message_id, where, open_envelope, app.broker.workers)
    record = status.to_dict()
    if status.progress is not None:
        record["progress"].update(
            fraction=status.progress.fraction, text=status.progress.describe()
        )
    record.update(
        trace_id=_trace_id(where),
        dead_letter=where.dead_entry is not None,
        cancellable=status.state in CANCELLABLE and not status.cancel_requested,
    )
    return record


def _trace_id(where: Whereabouts) -> str | None:
    """The trace the message belongs to: from its stored envelope, else its dead letter."""
    try:
        if where.envelope is not None:
            return trace_id_of(Message.decode(unsealed(where.envelope)).headers)
        if where.dead_entry is not None:
            return DeadLetter.from_json(where.dead_entry).trace_id
    except Exception:  # bytes another writer left: shown without a trace
        return None
    return None


def cancel(app: App, queue: str, message_id: str) -> dict[str, Any]:
    """Cancel one message; ``was``: ``waiting``/``delayed`` (it never runs), ``running`` (its
    worker stops it at its next heartbeat) or ``gone`` (nothing to cancel)."""
    return {"queue": queue, "id": message_id, "was": app.producer.cancel(queue, message_id)}


def queue_action(app: App, queue: str, action: str) -> dict[str, Any]:
    """``pause``, ``resume`` or ``purge`` ``queue`` (``app.pause`` …); ``changed`` is False
    when it was paused (running) already; ``purged``: how many messages were deleted."""
    if action == "pause":
        return {"queue": queue, "paused": True, "changed": app.pause(queue)}
    if action == "resume":
        return {"queue": queue, "paused": False, "changed": app.resume(queue)}
    if action == "purge":
        return {"queue": queue, "purged": app.purge(queue)}
    raise ValueError(f"no queue action {action!r}: {', '.join(QUEUE_ACTIONS)}")


def queue_counts(app: App, queue: str) -> dict[str, Any]:
    """What a confirmation page says before acting: what a purge deletes, whether paused."""
    stats = app.measure(queue)
    return {
        "queue": queue,
        "waiting": stats.waiting,
        "delayed": stats.delayed,
        "in_flight": stats.in_flight,
        "paused": stats.paused,
    }
