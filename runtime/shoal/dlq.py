"""The dead-letter queue, from Python: list, show, replay and purge what failed for good.

An entry has two halves, written together by the worker (``dead.lua``, from
:func:`dead_letter_entry`): a bounded summary in ``dead:entries`` (reason, error, attempts, the
body's real size, …), which listing reads, and the message itself in ``dead:bodies``, which only
``show`` and ``replay`` read. A message the worker verified and decoded is kept whole (it can be
replayed); bytes that were not a verified envelope are kept as an excerpt (``EXCERPT_BYTES``) and
are never replayed: a replay signs what it restores, so it must only restore what was verified.
Entries written before the split carry the message inside the summary; both are read.
``shoal dlq`` is a thin layer over this module.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import orjson

from shoal.errors import DecodeError
from shoal.message import Message
from shoal.signing import BadSignature, unsealed

if TYPE_CHECKING:
    from shoal.signing import Signer
    from shoal.task import Producer

REASONS = {
    "retries_exhausted": "the task kept failing and ran out of retries",
    "not_retryable": "the task raised an exception its retry_on / no_retry_on rules exclude",
    "failed": "the task raised and no middleware retried it or named the failure "
    "(the Retries middleware is not installed)",
    "bad_arguments": "its arguments do not fit the task's signature (not retried: they never "
    "will; replay after deploying a task that accepts them)",
    "too_deep": "its arguments are nested deeper than the JSON encoder allows",
    "undecodable": "the stored bytes are not a Shoal envelope",
    "unknown_task": "no task of that name is defined by the worker's app",
    "bad_signature": "signing keys are set and the message is unsigned or wrongly signed",
    "too_large": "the stored message is larger than SHOAL_MAX_MESSAGE_BYTES",
    "id_mismatch": "the envelope's id differs from the key it was stored under (spoofed or "
    "corrupted)",
    "worker_lost": "workers running it vanished too often (it may be what kills them)",
    "workflow_error": "its result could not be carried on to the next workflow step",
    "internal_error": "its handling failed outside the task (a malformed option, a middleware bug)",
    "unreadable": "its DLQ entry was not written by Shoal (edited or corrupted in Redis)",
}
"""Every machine-readable DLQ reason, with what it means."""

UNREPLAYABLE = frozenset(
    {"bad_signature", "undecodable", "too_large", "id_mismatch", "too_deep", "unreadable"}
)
"""Reasons whose entries may be shown and purged but never replayed; every other reason may be.

