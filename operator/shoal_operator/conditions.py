"""metav1.Condition bookkeeping: set one condition, keep the others, move the transition time
only when the status really changes (so `kubectl describe` shows when things changed)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

Condition = dict[str, Any]


def now_iso() -> str:
    """The current time as Kubernetes writes it (RFC 3339, UTC, seconds)."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None = None,
    now: str | None = None,
) -> list[Condition]:
    """The conditions with ``type_`` set; the others unchanged, in order."""
    value = "True" if status else "False"
    out: list[Condition] = []
    found = False
    for cond in conditions or ():
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != value
        out.append(
            _condition(
                type_,
                value,
                reason,
                message,
                generation,
                (now or now_iso()) if changed else cond.get("lastTransitionTime"),
            )
        )
    if not found:
        out.append(_condition(type_, value, reason, message, generation, now or now_iso()))
    return out


def _condition(
    type_: str, value: str, reason: str, message: str, generation: int | None, when: str | None
) -> Condition:
    cond: Condition = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": when or now_iso(),
    }
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond
