"""The worker registration: what each live worker writes to ``{p}:worker:<id>`` every heartbeat.

Written by the worker, read by ``shoal info --workers``, ``shoal dev`` and the operator (pod
deletion costs). Workers of different versions share a Redis during a rollout, so the reader
takes what it knows and defaults what an older worker did not write; it ignores the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

UNREADABLE = "(unreadable registration)"
"""The ``version`` of a registration that could not be read (written by something else)."""


MAX_RUNNING_LISTED = 100
"""At most this many running tasks are listed in a registration (it is rewritten every beat)."""


@dataclass(frozen=True, slots=True)
class RunningTask:
    """One task a worker runs now, as its registration lists it."""

    queue: str
    id: str
    task: str
    attempt: int
    """1 for the first run."""
    started_at: float
    """Unix time it started."""

    @classmethod
    def from_json(cls, data: Any) -> RunningTask | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                str(data["queue"]),
                str(data["id"]),
                str(data.get("task") or ""),
                _int(data.get("attempt")),
                float(data.get("started_at") or 0.0),
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True, slots=True)
class WorkerRegistration:
    """One worker process, as it last described itself."""

    id: str
    host: str = ""
    """The instance (pod name, or host name) it runs on: ``SHOAL_INSTANCE``."""
    pid: int = 0
    queues: tuple[str, ...] = ()
    in_flight: int = 0
    concurrency: int = 0
    processed: int = 0
    leases_lost: int = 0
    """Absent from workers older than this field: 0."""
    started_at: float = 0.0
    """Unix time the worker started."""
    version: str = ""
    running: tuple[RunningTask, ...] = ()
    """What it runs now (at most MAX_RUNNING_LISTED); absent from older workers."""

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def read(cls, worker_id: str, raw: bytes) -> WorkerRegistration:
        """What ``worker_id`` registered; one that cannot be read is still listed, by its id,
        with :data:`UNREADABLE` as its version: a listing never ends on another's bytes."""
        try:
            return cls.from_json(raw)
        except (ValueError, TypeError):
            return cls(id=worker_id, version=UNREADABLE)

    @classmethod
    def from_json(cls, raw: bytes | str) -> WorkerRegistration:
        """A registration; ValueError when ``raw`` is not a JSON object with an ``id``."""
        data = orjson.loads(raw)
        if not isinstance(data, dict) or not isinstance(data.get("id"), str):
            raise ValueError(f"not a worker registration: {raw[:200]!r}")
        running = data.get("running")
        return cls(
            id=data["id"],
            host=str(data.get("host") or ""),
            pid=_int(data.get("pid")),
            queues=tuple(str(q) for q in data.get("queues") or ()),
            in_flight=_int(data.get("in_flight")),
            concurrency=_int(data.get("concurrency")),
            processed=_int(data.get("processed")),
            leases_lost=_int(data.get("leases_lost")),
            started_at=float(data.get("started_at") or 0.0),
            version=str(data.get("version") or ""),
            running=tuple(
                r
                for r in map(RunningTask.from_json, running if isinstance(running, list) else ())
                if r is not None
            ),
        )


def _int(value: Any) -> int:
    return int(value or 0)