These messages failed verification or decoding (``too_deep``: a replay would fail the same
way). A replay signs what it puts back, so replaying them would turn a forgery into a signed,
runnable message."""

EXCERPT_BYTES = 4 * 1024
"""What a DLQ entry keeps of bytes that are not a verified envelope (with their real size)."""

ERROR_BYTES = 4 * 1024
"""Longest error text in an entry (and in the worker's log lines about a message)."""

TRACEBACK_BYTES = 16 * 1024
"""Longest traceback in an entry: its start and its end are kept."""

FIELD_CHARS = 256
"""Longest task name, exception type or trace header copied into an entry."""


def clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, saying how long it was; lone surrogates
    (undecodable bytes) are escaped, so the result always encodes."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode()
    cut = f"…[{len(data)} bytes in all]"
    return data[: max(0, limit - len(cut.encode()))].decode("utf-8", "ignore") + cut


def clip_middle(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes keeping its start and its end (a
    traceback's last line names the exception)."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return data.decode()
    marker = f"\n…[{len(data)} bytes in all; the middle is cut]…\n"
    half = max(0, (limit - len(marker.encode())) // 2)
    head = data[:half].decode("utf-8", "ignore")
    return head + marker + data[len(data) - half :].decode("utf-8", "ignore")


def describe(error: BaseException) -> str:
    """``Type: message`` of an exception, bounded by ``ERROR_BYTES``."""
    try:
        text = f"{type(error).__name__}: {error}"
    except Exception:  # an exception whose __str__ fails must not fail dead-lettering
        text = f"{type(error).__name__}: <unprintable>"
    return clip(text, ERROR_BYTES)


def dead_letter_entry(
    message_id: str,
    queue: str,
    message: Message | None,
    reason: str,
    error: BaseException,
    raw: bytes | None = None,
    *,
    signer: Signer | None = None,
    workflow: dict[str, str] | None = None,
) -> tuple[bytes, bytes]:
    """The two halves of a DLQ entry: (summary JSON, stored body), both bounded.

    ``message`` is the decoded (and, with signing keys, verified) message, if the worker got
    that far; ``raw`` the bytes it read. With ``signer``, bytes that verify and decode as
    ``message_id``'s envelope are kept whole even without ``message`` (an internal error after
    decoding), unless ``reason`` says they failed verification or decoding."""
    body, stored, message = _stored_body(message_id, message, reason, raw, signer)
    if stored == "envelope" and signer is not None:
        body = signer.seal(body)  # a replay acts only on what verifies: Redis data can be edited
    traceparent = message.headers.get("traceparent") if message else None
    summary = {
        "id": message_id,
        "queue": queue,
        "task": clip(message.task, FIELD_CHARS) if message else None,
        "reason": reason,
        "error": describe(error),
        "exception_type": clip(type(error).__qualname__, FIELD_CHARS),
        "traceback": clip_middle("".join(traceback.format_exception(error)), TRACEBACK_BYTES)
        if error.__traceback__
        else "",
        "attempts": message.attempt + 1 if message else 0,
        "enqueued_at": message.enqueued_at if message else None,
        "failed_at": time.time(),
        "traceparent": clip(traceparent, FIELD_CHARS) if isinstance(traceparent, str) else None,
        "workflow": workflow,
        "size": len(raw) if raw is not None else len(body),
        "stored": stored,
    }
    return orjson.dumps(summary), body


def _stored_body(
    message_id: str,
    message: Message | None,
    reason: str,
    raw: bytes | None,
    signer: Signer | None,
) -> tuple[bytes, str, Message | None]:
    """(body, "envelope" or "excerpt", the message the entry describes)."""
    if message is not None:
        try:
            return message.encode(), "envelope", message
        except TypeError:  # not encodable (too deep): keep what was read instead
            pass
    if raw is not None and signer is not None and reason not in UNREPLAYABLE:
        try:
            opened = signer.open(raw)
            decoded = Message.decode(opened)
        except Exception:  # whatever it is, it is not a verified envelope: an excerpt
            decoded = None
        if decoded is not None and decoded.id == message_id:
            return opened, "envelope", message or decoded
    return (raw or b"")[:EXCERPT_BYTES], "excerpt", message


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
    workflow: dict[str, str] | None = None
    """The workflow (id, kind) the message was a member of; that workflow failed with it."""
    size: int | None = None
    """Bytes of the message as the worker read it (None: an entry from before it was kept)."""
    stored: str | None = None
    """``envelope``: the verified message is kept whole; ``excerpt``: only the first
    ``EXCERPT_BYTES`` of bytes that were not a verified envelope; None: an older entry."""
    body: bytes | None = field(default=None, repr=False)
    """What is kept of the message; loaded by :meth:`DeadLetters.get`, not by ``entries()``."""

    @property
    def message(self) -> str | None:
        """The kept message as text, for reading (None when the body was not loaded)."""
        if self.body is None:
            return None
        shown = unsealed(self.body) if self.stored == "envelope" else self.body
        return shown.decode("utf-8", "backslashreplace")

    @property
    def trace_id(self) -> str | None:
        """The W3C trace id of the trace the message belonged to, if it carried one."""
        parts = (self.traceparent or "").split("-")
        return parts[1] if len(parts) == 4 else None

    @property
    def refusal(self) -> str | None:
        """Why this entry may not be replayed; None if it may."""
        if self.reason in UNREPLAYABLE:
            return (
                f"dead-lettered as {self.reason} ({REASONS[self.reason]}): it never passed "
                "verification or decoding, and a replay would sign it"
            )
        if self.stored == "excerpt":
            return f"only an excerpt of its {self.size} bytes is kept: not a verified envelope"
        return None

    @classmethod
    def from_json(cls, raw: bytes | str, body: bytes | None = None) -> DeadLetter:
        """An entry from its summary JSON and, when loaded, its body (older entries carry the
        message inside the summary)."""
        data: dict[str, Any] = orjson.loads(raw)
        legacy = data.get("message")
        if body is None and isinstance(legacy, str):
            body = legacy.encode("utf-8", "backslashreplace")
        traceparent = data.get("traceparent")
        return cls(
            id=data["id"],
            queue=data.get("queue") or "",
            task=data.get("task"),
            reason=data.get("reason") or "",
            error=data.get("error") or "",
            exception_type=data.get("exception_type") or "",
            traceback=data.get("traceback") or "",
            attempts=int(data.get("attempts") or 0),
            enqueued_at=data.get("enqueued_at"),
            failed_at=float(data.get("failed_at") or 0.0),
            traceparent=traceparent if isinstance(traceparent, str) else None,
            workflow=data.get("workflow"),
            size=data.get("size"),
            stored=data.get("stored"),
            body=body,
        )


def _read_entry(dlq_id: str, raw: bytes | str, body: bytes | None) -> DeadLetter:
    """An entry, or, for a summary that is not one (written by something else), a stand-in
    that lists as ``unreadable`` and can be shown and purged but never replayed."""
    try:
        return DeadLetter.from_json(raw, body)
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        return DeadLetter(
            id=dlq_id,
            queue="",
            task=None,
            reason="unreadable",
            error=clip(f"its DLQ summary is not one ({type(exc).__name__}): {raw[:200]!r}", 400),
            exception_type="",
            traceback="",
            attempts=0,
            enqueued_at=None,
            failed_at=0.0,
            traceparent=None,
            stored="excerpt",
            body=body,
        )


@dataclass(frozen=True, slots=True)
class ReplayReport:
    """What a replay did: ids back in the queue, and ids left in the DLQ with why (those
    refused name the reason)."""

    replayed: list[str]
    skipped: dict[str, str]


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
            _read_entry(i, r, b) for i, r, b in zip(ids, raws, stored, strict=True) if r is not None
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
            options = {k: v for k, v in message.options.items() if k != "last_error"}
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
