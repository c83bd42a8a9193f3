"""Read-only listings for the dashboard: what is running now, and workflows in flight.

Nothing here writes. The runtime keeps no index of workflows, so :func:`workflow_records` is a
bounded ``SCAN`` over one queue's ``workflow:*`` and ``group:*`` keys (the pattern carries the
queue's hash tag, so on a Cluster only that slot's node holds matches). A listing is capped by
``limit``; a Redis with many workflows in flight shows the first ``limit`` found.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shoal.protocol.broker import Broker


@dataclass(frozen=True, slots=True)
class InFlight:
    """A leased message: its id, the lease deadline (ms, Redis clock), and its envelope."""

    id: str
    lease_until_ms: int
    envelope: bytes | None
    """None when the message finished between the two reads."""


@dataclass(frozen=True, slots=True)
class WorkflowRecord:
    """One ``workflow:<id>`` (steps started from this slot) or ``group:<id>`` (a group's
    members joined so far) key, as found."""

    kind: str
    """``workflow`` or ``group``."""
    id: str
    fields: dict[str, bytes]
    ttl_s: float
    """Seconds before the record expires (-1: no TTL)."""
    finished: bool = False
    """For a workflow: its final result is stored in this queue's slot."""


def in_flight(broker: Broker, queue: str, limit: int = 100) -> list[InFlight]:
    """The leased messages of ``queue`` (soonest lease deadline first), with their envelopes,
    in two round trips."""
    k = broker.keys(queue)
    pairs: list[tuple[bytes, float]] = broker.redis.zrange(  # type: ignore[assignment]
        k.inflight, 0, max(0, limit - 1), withscores=True
    )
    if not pairs:
        return []
    envelopes: list[bytes | None] = broker.redis.hmget(  # type: ignore[assignment]
        k.messages, [mid for mid, _ in pairs]
    )
    return [
        InFlight(mid.decode("utf-8", "backslashreplace"), int(score), body)
        for (mid, score), body in zip(pairs, envelopes, strict=True)
    ]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


SCAN_CALLS = 20
"""SCAN calls (of ``SCAN_COUNT`` keys each) one listing may spend per queue. A pattern does not
narrow SCAN on a single Redis: every key is walked, so the walk is bounded, never the whole of
a big keyspace on each page view."""
SCAN_COUNT = 1000


def workflow_records(broker: Broker, queue: str, limit: int = 100) -> list[WorkflowRecord]:
    """The workflow guards and group records held in ``queue``'s slot (at most ``limit`` keys,
    found within SCAN_CALLS calls; a group's ``:done`` marker is skipped: that group is over)."""
    k = broker.keys(queue)
    base = k.base.encode()
    names: list[bytes] = []
    pattern = _glob_escape(k.base) + "[wg][or]*"  # workflow:* and group:*, in one walk
    node = broker._primary_of(k.waiting)  # on a Cluster, the node that holds the queue's slot
    cursor: Any = 0
    for _ in range(SCAN_CALLS):
        cursor, found = node.scan(cursor, match=pattern, count=SCAN_COUNT)
        for name in found:
            key = name if isinstance(name, bytes) else str(name).encode()
            tail = key[len(base) :]
            if tail.startswith((b"workflow:", b"group:")) and not key.endswith(b":done"):
                names.append(key)
        if not cursor or len(names) >= limit:
            break
    names = names[:limit]
    if not names:
        return []
    pipe = broker.redis.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(name)
        pipe.pttl(name)
    replies = pipe.execute()
    parsed = [name[len(base) :].decode("utf-8", "backslashreplace") for name in names]
    results = broker.redis.pipeline(transaction=False)  # a workflow's final result, if here
    for rest in parsed:
        kind, _, rid = rest.partition(":")
        results.exists(k.result(rid) if kind == "workflow" else k.base + rest)
    found = results.execute()
    records = []
    for i, rest in enumerate(parsed):
        kind, _, rid = rest.partition(":")
        raw: dict[bytes, bytes] = replies[2 * i] or {}
        ttl_ms = int(replies[2 * i + 1])
        records.append(
            WorkflowRecord(
                kind=kind,
                id=rid,
                fields={f.decode("utf-8", "backslashreplace"): v for f, v in raw.items()},
                ttl_s=ttl_ms / 1000 if ttl_ms >= 0 else -1.0,
                finished=kind == "workflow" and bool(found[i]),
            )
        )
    return records
