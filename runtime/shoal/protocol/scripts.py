"""The scripts: one Lua script per state change (``lua/*.lua``), and one Python builder per script.

Each ``*_call`` builder is the one place in Python that knows its script's KEYS/ARGV layout (the
script's header documents the same layout); each ``parse_*`` reads a script's reply. Both
clients (:mod:`shoal.protocol.broker`, :mod:`shoal.protocol.async_broker`) build their calls
here, so a layout never drifts between them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, NamedTuple

from shoal.protocol.keys import QueueKeys, queue_keys
from shoal.settings import Settings

SCRIPT_NAMES = (
    "enqueue",
    "fetch",
    "ack",
    "retry",
    "dead",
    "handback",
    "renew",
    "replay",
    "purge",
    "measure",
    "group_start",
    "join",
    "group_done",
    "workflow_failed",
    "schedule_publish",
    "promote",
    "cancel",
    "clear",
    "status",
    "throttle",
)
RATE_WINDOW_MS = 100
"""A rate-limited start may be taken this long before its slot: one fetch leases a few starts
of a fast limit (1000/s) instead of one per round trip; a slow one (20/s) still starts one at a
time after the first few."""
PRIORITY_LOOKAHEAD = 200
"""Prioritized tokens a fetch moves aside, at most, to find a plain token behind them: the bound
on one fetch's work when many prioritized messages wait among plain ones (past it, the best
prioritized message is leased)."""
MOVE_LIMIT = 500
"""Delayed or expired entries moved per fetch: bounds one script's run time on a huge backlog."""

Call = tuple[str, list[str], list[Any]]
"""A script invocation: (script name, KEYS, ARGV)."""

Outgoing = tuple[str, int, bytes, str | None]
"""A message to enqueue: (id, delay in ms, stored bytes, dedupe key or None)."""

Finished = tuple[str, int, bytes | None, str | None]
"""A message to ack: (id, owner token, result JSON or None, dedupe key or None)."""

Held = tuple[str, int]
"""A lease a worker holds: (message id, owner token)."""


@dataclass(frozen=True, slots=True)
class Guard:
    """Makes an enqueue happen at most once, checked in the same script that stores it.

    ``once``: ``field`` must not exist yet in the ``key`` HASH (a workflow step started by
    whichever worker gets there first). ``after``: the number that starts ``value`` must be
    greater than the one stored in ``field`` (a schedule tick, claimed by one worker of many).
    ``key`` must share the queue's hash tag."""

    key: str
    mode: str
    field: str
    value: str
    ttl_ms: int = 0


INCLUDE = "--#include "
"""A line ``--#include NAME`` in a script is replaced by ``lua/NAME.lua``: logic two scripts
share (``promote_due``, in fetch and promote; ``variadic``, in fetch and ack) is written once."""


@functools.cache
def script_source(name: str) -> str:
    """The text of script ``name``, its includes pasted in (one level: a fragment includes
    nothing)."""
    text = _lua(name)
    if INCLUDE not in text:
        return text
    lines = [
        _lua(line[len(INCLUDE) :].strip()) if line.startswith(INCLUDE) else line + "\n"
        for line in text.splitlines()
    ]
    return "".join(lines)


def _lua(name: str) -> str:
    return resources.files("shoal.protocol").joinpath(f"lua/{name}.lua").read_text()


@dataclass(frozen=True, slots=True)
class QueueStats:
    """A queue's figures from one O(1) measurement. Ages in seconds, counters since creation."""

    queue: str
    waiting: int
    in_flight: int
    delayed: int
    dead: int
    oldest_age_s: float
    enqueued: int
    completed: int
    retried: int
    dead_total: int
    recovered: int
    measured_at_ms: int
    due_soon: int = 0
    """Delayed messages due within the next few seconds (``DUE_SOON_MS``)."""
    paused: bool = False
    """The queue is paused (``app.pause``): it accepts messages and runs none."""
    cancelled: int = 0
    """Messages cancelled before they ran (counter since creation)."""
    rate_limit: str | None = None
    """The queue's own rate limit (``"20/s"``), if it has one."""

    @classmethod
    def from_reply(cls, queue: str, reply: Sequence[Any]) -> QueueStats:
        now, waiting, inflight, delayed, dead, token = reply[:6]
        oldest = 0.0
        if token:
            ready_ms = token.split(b":", 1)[0]
            if ready_ms.isdigit():
                oldest = max(0.0, (int(now) - int(ready_ms)) / 1000)
        enq, comp, retried, dead_total, recovered = (int(x) for x in reply[6:11])
        return cls(
            queue,
            int(waiting),
            int(inflight),
            int(delayed),
            int(dead),
            oldest,
            enq,
            comp,
            retried,
            dead_total,
            recovered,
            int(now),
            int(reply[11]) if len(reply) > 11 else 0,
            bool(int(reply[12])) if len(reply) > 12 else False,
            int(reply[13]) if len(reply) > 13 else 0,
            reply[14].decode() if len(reply) > 14 and reply[14] else None,
        )


