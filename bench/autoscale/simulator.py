"""Replays an arrival trace against an autoscaling controller.

Fixed steps of 0.1 s. Every duration of the model (service 1 s, start-up 10 s, polls of 2, 15
and 30 s) is a whole number of steps, so nothing is rounded at the defaults; the n tasks of a
trace second arrive spread evenly over its ten steps, so a task that finds a free slot waits 0
and waits are exact to the step. 1 s steps would quantise every wait to a whole second, which
hides the difference the goals measure (p95 ≤ 1 s). Each step, in order: tasks finish, started
pods become ready, tasks arrive, free slots pull FIFO (slots queue up in the order they freed,
as Redis serves blocked BLMOVE clients), the controller may act, time is charged.

A trace row may name the schedule that produced it (``kind`` ``scheduled``, ``schedule`` its
name): the fleet then knows that schedule's ticks ahead of time, as the operator does from the
schedules stored in Redis, with the count of the schedule's previous run as the expected size.
Which controller listens is the controller's business (the KEDA model does not).
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

STEP_S = 0.1
STEPS_PER_S = 10
MAX_OVERTIME_S = 3600
"""After the trace ends, run on while tasks remain, at most this long (bounded loop)."""
STARTUPS_KEPT = 9
"""Measured start-up is the median of this many most recent pods (the operator's "recent")."""
TICKS_AHEAD = 3
"""Upcoming ticks told per schedule (as the operator computes them from the stored schedules)."""
"""Measured start-up is the median of this many most recent pods (the operator's "recent")."""


@dataclass(frozen=True, slots=True)
class Workload:
    service_s: float = 1.0
    concurrency: int = 4
    startup_s: float = 10.0
    max_replicas: int = 100


@dataclass(eq=False, slots=True)
class Pod:
    created: float
    ready_step: int
    ready: bool = False
    running: int = 0
    draining: bool = False
    gone: bool = False


@dataclass(frozen=True, slots=True)
class Tick:
    """A scheduled tick of the trace: its second, its schedule, and how many tasks the
    schedule's previous tick produced (0 for its first: nothing known yet)."""

    second: int
    schedule: str
    count: int
    expected: int


@dataclass(frozen=True, slots=True)
class Trace:
    counts: list[int]
    """Tasks arriving in each second."""
    ticks: list[Tick] = field(default_factory=list)
    """Scheduled ticks, in time order."""


class Fleet(Protocol):
    """What a controller may observe (what Redis and the Deployment would tell it)."""

    @property
    def waiting(self) -> int: ...
    @property
    def in_flight(self) -> int: ...
    @property
    def replicas(self) -> int: ...
    @property
    def ready(self) -> int: ...
    @property
    def arrived(self) -> int: ...
    @property
    def completed(self) -> int: ...
    def oldest_wait(self, now: float) -> float: ...
    @property
    def startup_s(self) -> float | None:
        """Median start-up (created → ready) of the last pods that became ready; None before."""
        ...

    def next_tick(self, now: float) -> Tick | None:
        """The next scheduled tick that has not fired yet."""
        ...

    def upcoming_ticks(self, now: float) -> list[Tick]:
        """The next TICKS_AHEAD ticks of each schedule that have not fired yet, earliest first;
        each expecting what its schedule's last fired tick produced (0 before one fired)."""
        ...


class Controller(Protocol):
    drains: bool
    """True: a busy pod chosen for scale-in finishes its tasks first (Shoal's graceful stop).
    False: its tasks are interrupted and go back to the queue (at-least-once)."""

    def tick(self, now: float, fleet: Fleet) -> int | None:
        """Called every step; returns the replicas wanted, or None to leave them alone."""
        ...

    def victims(self, pods: Sequence[Pod], count: int) -> list[Pod]:
        """Which of the (non-draining) pods a scale-in removes."""
        ...


@dataclass(slots=True)
class Result:
    waits: list[float]
    max_waiting: int
    worker_seconds: float
    scale_events: int
    interrupted: int
    series: list[tuple[float, int, int, int]]
    """(second, waiting, replicas, ready), once per simulated second."""

    def summary(self) -> dict[str, float | int]:
        return {
            "p50_wait_s": percentile(self.waits, 50),
            "p95_wait_s": percentile(self.waits, 95),
            "p99_wait_s": percentile(self.waits, 99),
            "max_waiting": self.max_waiting,
            "worker_seconds": round(self.worker_seconds),
            "scale_events": self.scale_events,
            "interrupted": self.interrupted,
        }


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile, rounded to the step."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 1)


def load_trace(path: Path) -> Trace:
    """Tasks arriving in each second (seconds missing from the file get none), and the
    scheduled ticks: rows whose optional ``kind`` is ``scheduled``, named by the optional
    ``schedule`` column (one unnamed schedule when it is absent)."""
    counts: dict[int, int] = {}
    runs: dict[tuple[int, str], int] = {}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh):
            t, n = int(row["time"]), int(row["count"])
            if t < 0 or n < 0:
                raise ValueError(f"{path}: negative time or count at time {t}")
            counts[t] = counts.get(t, 0) + n
            kind = (row.get("kind") or "").strip()
            if kind == "scheduled":
                name = (row.get("schedule") or "").strip() or "scheduled"
                runs[t, name] = runs.get((t, name), 0) + n
            elif kind:
                raise ValueError(f"{path}: kind {kind!r} at time {t}; use 'scheduled' or nothing")
    if not counts:
        return Trace([])
    last: dict[str, int] = {}
    ticks = []
    for (t, name), n in sorted(runs.items()):
        ticks.append(Tick(t, name, n, last.get(name, 0)))
        last[name] = n
    return Trace([counts.get(t, 0) for t in range(max(counts) + 1)], ticks)


