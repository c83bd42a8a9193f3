"""The dead-letter queue, from Python: list, show, replay and purge what failed for good.

What an entry holds, and how it is written and read, is :mod:`shoal.dead_letter`'s; the reason
vocabulary is :mod:`shoal.reasons`'s (both re-exported here). ``shoal dlq`` is a thin layer over
this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from shoal.dead_letter import (
    EXCERPT_BYTES,
    DeadLetter,
    clip,
    dead_letter_entry,
    describe,
    read_entry,
)
from shoal.errors import DecodeError
from shoal.message import Message
from shoal.reasons import REASONS, UNREPLAYABLE, Reason, meaning
from shoal.signing import BadSignature

if TYPE_CHECKING:
    from shoal.task import Producer

__all__ = [
    "EXCERPT_BYTES",
    "REASONS",
    "UNREPLAYABLE",
    "DeadLetter",
    "DeadLetters",
    "Reason",
    "ReplayReport",
    "dead_letter_entry",
    "describe",
    "entry_record",
    "summary_record",
]


_NOT_REPLAYED = frozenset({"last_error", "expires_at"})
"""Envelope options a replay drops."""


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay did: ids back in the queue, and ids left in the DLQ with why (those
    refused name the reason)."""

    replayed: list[str]
    skipped: dict[str, str]


def summary_record(entry: DeadLetter) -> dict[str, Any]:
    """One dead letter's summary as data (``shoal dlq list -o json``, the dashboard)."""
    return {
        "id": entry.id,
        "task": entry.task,
        "reason": entry.reason,
        "attempts": entry.attempts,
        "failed_at": entry.failed_at,
        "error": entry.error,
    }


def entry_record(queue: str, entry: DeadLetter) -> dict[str, Any]:
    """Everything about one dead letter as data (``shoal dlq show -o json``, the dashboard)."""
    return {
        "id": entry.id,
        "queue": queue,
        "task": entry.task,
        "reason": entry.reason,
        "meaning": meaning(entry.reason),
        "replayable": entry.refusal is None,
        "refusal": entry.refusal,
        "error": entry.error,
        "exception_type": entry.exception_type,
        "attempts": entry.attempts,
        "enqueued_at": entry.enqueued_at,
        "failed_at": entry.failed_at,
        "trace_id": entry.trace_id,
        "workflow": entry.workflow,
        "size": entry.size,
        "stored": entry.stored,
        "message": entry.message,
        "traceback": entry.traceback,
    }


