"""What a worker holds: each leased message's owner token, and until when the lease is surely
its own.

Redis is the judge of a lease: every transition script checks the owner token a fetch handed
out, so a worker whose lease lapsed can never ack, renew, retry or dead-letter the message
again. But a worker cut off from Redis (a partition, a stalled server) cannot ask it, and its
task would run on beside the next delivery. So the worker keeps its own conservative clock: a
lease is surely its own until ``lease_s`` after the call that set it was *sent* (Redis set the
deadline no earlier), less a safety margin. Past that, the worker stops the task (fencing) and
counts the lease as lost.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from shoal.protocol import Held


class Stoppable(Protocol):
    """What handles a leased message: an asyncio task, or a sync call in a slot thread."""

    def cancel(self) -> Any: ...

    def done(self) -> bool: ...


@dataclass(slots=True)
class Lease:
    """One leased message, from its fetch until its verdict (ack, retry, DLQ) lands."""

    owner: int
    """The owner token the fetch handed out; every transition presents it."""
    sure_until: float
    """Monotonic time until which no other worker can have this message."""
    task: Stoppable | None = None
    """What handles the message, from its start to its verdict."""
    deciding: bool = False
    """The task's own code has returned: only its verdict (ack, retry, DLQ) is on its way, and
    is fenced in Redis by the owner token; it is never stopped any more."""
    lost: bool = False
    """Set when the lease was lost while the task ran: the task is being stopped."""
    cancel_requested: bool = False
    """``handle.cancel()`` was asked while this worker held it: it is stopped (or never
    started) and finished as cancelled."""
    task_name: str = ""
    attempt: int = 0
    """1 for the first run (set when it starts, with ``task_name`` and ``started_at``)."""
    started_at: float = 0.0
    """Unix time it started; 0 while it waits for a slot."""


def safety_margin_s(lease_s: float) -> float:
    """How long before the lease's end a worker stops a task it could not renew: a tenth of
    the lease, at most one second (room to stop the task before anyone can re-deliver it)."""
    return min(1.0, lease_s / 10)


class Leases:
    """The leases one worker holds, per queue."""

    def __init__(self, queues: Iterable[str], lease_s: float) -> None:
        self._held: dict[str, dict[str, Lease]] = {q: {} for q in queues}
        self.lease_s = lease_s
        self._sure_for_s = lease_s - safety_margin_s(lease_s)
        self.lost = 0
        """Leases lost while this worker held them (its tasks stopped, or its verdicts refused)."""

    def take(self, queue: str, message_id: str, owner: int, sent_at: float) -> Lease:
        """Record a lease from a fetch sent at ``sent_at`` (monotonic)."""
        lease = Lease(owner, sent_at + self._sure_for_s)
        self._held[queue][message_id] = lease
        return lease

    def get(self, queue: str, message_id: str) -> Lease | None:
        return self._held[queue].get(message_id)

    def held(self, queue: str) -> list[Held]:
        """(id, owner token) of every lease held on ``queue``, for a renewal or a handback."""
        return [(mid, lease.owner) for mid, lease in self._held[queue].items()]

    def renewed(self, queue: str, sent: Iterable[Held], sent_at: float) -> None:
        """A renewal of ``sent`` (sent at ``sent_at``) succeeded for the ids not reported lost;
        those leases are surely ours for another lease."""
        held = self._held[queue]
        for message_id, owner in sent:
            lease = held.get(message_id)
            if lease is not None and lease.owner == owner:
                lease.sure_until = max(lease.sure_until, sent_at + self._sure_for_s)

    def release(self, queue: str, message_id: str, owner: int | None = None) -> None:
        """Forget a lease: its verdict landed, or it was lost. With ``owner``, only that lease
        (this worker may hold a newer lease of the same message by then)."""
        held = self._held[queue]
        lease = held.get(message_id)
        if lease is not None and (owner is None or lease.owner == owner):
            del held[message_id]

    def running(self) -> list[Stoppable]:
        """The tasks still running their own code (not yet deciding their verdict)."""
        return [
            lease.task
            for held in self._held.values()
            for lease in held.values()
            if lease.task is not None and not lease.task.done() and not lease.deciding
        ]

    def overdue(self, now: float | None = None) -> list[tuple[str, str, Lease]]:
        """Running tasks whose lease may have ended (not renewed in time), not yet stopped."""
        now = time.monotonic() if now is None else now
        return [
            (queue, mid, lease)
            for queue, held in self._held.items()
            for mid, lease in held.items()
            if lease.task is not None
            and not (lease.lost or lease.deciding)
            and lease.sure_until <= now
        ]

    def started(self) -> list[tuple[str, str, Lease]]:
        """(queue, id, lease) of every message started here and not yet decided."""
        return [
            (queue, mid, lease)
            for queue, held in self._held.items()
            for mid, lease in held.items()
            if lease.started_at
        ]

    def count(self) -> int:
        return sum(len(held) for held in self._held.values())

    def __bool__(self) -> bool:
        return any(self._held.values())
