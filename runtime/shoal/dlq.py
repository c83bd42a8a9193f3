"""The dead-letter queue, from Python: list, show, replay and purge what failed for good.

Entries are written by the worker (``dead.lua``) with the reason, the error, the attempt count
and the original envelope; ``shoal dlq`` is a thin layer over this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

from shoal.errors import DecodeError
from shoal.message import Message

if TYPE_CHECKING:
    from shoal.app import App

REASONS = {
    "retries_exhausted": "the task kept failing and ran out of retries",
    "not_retryable": "the task raised an exception its retry_on / no_retry_on rules exclude",
    "undecodable": "the stored bytes are not a Shoal envelope",
    "unknown_task": "no task of that name is defined by the worker's app",
    "bad_signature": "signing keys are set and the message is unsigned or wrongly signed",
    "too_large": "the stored message is larger than SHOAL_MAX_MESSAGE_BYTES",
    "worker_lost": "workers running it vanished too often (it may be what kills them)",
    "workflow_error": "its result could not be carried on to the next workflow step",
    "internal_error": "its handling failed outside the task (a malformed option, a middleware bug)",
}
"""Every machine-readable DLQ reason, with what it means."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message and why it is there."""

    id: str
    queue: str
    task: str | None
    reason: str
    error: str
    exception_type: str
    traceback: str
    attempts: int
    enqueued_at: float | None
    failed_at: float
    traceparent: str | None
    message: str = field(repr=False)
    workflow: dict[str, str] | None = None
    """The workflow (id, kind) the message was a member of; that workflow failed with it."""

    @property
    def trace_id(self) -> str | None:
        """The W3C trace id of the trace the message belonged to, if it carried one."""
        parts = (self.traceparent or "").split("-")
        return parts[1] if len(parts) == 4 else None

    @classmethod
    def from_json(cls, raw: bytes | str) -> DeadLetter:
        data: dict[str, Any] = orjson.loads(raw)
        names = cls.__slots__
        return cls(**{k: data.get(k) for k in names})  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay did: ids back in the queue, and ids left in the DLQ with why."""

    replayed: list[str]
    skipped: dict[str, str]


class DeadLetters:
    """The DLQ of one queue: ``app.dlq("emails")``."""

    def __init__(self, app: App, queue: str) -> None:
        self.app = app
        self.queue = queue
        self.keys = app.broker.keys(queue)
        self.redis = app.broker.redis

    def __len__(self) -> int:
        return int(self.redis.zcard(self.keys.dead))

    def entries(self, limit: int = 50, offset: int = 0) -> list[DeadLetter]:
        """Entries, newest first."""
        ids = self.redis.zrevrange(self.keys.dead, offset, offset + limit - 1)
        return self._load([i.decode() for i in ids])  # type: ignore[union-attr]

    def get(self, message_id: str) -> DeadLetter | None:
        """One entry by message id, or None."""
        found = self._load([message_id])
        return found[0] if found else None

    def _load(self, ids: Sequence[str]) -> list[DeadLetter]:
        if not ids:
            return []
        raws = self.redis.hmget(self.keys.dead_entries, list(ids))
        return [DeadLetter.from_json(r) for r in raws if r]

    def all_ids(self) -> list[str]:
        return [i.decode() for i in self.redis.zrange(self.keys.dead, 0, -1)]  # type: ignore[union-attr]

    def replay(self, ids: Iterable[str] | None = None, *, task: str | None = None) -> ReplayReport:
        """Put entries back in the queue with their attempts reset (all entries when ``ids`` is
        None), optionally only those of ``task``. Entries whose message cannot be rebuilt (an
        undecodable body) stay in the DLQ and are reported."""
        wanted = self.all_ids() if ids is None else list(ids)
        replayed: list[str] = []
        skipped: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            entries = {e.id: e for e in self._load(chunk)}
            fresh: list[tuple[str, bytes, str | None]] = []
            for message_id in chunk:
                entry = entries.get(message_id)
                if entry is None:
                    skipped[message_id] = "not in the dead-letter queue"
                    continue
                if task is not None and entry.task != task:
                    continue
                try:
                    message = Message.decode(entry.message.encode())
                except DecodeError as exc:
                    skipped[message_id] = f"cannot be replayed: {exc.reason}"
                    continue
                options = {k: v for k, v in message.options.items() if k != "last_error"}
                body = replace(message, attempt=0, options=options).encode()
                dedupe = message.options.get("dedupe_key")
                fresh.append((message_id, self.app.signer.seal(body), dedupe))
            moved = self.app.broker.replay(self.queue, fresh)
            if moved == len(fresh):
                replayed += [mid for mid, _, _ in fresh]
            else:  # a concurrent purge or replay took some: report what is really back
                still_dead = set(self.redis.zrange(self.keys.dead, 0, -1))
                for mid, _, _ in fresh:
                    if mid.encode() in still_dead:
                        skipped[mid] = "still dead"
                    else:
                        replayed.append(mid)
        return ReplayReport(replayed, skipped)

    def purge(self, older_than_s: float | None = None) -> int:
        """Delete entries at least ``older_than_s`` old (all when None); returns how many."""
        return self.app.broker.purge(self.queue, older_than_s)
