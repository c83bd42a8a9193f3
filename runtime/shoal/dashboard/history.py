"""The dashboard's rolling history: each queue's figures sampled every few seconds, kept in
memory (nothing is written to Redis), turned into rates for the sparklines.

:class:`History` is pure (fed :class:`~shoal.protocol.QueueStats`, no I/O) so it is tested as a
table; :func:`sample_forever` is the loop the server runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from shoal.fleet import per_second
from shoal.protocol import QueueStats

log = logging.getLogger("shoal.dashboard")

DEFAULT_INTERVAL_S = 5.0
"""Seconds between samples: a few seconds keeps rates readable and Redis unbothered."""
DEFAULT_POINTS = 120
"""Samples kept per queue: ten minutes at the default interval."""


@dataclass(frozen=True, slots=True)
class Point:
    """One sample of a queue: its depths, and its counter rates since the previous sample."""

    at_ms: int
    """When Redis measured it (ms, Redis clock)."""
    waiting: int
    in_flight: int
    delayed: int
    dead: int
    completed_per_s: float
    failed_per_s: float
    """New dead letters per second: tasks that failed for good."""
    enqueued_per_s: float
    retried_per_s: float


@dataclass
class History:
    """The last ``points`` samples of every queue seen."""

    points: int = DEFAULT_POINTS
    series: dict[str, deque[Point]] = field(default_factory=dict)
    last: dict[str, QueueStats] = field(default_factory=dict)
    """Each queue's previous measurement: rates are taken between two."""

    def record(self, stats: Sequence[QueueStats]) -> None:
        """Add one sample per queue. The first sample of a queue has no rate yet (0); a
        measurement no newer than the last one (a clock step back) is skipped."""
        for s in stats:
            prev = self.last.get(s.queue)
            if prev is not None and s.measured_at_ms <= prev.measured_at_ms:
                continue
            rates = per_second(prev, s) if prev is not None else dict.fromkeys(_RATES, 0.0)
            self.last[s.queue] = s
            series = self.series.setdefault(s.queue, deque(maxlen=self.points))
            series.append(
                Point(
                    at_ms=s.measured_at_ms,
                    waiting=s.waiting,
                    in_flight=s.in_flight,
                    delayed=s.delayed,
                    dead=s.dead,
                    completed_per_s=round(rates["completed"], 3),
                    failed_per_s=round(rates["dead"], 3),
                    enqueued_per_s=round(rates["enqueued"], 3),
                    retried_per_s=round(rates["retried"], 3),
                )
            )

    def of(self, queue: str) -> list[Point]:
        """The queue's samples, oldest first (empty before its first sample)."""
        return list(self.series.get(queue, ()))

    def latest(self, queue: str) -> Point | None:
        series = self.series.get(queue)
        return series[-1] if series else None


_RATES = ("enqueued", "completed", "retried", "dead")


async def sample_forever(
    measure: Callable[[], Awaitable[Sequence[QueueStats]]],
    history: History,
    interval_s: float = DEFAULT_INTERVAL_S,
) -> None:
    """Record ``measure()`` into ``history`` every ``interval_s`` until cancelled. A failed
    measurement (Redis away) is logged and skipped: the pages say so, the sampler carries on."""
    while True:
        try:
            history.record(await measure())
        except Exception as exc:  # Redis down, a reply we cannot read: keep sampling
            log.warning("dashboard: cannot measure the queues: %s", exc)
        await asyncio.sleep(interval_s)
