"""Message priorities: ``task.with_options(priority=N)`` or ``@app.task(priority=N)``, an
integer 0-9, lower runs first (as Dramatiq and Celery's Redis transport count them); the
default, 5, leaves room both ways.

A message with a priority other than the default is scored at enqueue: its ready time plus
``(priority - 5) x SHOAL_PRIORITY_AGING`` (10 s a level by default), and a fetch leases the
lowest score, a plain message's score being its ready time. So priority 0 goes 50 s ahead of
the default, and priority 9 waits at most 40 s behind the default messages enqueued with it:
under any steady load the waiting time of every level is bounded, nothing starves. Each such
message keeps its token in the waiting list too (its length still counts every ready message
for KEDA); see ``fetch.lua``.
"""

from __future__ import annotations

from shoal.errors import EnqueueError

DEFAULT_PRIORITY = 5
LOWEST = 9


def checked(priority: object, what: str) -> int:
    """``priority`` if it is an integer 0-9; an EnqueueError naming ``what`` otherwise."""
    if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= LOWEST:
        raise EnqueueError(
            f"{what}: priority must be an integer from 0 (runs first) to 9 (runs last), "
            f"got {priority!r}; the default is {DEFAULT_PRIORITY}"
        )
    return priority


def offset_ms(priority: int, aging_s: float) -> int | None:
    """The score offset of ``priority`` (None for the default: scored by its ready time)."""
    if priority == DEFAULT_PRIORITY:
        return None
    return round((priority - DEFAULT_PRIORITY) * aging_s * 1000)
