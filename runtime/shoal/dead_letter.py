"""One DLQ entry's format: the writer (:func:`dead_letter_entry`) and the reader
(:func:`read_entry`, :class:`DeadLetter`), side by side.

An entry has two halves, written together by the worker (``dead.lua``): a bounded summary in
``dead:entries`` (reason, error, attempts, the body's real size, …), which listing reads, and
the message itself in ``dead:bodies``, which only ``show`` and ``replay`` read. A message the
worker verified and decoded is kept whole (it can be replayed); bytes that were not a verified
envelope are kept as an excerpt (:data:`EXCERPT_BYTES`) and are never replayed: a replay signs
what it restores, so it must only restore what was verified. Entries written before the split
carry the message inside the summary; both are read, and fields the reader does not know are
ignored. The DLQ's operations are :mod:`shoal.dlq`'s.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from shoal.message import Message
from shoal.reasons import UNREPLAYABLE, Reason, meaning
from shoal.signing import unsealed

if TYPE_CHECKING:
    from shoal.signing import Signer

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
    reason: Reason,
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
    reason: Reason,
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
                f"dead-lettered as {self.reason} ({meaning(self.reason)}): it never passed "
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


def read_entry(dlq_id: str, raw: bytes | str, body: bytes | None) -> DeadLetter:
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