class Leased(NamedTuple):
    """One message a fetch handed to this worker."""

    id: str
    """The message id: the key it is stored under, which is its identity. For a key that is not
    UTF-8, a readable escape of it (``key`` holds the bytes); for a malformed waiting token,
    the token's text."""
    body: bytes | None
    """The stored envelope; None for a malformed waiting token (nothing was leased)."""
    deliveries: int
    """How often the message was handed to a worker, this time included."""
    owner: int
    """The owner token of this lease: every later transition must present it (0: none)."""
    key: bytes | None = None
    """The raw key when it is not UTF-8 text (such a message can only be dead-lettered)."""


@dataclass(frozen=True, slots=True)
class Fetched:
    """What one fetch returned: the leased messages, and when the next delayed one is due."""

    messages: list[Leased]
    next_due_ms: int
    now_ms: int
    cancelled: frozenset[str] = frozenset()
    """Ids among ``messages`` whose cancel was asked while an earlier delivery ran: they must
    be finished as cancelled, never run."""


# --- call builders: the one place that knows each script's KEYS/ARGV layout --------------------


def enqueue_call(
    k: QueueKeys,
    items: Iterable[Outgoing],
    guard: Guard | None = None,
    priority_ms: int | None = None,
) -> Call:
    """``priority_ms``: the score offset of the messages' priority (see
    :func:`shoal.priority.offset_ms`); None for the default priority."""
    keys = [k.waiting, k.messages, k.delayed, k.stats, k.dedupe, k.ready]
    if guard is None:
        argv: list[Any] = [k.notify, "", "", "", 0]
    else:
        keys.append(guard.key)
        argv = [k.notify, guard.mode, guard.field, guard.value, guard.ttl_ms]
    argv.append("" if priority_ms is None else priority_ms)
    for message_id, delay_ms, body, dedupe in items:
        argv += (message_id, delay_ms, body, dedupe or "")
    return "enqueue", keys, argv


def enqueued_ids(reply: Sequence[bytes] | None) -> list[str] | None:
    return None if reply is None else [i.decode() for i in reply]


def fetch_call(k: QueueKeys, lease_ms: int, count: int, result_ttl_ms: int = 3_600_000) -> Call:
    keys = [k.waiting, k.messages, k.inflight, k.delayed, k.stats, k.deliveries, k.owners]
    keys += (k.paused, k.config, k.rate, k.ready, k.stale, k.cancels)
    argv = [lease_ms, count, MOVE_LIMIT, RATE_WINDOW_MS, PRIORITY_LOOKAHEAD, result_ttl_ms]
    return "fetch", keys, argv


def throttle_call(k: QueueKeys, task: str, interval_ms: float, message_id: str, owner: int) -> Call:
    keys = [k.rate, k.rate_reserved(task), k.inflight, k.delayed, k.owners, k.deliveries]
    keys += (k.stats, k.messages)
    return "throttle", keys, [f"task:{task}", interval_ms, message_id, owner, RATE_WINDOW_MS]


def ack_call(k: QueueKeys, done: Sequence[Finished], ttl_ms: int) -> Call:
    keys = [k.inflight, k.messages, k.stats, k.deliveries, k.dedupe, k.owners]
    argv: list[Any] = [ttl_ms]
    for message_id, owner, result, dedupe in done:
        argv += (message_id, owner, result or b"", dedupe or "")
        if result:
            keys.append(k.result(message_id))
    return "ack", keys, argv


def retry_call(k: QueueKeys, message_id: str, delay_ms: int, body: bytes, owner: int) -> Call:
    keys = [k.inflight, k.messages, k.delayed, k.stats, k.owners]
    return "retry", keys, [message_id, delay_ms, body, owner]


