"""The message envelope: what travels through Redis, versioned JSON, never pickle.

Producers build a :class:`Message` and encode it; workers decode bytes back into one or get a
:class:`~shoal.errors.DecodeError` that names what is wrong, so a poison message is set aside
instead of crashing anything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from shoal.errors import DecodeError

ENVELOPE_VERSION = 1
"""Bumped on an incompatible envelope change; workers refuse versions they do not know."""


def new_message_id() -> str:
    """A 32-hex-digit id that sorts by creation time (48-bit ms clock + 80 random bits)."""
    return message_id_at(time.time_ns())


def message_id_at(now_ns: int) -> str:
    """The id of a message created at ``now_ns`` (``time.time_ns()``): the producer reads the
    clock once for the id and ``enqueued_at``."""
    return f"{now_ns // 1_000_000:012x}{os.urandom(10).hex()}"


def encode_envelope(
    message_id: str,
    task: str,
    queue: str,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    enqueued_at: float,
    attempt: int,
    headers: Mapping[str, str],
    options: Mapping[str, Any],
) -> bytes:
    """The JSON envelope of these fields (what :meth:`Message.encode` stores), for a producer
    that builds no Message. ``args`` may be a tuple: JSON has arrays only. Raises TypeError
    when an argument is not JSON-serialisable."""
    return orjson.dumps(
        {
            "v": ENVELOPE_VERSION,
            "id": message_id,
            "task": task,
            "queue": queue,
            "args": args,
            "kwargs": kwargs,
            "enqueued_at": enqueued_at,
            "attempt": attempt,
            "headers": headers,
            "options": options,
        }
    )


@dataclass(frozen=True, slots=True)
class Message:
    """One task invocation. ``attempt`` counts executions already tried (0 on the first run)."""

    id: str
    task: str
    queue: str
    args: list[Any]
    kwargs: dict[str, Any]
    enqueued_at: float
    attempt: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def encode(self) -> bytes:
        """The JSON envelope. Raises TypeError when an argument is not JSON-serialisable."""
        return encode_envelope(
            self.id,
            self.task,
            self.queue,
            self.args,
            self.kwargs,
            self.enqueued_at,
            self.attempt,
            self.headers,
            self.options,
        )

    def next_attempt(self, **options: Any) -> Message:
        """The same message for its next attempt (same id), with extra options merged in."""
        return replace(self, attempt=self.attempt + 1, options={**self.options, **options})

    @staticmethod
    def decode(data: bytes) -> Message:
        """Parse an envelope; raise DecodeError saying which field is wrong."""
        try:
            raw = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise DecodeError(data, f"not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise DecodeError(data, f"envelope is a JSON {type(raw).__name__}, not an object")
        if raw.get("v") != ENVELOPE_VERSION:
            raise DecodeError(
                data, f"envelope version {raw.get('v')!r} is not {ENVELOPE_VERSION}; upgrade shoal"
            )
        try:
            message = Message(
                id=raw["id"],
                task=raw["task"],
                queue=raw["queue"],
                args=raw["args"],
                kwargs=raw["kwargs"],
                enqueued_at=raw["enqueued_at"],
                attempt=raw.get("attempt", 0),
                headers=raw.get("headers") or {},
                options=raw.get("options") or {},
            )
        except KeyError as exc:
            raise DecodeError(data, f"envelope lacks field {exc.args[0]!r}") from None
        m = message  # JSON gives exact types, so `type(x) is T` is the whole check (and cheap)
        if (
            type(m.id) is str
            and type(m.task) is str
            and type(m.queue) is str
            and type(m.args) is list
            and type(m.kwargs) is dict
            and type(m.enqueued_at) in _NUMBERS
            and type(m.attempt) is int
            and type(m.headers) is dict
            and type(m.options) is dict
            and type(m.options.get("dedupe_key", "")) is str
        ):
            return message
        for name, kind in _FIELD_TYPES:
            value = getattr(message, name)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise DecodeError(data, f"envelope field {name!r} is {type(value).__name__}")
        dedupe = m.options.get("dedupe_key", "")
        if type(dedupe) is not str:  # it is sent to Redis with the ack
            raise DecodeError(data, f"option 'dedupe_key' is {type(dedupe).__name__}, not text")
        return message


_NUMBERS = (int, float)
_FIELD_TYPES: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("id", str),
    ("task", str),
    ("queue", str),
    ("args", list),
    ("kwargs", dict),
    ("enqueued_at", (int, float)),
    ("attempt", int),
    ("headers", dict),
    ("options", dict),
)