class DeadLetters:
    """The DLQ of one queue: ``app.dlq("emails")``."""

    def __init__(self, producer: Producer, queue: str) -> None:
        self.queue = queue
        self.broker = producer.broker
        self.signer = producer.signer

    def __len__(self) -> int:
        return self.broker.dead_count(self.queue)

    def entries(self, limit: int = 50, offset: int = 0) -> list[DeadLetter]:
        """Entries, newest first, without their bodies (listing never reads them)."""
        return self._load(self.broker.dead_ids(self.queue, offset, limit))

    def get(self, message_id: str) -> DeadLetter | None:
        """One entry by message id, with its body, or None."""
        found = self._load([message_id], bodies=True)
        return found[0] if found else None

    def _load(self, ids: Sequence[str], bodies: bool = False) -> list[DeadLetter]:
        if not ids:
            return []
        raws = self.broker.dead_summaries(self.queue, ids)
        stored = self.broker.dead_bodies(self.queue, ids) if bodies else [None] * len(ids)
        return [
            read_entry(i, r, b) for i, r, b in zip(ids, raws, stored, strict=True) if r is not None
        ]

    def all_ids(self) -> list[str]:
        return self.broker.dead_ids(self.queue)[::-1]

    def replay(self, ids: Iterable[str] | None = None, *, task: str | None = None) -> ReplayReport:
        """Put entries back in the queue with their attempts reset (all entries when ``ids`` is
        None), optionally only those of ``task``. Entries that may not be replayed (see
        :data:`UNREPLAYABLE`, and excerpts) or whose message cannot be rebuilt stay in the DLQ
        and are reported in ``skipped``."""
        wanted = self.all_ids() if ids is None else list(ids)
        replayed: list[str] = []
        skipped: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            entries = {e.id: e for e in self._load(chunk)}
            candidates: list[DeadLetter] = []
            for message_id in chunk:
                entry = entries.get(message_id)
                if entry is None:
                    skipped[message_id] = "not in the dead-letter queue"
                elif task is None or entry.task == task:
                    refusal = entry.refusal
                    if refusal is None:
                        candidates.append(entry)
                    else:
                        skipped[message_id] = (
                            f"refused: {refusal}. Inspect it with `shoal dlq show {self.queue} "
                            f"{message_id}`, delete it with `shoal dlq purge {self.queue} "
                            f"{message_id}`"
                        )
            fresh: list[tuple[str, bytes, str | None]] = []
            for entry, why_or_body in self._rebuild(candidates):
                if isinstance(why_or_body, str):
                    skipped[entry.id] = why_or_body
                else:
                    fresh.append((entry.id, *why_or_body))
            moved = self.broker.replay(self.queue, fresh)
            if moved == len(fresh):
                replayed += [mid for mid, _, _ in fresh]
            else:  # a concurrent purge or replay took some: report what is really back
                still_dead = set(self.broker.dead_ids(self.queue))
                for mid, _, _ in fresh:
                    if mid in still_dead:
                        skipped[mid] = "still dead"
                    else:
                        replayed.append(mid)
        return ReplayReport(replayed, skipped)

    def _rebuild(
        self, entries: Sequence[DeadLetter]
    ) -> Iterable[tuple[DeadLetter, str | tuple[bytes, str | None]]]:
        """For each entry: (sealed fresh envelope, dedupe key), or why it cannot be rebuilt."""
        missing = [e.id for e in entries if e.body is None]
        loaded = dict(zip(missing, self.broker.dead_bodies(self.queue, missing), strict=True))
        for entry in entries:
            body = entry.body if entry.body is not None else loaded.get(entry.id)
            if body is None:
                yield entry, "its stored message is gone (purged meanwhile?)"
                continue
            try:  # with signing keys, only what the worker verified and sealed comes back
                body = self.signer.open(body)
            except BadSignature:
                yield (
                    entry,
                    (
                        "refused: its stored message does not verify against "
                        "SHOAL_SIGNING_KEYS (written or edited in Redis by someone else, stored "
                        "before DLQ bodies were sealed, or sealed with a retired key); show or "
                        "purge it"
                    ),
                )
                continue
            try:
                message = Message.decode(body)
            except DecodeError as exc:
                yield entry, f"cannot be replayed: {clip(exc.reason, 200)}"
                continue
            if message.id != entry.id:
                yield (
                    entry,
                    (
                        f"refused: its envelope id {clip(message.id, 80)!r} is not the id it was "
                        f"stored under. Delete it with `shoal dlq purge {self.queue} {entry.id}`"
                    ),
                )
                continue
            # a replay runs it now: its last error and its expiry (if it expired) are history
            options = {k: v for k, v in message.options.items() if k not in _NOT_REPLAYED}
            try:
                fresh = replace(message, attempt=0, options=options).encode()
            except TypeError as exc:
                yield entry, f"cannot be replayed: its envelope cannot be encoded ({exc})"
                continue
            yield entry, (self.signer.seal(fresh), message.options.get("dedupe_key"))

    def purge(self, older_than_s: float | None = None, *, ids: Iterable[str] | None = None) -> int:
        """Delete entries at least ``older_than_s`` old (any age when None), only those of
        ``ids`` when given (all entries otherwise); returns how many."""
        if ids is not None:
            return len(self.purge_ids(ids, older_than_s))
        return self.broker.purge(self.queue, older_than_s)

    def purge_ids(self, ids: Iterable[str], older_than_s: float | None = None) -> list[str]:
        """Delete these entries (those at least ``older_than_s`` old); returns those deleted."""
        return self.broker.purge_ids(self.queue, list(ids), older_than_s)