def dead_call(
    k: QueueKeys,
    message_id: str | bytes,
    entry: tuple[bytes, bytes],
    result: bytes | None,
    dedupe: str | None,
    bounds: tuple[int, float],
    result_ttl_s: float,
    owner: int | None,
    dlq_id: str | None,
) -> Call:
    max_entries, max_age_s = bounds
    keys = [
        k.inflight,
        k.messages,
        k.dead,
        k.dead_entries,
        k.stats,
        k.deliveries,
        k.dedupe,
        k.result(message_id) if isinstance(message_id, str) else k.result_prefix,
        k.owners,
    ]
    argv = [
        message_id,
        entry[0],
        max_entries,
        result or b"",
        int(result_ttl_s * 1000),
        int(max_age_s * 1000),
        dedupe or "",
        "" if owner is None else owner,
        dlq_id or "",
    ]
    keys.append(k.dead_bodies)
    argv.append(entry[1])
    return "dead", keys, argv


def handback_call(k: QueueKeys, held: Sequence[Held]) -> Call:
    argv: list[Any] = [k.notify]
    for message_id, owner in held:
        argv += (message_id, owner)
    return "handback", [k.inflight, k.waiting, k.messages, k.deliveries, k.owners], argv


def renew_call(k: QueueKeys, lease_ms: int, held: Sequence[Held]) -> Call:
    argv: list[Any] = [lease_ms]
    for message_id, owner in held:
        argv += (message_id, owner)
    return "renew", [k.inflight, k.owners, k.cancels], argv


class Renewed(NamedTuple):
    """What a renewal found: leases lost to another delivery, and cancels asked of the rest."""

    lost: list[str]
    cancelled: list[str]


def parse_renew(reply: Sequence[Any]) -> Renewed:
    lost, cancelled = reply
    return Renewed(
        [i.decode("utf-8", "backslashreplace") for i in lost],
        [i.decode("utf-8", "backslashreplace") for i in cancelled],
    )


def cancel_call(k: QueueKeys, message_id: str, result: bytes, ttl_ms: int) -> Call:
    keys = [
        k.messages,
        k.inflight,
        k.delayed,
        k.stats,
        k.deliveries,
        k.cancels,
        k.result(message_id),
    ]
    return "cancel", keys, [message_id, result, ttl_ms]


def status_call(k: QueueKeys, message_id: str) -> Call:
    keys = [
        k.messages,
        k.inflight,
        k.delayed,
        k.dead_entries,
        k.result(message_id),
        k.progress(message_id),
        k.cancels,
    ]
    return "status", keys, [message_id]


class Whereabouts(NamedTuple):
    """One message's records, as ``status.lua`` read them at once (None where absent)."""

    now_ms: int
    envelope: bytes | None
    lease_deadline_ms: float | None
    due_ms: float | None
    dead_entry: bytes | None
    result: bytes | None
    progress: bytes | None
    cancel_asked_ms: float | None


def parse_status(reply: Sequence[Any]) -> Whereabouts:
    now, envelope, lease, due, dead, result, progress, cancel = (x or None for x in reply)
    return Whereabouts(
        int(now or 0),
        envelope,
        None if lease is None else float(lease),
        None if due is None else float(due),
        dead,
        result,
        progress,
        None if cancel is None else float(cancel),
    )


def clear_call(k: QueueKeys, batch: int) -> Call:
    keys = [k.waiting, k.messages, k.delayed, k.stats, k.deliveries, k.inflight, k.ready, k.stale]
    return "clear", keys, [batch]


def replay_call(k: QueueKeys, fresh: Sequence[tuple[str, bytes, str | None]]) -> Call:
    argv: list[Any] = [k.notify]
    for message_id, body, dedupe in fresh:
        argv += (message_id, body, dedupe or "")
    keys = [k.dead, k.dead_entries, k.messages, k.waiting, k.deliveries, k.dedupe, k.owners]
    return "replay", [*keys, k.dead_bodies], argv


def purge_call(k: QueueKeys, min_age_ms: int, batch: int, ids: Sequence[str] = ()) -> Call:
    return "purge", [k.dead, k.dead_entries, k.dead_bodies], [min_age_ms, batch, *ids]


DUE_SOON_MS = 5000
"""Delayed messages due within this are reported as ``due_soon`` (the autoscaler counts them)."""


def group_start_call(k: QueueKeys, group_id: str, size: int, then: bytes, ttl_ms: int) -> Call:
    return "group_start", [k.group(group_id)], [then, size, ttl_ms]


def join_call(
    k: QueueKeys,
    group_id: str,
    index: int,
    result: bytes,
    workflow_id: str,
    ttls_ms: tuple[int, int],
) -> Call:
    keys = [k.group(group_id), k.group_done(group_id), k.result(workflow_id)]
    return "join", keys, [index, result, *ttls_ms]


