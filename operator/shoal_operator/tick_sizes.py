"""How many tasks each schedule's runs produce, measured by watching the queue: the policy warms
that many replicas before the schedule's next tick.

Redis does not record it (a claim records the one message its tick enqueued, not what that task
enqueued in turn), so the operator counts: when a schedule's pending tick moves on (a worker
claimed it), a run opens at the queue's ``enqueued`` counter of the previous poll (before the
claim's own message), and closes when the queue is idle again (nothing waiting, in flight or
arriving), when another tick of that queue is claimed, or :data:`MAX_RUN_S` after it opened. What
the queue receives anyway (its arrival rate between runs, smoothed) is taken out, so a queue that
never idles does not count its whole day's traffic as one run. Ticks of one queue claimed in the
same poll share what follows evenly. Kept in memory, per (queue, schedule), the last :data:`KEEP`
runs: an operator restart forgets them, and the first warm-up after it is 1 replica again."""

from __future__ import annotations

import statistics
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from shoal.autoscale import ScheduledTick
from shoal.protocol import QueueStats

KEEP = 3
"""Runs remembered per schedule; the median of them is told (one odd run moves nothing)."""
MAX_RUN_S = 120.0
"""A run is counted for at most this long (as long as the policy lets a tick explain arrivals)."""
SMOOTHING = 0.3
"""Weight of the newest sample of a queue's arrival rate between runs."""

Key = tuple[str, str]
"""(queue, schedule name)."""


@dataclass
class _Run:
    keys: tuple[Key, ...]
    base: int
    """The queue's ``enqueued`` counter just before the run's tick was claimed."""
    opened_at: float
    """When (monotonic seconds) the previous poll took ``base``."""
    background: float
    """The queue's arrival rate between runs when this one opened (tasks/s)."""


@dataclass
class TickSizes:
    """One Worker's measured schedule runs."""

    runs: dict[Key, deque[int]] = field(default_factory=dict)
    pending: dict[Key, float] = field(default_factory=dict)
    """Each schedule's earliest unclaimed tick (due at, epoch s) at the previous poll."""
    enqueued: dict[str, int] = field(default_factory=dict)
    """Each queue's ``enqueued`` counter at the previous poll."""
    open: dict[str, _Run] = field(default_factory=dict)
    """queue → the run being counted."""
    seen_at: dict[str, float] = field(default_factory=dict)
    """Each queue's previous poll (monotonic seconds)."""
    background: dict[str, float] = field(default_factory=dict)
    """Each queue's smoothed arrival rate while no run was open (tasks/s)."""

    def observe(
        self,
        stats: Sequence[QueueStats],
        ticks: Sequence[ScheduledTick],
        now: float | None = None,
    ) -> tuple[ScheduledTick, ...]:
        """One poll: the queues' figures and their upcoming ticks (earliest first); returns
        the ticks, each with ``expected_tasks`` from its schedule's measured runs."""
        now = time.monotonic() if now is None else now
        pending: dict[Key, float] = {}
        for tick in ticks:
            if tick.due_at is not None:
                pending.setdefault((tick.queue, tick.schedule), tick.due_at)
        claimed: dict[str, list[Key]] = {}
        for key, due_at in pending.items():
            before = self.pending.get(key)
            if before is not None and due_at > before:
                claimed.setdefault(key[0], []).append(key)
        for s in stats:
            before = self.enqueued.get(s.queue)
            seen_at = self.seen_at.get(s.queue)
            run = self.open.get(s.queue)
            keys = claimed.get(s.queue)
            if keys and before is not None and seen_at is not None:
                if run is not None:  # the next tick came before the queue idled: ends here
                    self._record(run, before, seen_at)
                rate = self.background.get(s.queue, 0.0)
                self.open[s.queue] = _Run(tuple(sorted(keys)), before, seen_at, rate)
            elif run is not None:
                idle = not (s.waiting or s.in_flight or s.due_soon) and s.enqueued == before
                if idle or now - run.opened_at >= MAX_RUN_S:
                    self._record(run, s.enqueued, now)
                    del self.open[s.queue]
            elif before is not None and seen_at is not None and now > seen_at:
                sample = max(0, s.enqueued - before) / (now - seen_at)
                old = self.background.get(s.queue)
                self.background[s.queue] = (
                    sample if old is None else old + SMOOTHING * (sample - old)
                )
            self.enqueued[s.queue] = s.enqueued
            self.seen_at[s.queue] = now
        self.pending = pending
        sizes = self.expected()
        return tuple(
            replace(t, expected_tasks=sizes.get((t.queue, t.schedule), t.expected_tasks))
            for t in ticks
        )

    def _record(self, run: _Run, enqueued: int, now: float) -> None:
        anyway = run.background * max(0.0, now - run.opened_at)
        share = max(0.0, enqueued - run.base - anyway) / len(run.keys)
        for key in run.keys:
            self.runs.setdefault(key, deque(maxlen=KEEP)).append(round(share))

    def expected(self) -> dict[Key, int]:
        """(queue, schedule) → the median of its last runs, for the schedules measured."""
        return {key: round(statistics.median(runs)) for key, runs in self.runs.items() if runs}
