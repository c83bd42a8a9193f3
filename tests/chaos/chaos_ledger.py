"""Every execution of a chaos task, written by the worker that ran it and read by the test.

The records go to files, not Redis: the drills take Redis away (restart, pause, partition),
and a record that needed Redis would then fail, or wait, and change what it measures. One file
per worker process (``<pid>.jsonl``), one JSON line per event, each appended with one
``write`` on an ``O_APPEND`` descriptor, so threads and processes never interleave a line.

Each execution writes ``start`` before the work and ``end`` after it (in a ``finally``, with
its outcome: ``ok`` or the exception that stopped it); a process killed mid-run leaves a start
without an end. Both carry the same execution token, so two runs of one message in one process
are told apart.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

LEDGER_ENV = "CHAOS_LEDGER"
"""Directory the worker processes write their records to (set by the test)."""

OVERLAP_SLACK_S = 0.05
"""How long after another run started a run's end record may land and still not count as
running at the same time: the time to write the record after the task stopped."""

_fd: int | None = None


def _write(record: dict[str, object]) -> None:
    global _fd
    if _fd is None:
        path = Path(os.environ[LEDGER_ENV]) / f"{os.getpid()}.jsonl"
        _fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(_fd, orjson.dumps(record) + b"\n")


def started(task_id: str, planned_s: float) -> str:
    """Record that this process starts running ``task_id``; returns the execution's token."""
    token = uuid.uuid4().hex
    _write(
        {"x": token, "id": task_id, "pid": os.getpid(), "ev": "start", "t": time.time(),
         "planned": planned_s}
    )  # fmt: skip
    return token


def ended(token: str, task_id: str, outcome: str) -> None:
    """Record that the execution ``token`` stopped: ``ok``, or the exception's name."""
    _write(
        {"x": token, "id": task_id, "pid": os.getpid(), "ev": "end", "t": time.time(),
         "outcome": outcome}
    )  # fmt: skip


@dataclass
class Execution:
    """One run of a message, as the ledger saw it."""

    id: str
    pid: int
    start: float
    planned_s: float
    end: float | None = None
    outcome: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    def until(self, deaths: Mapping[int, float]) -> float:
        """When it stopped. A run with no end stopped when its process died (``deaths``: pid →
        last seen alive), or at the latest after its planned length."""
        if self.end is not None:
            return self.end
        return min(self.start + self.planned_s, deaths.get(self.pid, float("inf")))


def read(directory: Path) -> list[Execution]:
    """Every execution recorded in ``directory``, in start order. A torn last line (a process
    killed mid-write) is skipped."""
    runs: dict[str, Execution] = {}
    ends: list[dict[str, Any]] = []
    for path in directory.glob("*.jsonl"):
        for line in path.read_bytes().splitlines():
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if record["ev"] == "start":
                runs[record["x"]] = Execution(
                    record["id"], record["pid"], record["t"], record["planned"]
                )
            else:
                ends.append(record)
    for record in ends:
        run = runs.get(record["x"])
        if run is not None:
            run.end, run.outcome = record["t"], record["outcome"]
    return sorted(runs.values(), key=lambda r: r.start)


def by_id(executions: Iterable[Execution]) -> dict[str, list[Execution]]:
    grouped: dict[str, list[Execution]] = defaultdict(list)
    for run in executions:
        grouped[run.id].append(run)
    return grouped


@dataclass
class Tally:
    """What a drill's ledger says about delivery."""

    tasks: int
    executions: int
    lost: list[str]
    """Ids with no run that finished ``ok``."""
    duplicates: int
    """Runs beyond the first of each id (finished or not)."""
    overlaps: list[tuple[Execution, Execution]]
    """Pairs of runs of one id that were running at the same time."""

    def figures(self) -> dict[str, object]:
        return {
            "tasks": self.tasks,
            "executions": self.executions,
            "lost": len(self.lost),
            "duplicates": self.duplicates,
            "concurrent_double_runs": len(self.overlaps),
        }


def tally(directory: Path, ids: Iterable[str], deaths: Mapping[int, float] | None = None) -> Tally:
    """Count what happened to ``ids``; ``deaths`` (pid → last seen alive) ends the runs of
    processes that died."""
    deaths = deaths or {}
    wanted = list(ids)
    grouped = by_id(read(directory))
    lost = [i for i in wanted if not any(r.ok for r in grouped.get(i, []))]
    duplicates = sum(max(0, len(grouped.get(i, [])) - 1) for i in wanted)
    overlaps = []
    for i in wanted:
        runs = grouped.get(i, [])
        for n, first in enumerate(runs):
            for second in runs[n + 1 :]:
                if second.start + OVERLAP_SLACK_S < first.until(deaths):
                    overlaps.append((first, second))
    executions = sum(len(grouped.get(i, [])) for i in wanted)
    return Tally(len(wanted), executions, lost, duplicates, overlaps)


def describe(run: Execution, t0: float = 0.0, deaths: Mapping[int, float] | None = None) -> str:
    """One run, its times relative to ``t0``."""
    if run.end is not None:
        end = f"{run.end - t0:.2f}s ({run.outcome})"
    elif deaths and run.pid in deaths:
        end = f"its process died at {deaths[run.pid] - t0:.2f}s"
    else:
        end = "no end recorded"
    return f"pid {run.pid} from {run.start - t0:.2f}s to {end}"
