"""What the dashboard shows, as JSON-ready data: one function per page, each a blocking read
through the same layer ``shoal info``, ``shoal dlq`` and ``shoal schedules`` use.

The server runs these in a thread (they block on Redis). Nothing here writes to Redis except
:func:`replay` and :func:`purge`, which are :class:`~shoal.dlq.DeadLetters`' own.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import orjson

from shoal.dead_letter import clip
from shoal.dlq import entry_record, summary_record
from shoal.message import Message
from shoal.protocol.browse import in_flight, workflow_records
from shoal.schedule_plan import schedule_record
from shoal.scheduler import stored
from shoal.signing import unsealed

if TYPE_CHECKING:
    from shoal.app import App
    from shoal.dashboard.history import History
    from shoal.protocol.registry import WorkerRegistration

RUNNING_LIMIT = 100
"""In-flight messages listed per queue (the counts are always whole)."""
WORKFLOW_LIMIT = 100
"""Workflow and group records listed per queue."""


def queue_names(app: App) -> list[str]:
    return app.broker.queues()


def queues(app: App, history: History) -> list[dict[str, Any]]:
    """Per queue: the figures of one fresh measurement (``paused`` among them), its rate limit
    (the stored queue default, None when none), rates from the sampler's last two samples, and
    the sampled series for the sparklines."""
    names = queue_names(app)
    rows = []
    for stats in app.broker.measure_many(names) if names else []:
        series = history.of(stats.queue)
        latest = series[-1] if series else None
        rows.append(
            {
                **dataclasses.asdict(stats),
                "rate_limit": app.queue_defaults(stats.queue).get("rate_limit"),
                "completed_per_s": latest.completed_per_s if latest else 0.0,
                "failed_per_s": latest.failed_per_s if latest else 0.0,
                "enqueued_per_s": latest.enqueued_per_s if latest else 0.0,
                "history": [dataclasses.asdict(p) for p in series],
            }
        )
    return rows


def trace_id_of(headers: dict[str, Any]) -> str | None:
    """The trace id in a W3C ``traceparent`` header, if the message carried one."""
    parts = str(headers.get("traceparent") or "").split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else None


def running(app: App, live: list[WorkerRegistration] | None = None) -> list[dict[str, Any]]:
    """The messages leased right now, every queue: task, id, attempt, lease deadline, trace,
    and the worker running it with when it started (from its registration, rewritten every
    heartbeat: a task started since is listed without them until then)."""
    live = app.broker.workers() if live is None else live
    runners = {(r.queue, r.id): (w.id, r.started_at) for w in live for r in w.running}
    now_ms = app.broker.time_ms()
    out = []
    for queue in queue_names(app):
        for item in in_flight(app.broker, queue, RUNNING_LIMIT):
            row: dict[str, Any] = {
                "queue": queue,
                "id": item.id,
                "lease_left_s": round(max(0, item.lease_until_ms - now_ms) / 1000, 1),
                "task": None,
                "attempt": None,
                "enqueued_at": None,
                "trace_id": None,
                "worker": None,
                "started_at": None,
            }
            runner = runners.get((queue, item.id))
            if runner is not None:
                row.update(worker=runner[0], started_at=runner[1])
            if item.envelope is not None:
                try:
                    message = Message.decode(unsealed(item.envelope))
                except Exception:  # another writer's bytes: listed by id only
                    pass
                else:
                    row.update(
                        task=message.task,
                        attempt=message.attempt + 1,
                        enqueued_at=message.enqueued_at,
                        trace_id=trace_id_of(message.headers),
                    )
            out.append(row)
    return out


def workers(app: App) -> dict[str, Any]:
    """Live workers (as ``shoal info --workers`` lists them) and what is running now."""
    now = time.time()
    live = app.broker.workers()
    return {
        "workers": [
            {
                **dataclasses.asdict(w),
                "queues": list(w.queues),
                "up_s": round(max(0.0, now - w.started_at), 1) if w.started_at else None,
            }
            for w in live
        ],
        "running": running(app, live),
    }


def dead_letters(app: App, queue: str, limit: int = 50) -> dict[str, Any]:
    """A queue's newest dead letters (summaries only, as ``shoal dlq list``)."""
    dead = app.dlq(queue)
    entries = dead.entries(limit)
    return {
        "queue": queue,
        "count": len(dead),
        "entries": [
            {**summary_record(e), "error": clip(e.error, 300), "trace_id": e.trace_id}
            for e in entries
        ],
    }


def dead_letter_counts(app: App) -> list[dict[str, Any]]:
    """Every queue and how many dead letters it holds."""
    names = queue_names(app)
    stats = app.broker.measure_many(names) if names else []
    return [{"queue": s.queue, "dead": s.dead} for s in stats]


def dead_letter(app: App, queue: str, message_id: str) -> dict[str, Any] | None:
    """Everything about one dead letter (as ``shoal dlq show -o json``), or None."""
    entry = app.dlq(queue).get(message_id)
    if entry is None:
        return None
    record = entry_record(queue, entry)
    record["args"] = _arguments(record["message"])
    return record


def _arguments(message: str | None) -> dict[str, Any] | None:
    """The args and kwargs of a kept envelope, for reading; None for an excerpt."""
    if message is None:
        return None
    try:
        data = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    return {"args": data.get("args"), "kwargs": data.get("kwargs")}


def replay(app: App, queue: str, ids: list[str]) -> dict[str, Any]:
    report = app.dlq(queue).replay(ids)
    return {"replayed": report.replayed, "skipped": report.skipped}


def purge(app: App, queue: str, ids: list[str] | None) -> dict[str, Any]:
    """Delete these dead letters (all of the queue's when ``ids`` is None)."""
    dead = app.dlq(queue)
    if ids is None:
        return {"purged": dead.purge()}
    return {"purged": len(dead.purge_ids(ids)), "ids": ids}


def schedules(app: App) -> list[dict[str, Any]]:
    """Every stored schedule with its next and last run (as ``shoal schedules -o json``)."""
    return [schedule_record(row) for q in queue_names(app) for row in stored(app.broker, q)]


def workflows(app: App) -> list[dict[str, Any]]:
    """Workflow step guards and group records still in Redis, every queue (a bounded scan:
    the runtime keeps no index of workflows)."""
    out = []
    for queue in queue_names(app):
        for rec in workflow_records(app.broker, queue, WORKFLOW_LIMIT):
            row: dict[str, Any] = {
                "queue": queue,
                "kind": rec.kind,
                "id": rec.id,
                "expires_in_s": rec.ttl_s,
            }
            if rec.kind == "group":
                size = rec.fields.get("size", b"0")
                members = [f for f in rec.fields if f.isdigit()]
                row.update(size=int(size) if size.isdigit() else None, joined=len(members))
                row["state"] = f"{len(members)} of {row['size']} members done"
            else:
                row.update(steps_started=len(rec.fields), finished=rec.finished)
                row["state"] = "finished" if rec.finished else "in progress"
            out.append(row)
    # in progress first: groups waiting for members, then workflows not known to be finished
    out.sort(key=lambda r: (bool(r.get("finished")), r["kind"] != "group"))
    return out