@dataclass(slots=True)
class Simulation:
    workload: Workload
    controller: Controller
    queue: deque[tuple[float, bool]] = field(default_factory=deque)
    """Waiting tasks, oldest first: (enqueued at, is a retry)."""
    pods: list[Pod] = field(default_factory=list)
    free_slots: deque[Pod] = field(default_factory=deque)
    finishing: dict[int, list[Pod]] = field(default_factory=dict)
    starting: dict[int, list[Pod]] = field(default_factory=dict)
    arrived: int = 0
    completed: int = 0
    in_flight: int = 0
    interrupted: int = 0
    scale_events: int = 0
    ticks: Sequence[Tick] = ()
    next_tick_index: int = 0
    startups: deque[float] = field(default_factory=lambda: deque(maxlen=STARTUPS_KEPT))

    @property
    def waiting(self) -> int:
        return len(self.queue)

    @property
    def replicas(self) -> int:
        return sum(1 for p in self.pods if not p.draining)

    @property
    def ready(self) -> int:
        return sum(1 for p in self.pods if p.ready and not p.draining)

    def oldest_wait(self, now: float) -> float:
        return now - self.queue[0][0] if self.queue else 0.0

    @property
    def startup_s(self) -> float | None:
        return statistics.median(self.startups) if self.startups else None

    def next_tick(self, now: float) -> Tick | None:
        # a tick has fired once its second has begun: its first tasks are in the queue
        while (
            self.next_tick_index < len(self.ticks)
            and self.ticks[self.next_tick_index].second <= now + 1e-9
        ):
            self.next_tick_index += 1
        return self.ticks[self.next_tick_index] if self.next_tick_index < len(self.ticks) else None

    def upcoming_ticks(self, now: float) -> list[Tick]:
        self.next_tick(now)
        fired = {t.schedule: t.count for t in self.ticks[: self.next_tick_index]}
        out: list[Tick] = []
        per_schedule: dict[str, int] = {}
        names = {tick.schedule for tick in self.ticks}
        for tick in self.ticks[self.next_tick_index :]:
            if per_schedule.get(tick.schedule, 0) >= TICKS_AHEAD:
                if len(per_schedule) == len(names) and min(per_schedule.values()) >= TICKS_AHEAD:
                    break
                continue
            per_schedule[tick.schedule] = per_schedule.get(tick.schedule, 0) + 1
            out.append(Tick(tick.second, tick.schedule, 0, fired.get(tick.schedule, 0)))
        return out

    def run(self, trace: Trace) -> Result:
        wl = self.workload
        self.ticks = trace.ticks
        service = max(1, round(wl.service_s * STEPS_PER_S))
        arrivals = [0] * (len(trace.counts) * STEPS_PER_S)
        for second, n in enumerate(trace.counts):
            for i in range(n):
                arrivals[second * STEPS_PER_S + i * STEPS_PER_S // n] += 1
        waits: list[float] = []
        series: list[tuple[float, int, int, int]] = []
        max_waiting, step_s_charged = 0, 0
        limit = len(arrivals) + MAX_OVERTIME_S * STEPS_PER_S
        for k in range(limit):
            if k >= len(arrivals) and not self.queue and not self.in_flight:
                break
            now = k * STEP_S
            self._finish(k)
            for pod in self.starting.pop(k, []):
                if not pod.gone:
                    self._ready(pod, now)
            for _ in range(arrivals[k] if k < len(arrivals) else 0):
                self.queue.append((now, False))
                self.arrived += 1
            while self.queue and self.free_slots:
                pod = self.free_slots.popleft()
                if pod.gone or pod.draining:
                    continue
                enqueued, retry = self.queue.popleft()
                if not retry:
                    waits.append(now - enqueued)
                pod.running += 1
                self.in_flight += 1
                self.finishing.setdefault(k + service, []).append(pod)
            max_waiting = max(max_waiting, len(self.queue))
            if k % STEPS_PER_S == 0:
                series.append((now, len(self.queue), self.replicas, self.ready))
            wanted = self.controller.tick(now, self)
            if wanted is not None:
                self._scale(k, min(max(wanted, 0), wl.max_replicas))
            step_s_charged += len(self.pods)
        return Result(
            waits, max_waiting, step_s_charged * STEP_S, self.scale_events, self.interrupted, series
        )

    def _finish(self, k: int) -> None:
        for pod in self.finishing.pop(k, []):
            if pod.gone:  # interrupted: already re-queued
                continue
            pod.running -= 1
            self.in_flight -= 1
            self.completed += 1
            if not pod.draining:
                self.free_slots.append(pod)
            elif pod.running == 0:
                self._remove(pod)

    def _scale(self, k: int, wanted: int) -> None:
        live = [p for p in self.pods if not p.draining]
        if wanted == len(live):
            return
        self.scale_events += 1
        if wanted > len(live):
            ready_step = k + max(0, round(self.workload.startup_s * STEPS_PER_S))
            for _ in range(wanted - len(live)):
                pod = Pod(created=k * STEP_S, ready_step=ready_step)
                self.pods.append(pod)
                self.starting.setdefault(ready_step, []).append(pod)
            if ready_step == k:  # zero start-up: ready at once
                for pod in self.starting.pop(k):
                    self._ready(pod, k * STEP_S)
            return
        for pod in self.controller.victims(live, len(live) - wanted):
            if pod.running and self.controller.drains:
                pod.draining = True  # stops pulling, finishes what it holds, then goes
                continue
            self.interrupted += pod.running
            self.in_flight -= pod.running
            self.queue.extendleft([(k * STEP_S, True)] * pod.running)
            self._remove(pod)

    def _ready(self, pod: Pod, now: float) -> None:
        pod.ready = True
        self.free_slots.extend([pod] * self.workload.concurrency)
        self.startups.append(now - pod.created)

    def _remove(self, pod: Pod) -> None:
        pod.gone = True
        pod.running = 0
        self.pods.remove(pod)


def simulate(trace: Trace, controller: Controller, workload: Workload) -> Result:
    return Simulation(workload, controller).run(trace)