def group_done_call(k: QueueKeys, group_id: str, ttl_ms: int) -> Call:
    return "group_done", [k.group(group_id), k.group_done(group_id)], [ttl_ms]


def workflow_failed_call(k: QueueKeys, workflow_id: str, failure: bytes, ttl_ms: int) -> Call:
    return "workflow_failed", [k.result(workflow_id)], [failure, ttl_ms]


def schedule_publish_call(
    k: QueueKeys, now_ms: int, schedules: Sequence[tuple[str, bytes]]
) -> Call:
    argv: list[Any] = [now_ms]
    for name, raw in schedules:
        argv += (name, raw)
    return "schedule_publish", [k.schedules, k.schedules_seen, k.schedules_declared], argv


def promote_call(k: QueueKeys, limit: int = MOVE_LIMIT) -> Call:
    keys = [k.waiting, k.messages, k.inflight, k.delayed, k.stats, k.owners]
    return "promote", keys, [limit, k.notify]


class Promoted(NamedTuple):
    """What one promote call moved into the waiting list, and its length after."""

    delayed: int
    """Due delayed messages and due retries moved."""
    recovered: int
    """Lapsed leases returned (their worker can no longer ack them)."""
    waiting: int
    """LLEN of the waiting list afterwards: what a KEDA redis scaler reads."""

    @property
    def moved(self) -> int:
        return self.delayed + self.recovered


def parse_promote(reply: Sequence[Any]) -> Promoted:
    return Promoted(int(reply[0]), int(reply[1]), int(reply[2]))


def measure_call(k: QueueKeys) -> Call:
    keys = [k.waiting, k.inflight, k.delayed, k.dead, k.stats, k.paused, k.stale, k.config]
    return "measure", keys, [DUE_SOON_MS]


MAX_ID_BYTES = 128
"""Longest message id a worker accepts (Shoal's own are 32 hex digits, workflow steps' a few
more): a longer key, or one that is not printable UTF-8 text, is poison."""


def parse_fetch(reply: Sequence[Any]) -> Fetched:
    leased = []
    for i in range(3, len(reply), 4):
        raw: bytes = reply[i]
        body, deliveries, owner = reply[i + 1], int(reply[i + 2]), int(reply[i + 3])
        text = valid_id(raw)
        if text is not None:
            leased.append(Leased(text, body, deliveries, owner))
        else:  # poison: the raw key is kept, so it can still be dead-lettered under a safe name
            leased.append(Leased(readable_id(raw), body, deliveries, owner, raw))
    cancelled = frozenset(i.decode("utf-8", "backslashreplace") for i in reply[2])
    return Fetched(leased, int(reply[0]), int(reply[1]), cancelled)


def valid_id(raw: bytes) -> str | None:
    if len(raw) > MAX_ID_BYTES:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    return text if text.isprintable() else None


def readable_id(raw: bytes) -> str:
    """A printable, bounded name for a key or token that is not a valid id: its escaped text
    when short, else ``key-`` and a digest (the DLQ entry keeps an excerpt of the bytes)."""
    if len(raw) <= MAX_ID_BYTES:
        return repr(raw)[2:-1]  # printable ASCII as is, every other byte as \xNN
    return "key-" + hashlib.sha256(raw).hexdigest()[:32]


def parse_ack(reply: Sequence[Any]) -> tuple[int, list[str]]:
    return int(reply[0]), [i.decode("utf-8", "backslashreplace") for i in reply[1:]]


class ScheduleRecords(NamedTuple):
    """What Redis holds about one queue's schedules (raw, as stored: see ``keys.py``)."""

    schedules: dict[bytes, bytes]
    """name → schedule JSON."""
    runs: dict[bytes, bytes]
    """name → the last claimed tick."""
    seen: dict[bytes, bytes]
    """code schedule name → when a worker last declared it (ms)."""
    declared: bytes | None
    """when a worker of the queue last declared its code schedules, none included (ms)."""


# --- what both clients share ---------------------------------------------------------------


class KeyedClient:
    settings: Settings
    _keys: dict[str, QueueKeys]

    @property
    def _result_ttl_ms(self) -> int:
        return int(self.settings.result_ttl_s * 1000)

    @property
    def _workflow_ttl_ms(self) -> int:
        return int(self.settings.workflow_ttl_s * 1000)

    def keys(self, queue: str) -> QueueKeys:
        """The (cached) keys of ``queue``."""
        k = self._keys.get(queue)
        if k is None:
            k = self._keys[queue] = queue_keys(self.settings.key_prefix, queue)
        return k
