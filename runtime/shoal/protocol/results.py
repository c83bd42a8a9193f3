"""The result envelope: what a handle reads from ``{p}:{q}:result:<id>``.

One JSON object per result: ``{"ok":true,"value":…}`` for a success,
``{"ok":false,"error":"…"}`` (a workflow's failure adds ``member`` and ``reason``) for a
message that ended in the dead-letter queue. Python writes it here only; two Lua scripts share
the format and must change with it:

* ``lua/join.lua`` writes a group's gathered list as a success,
  ``{"ok":true,"value":[r0,r1,…]}``, from the members' JSON;
* ``lua/workflow_failed.lua`` keeps a stored success by testing its first bytes against
  :data:`SUCCESS_PREFIX` (a late failure never replaces a success).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

SUCCESS_PREFIX = b'{"ok":true'
"""How every success starts, byte for byte: ``workflow_failed.lua`` relies on it."""


@dataclass(frozen=True, slots=True)
class StoredResult:
    """A decoded result: the value of a success, or the error of a failure."""

    ok: bool
    value: Any = None
    error: str | None = None
    member: str | None = None
    """A failed workflow: the id of the member that was dead-lettered."""
    reason: str | None = None
    """A failed workflow: the DLQ reason of that member."""


def encode_success(value: Any) -> bytes:
    """A success holding ``value``; TypeError when ``value`` is not JSON-serialisable."""
    return encode_success_json(orjson.dumps(value))


def encode_success_json(value_json: bytes) -> bytes:
    """A success holding a value already encoded as JSON (what ``join.lua`` does too)."""
    return SUCCESS_PREFIX + b',"value":' + value_json + b"}"


def encode_failure(error: str, *, member: str | None = None, reason: str | None = None) -> bytes:
    """A failure saying ``error``; a workflow's also names its failed ``member`` and ``reason``."""
    data: dict[str, Any] = {"ok": False, "error": error}
    if member is not None:
        data["member"] = member
    if reason is not None:
        data["reason"] = reason
    return orjson.dumps(data)


CANCELLED = "cancelled"
"""The ``reason`` of a cancelled message's result (``handle.cancel()``)."""


def encode_cancelled(detail: str) -> bytes:
    """The result of a cancelled message: a failure whose reason is :data:`CANCELLED`."""
    return encode_failure(f"cancelled {detail}", reason=CANCELLED)


def decode_result(raw: bytes | str) -> StoredResult:
    """A stored result; fields it does not know are ignored. Bytes that are not a result (edited
    in Redis) read as a failure that says so, never as a success."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        shown = raw[:200] if isinstance(raw, str) else raw[:200].decode("utf-8", "replace")
        return StoredResult(ok=False, error=f"the stored result is not a Shoal result: {shown!r}")
    member, reason = data.get("member"), data.get("reason")
    error = data.get("error")
    return StoredResult(
        ok=bool(data.get("ok")),
        value=data.get("value"),
        error=None if error is None else str(error),
        member=member if isinstance(member, str) else None,
        reason=reason if isinstance(reason, str) else None,
    )
