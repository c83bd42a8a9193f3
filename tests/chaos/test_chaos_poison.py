"""Drill: a poison corpus written straight into Redis (the layout of ``shoal/protocol/keys.py``),
interleaved with good messages, run by one real worker process with signing keys set.

The promise: the worker process never exits; every good message runs exactly once; every
poison entry ends in the DLQ with a reason that says what was wrong, runs nothing, and leaves
nothing held; logs and DLQ entries stay bounded; ``shoal dlq list`` still answers.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import chaos_ledger
import orjson
import pytest
from chaos_drills import Fleet, settle
from chaos_tasks import POISON_QUEUE
from processes import worker_env

from helpers import wait_for
from shoal import App
from shoal.protocol.server import LocalRedis
from shoal.signing import Signer

KEYS = ("chaos-poison-key",)
LONGEST_LOG_LINE = 16 * 1024
LARGEST_DLQ_ENTRY = 16 * 1024
"""Bytes. The issue's promise: a bounded excerpt (about 4 KiB) of a poison body, never all of it,
in the log and in the DLQ."""
HUGE = 10 * 1024 * 1024


@dataclass
class Poison:
    """One poison entry: the bytes written, and the DLQ reasons that would be right for it."""

    marker: str
    """Appears in its key (or token), so its DLQ entry can be found whatever id it gets."""
    what: str
    token: bytes
    key: bytes
    body: bytes | None
    reasons: frozenset[str]


def envelope(marker: str, task: str = "poison.record", **changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "v": 1,
        "id": marker,
        "task": task,
        "queue": POISON_QUEUE,
        "args": [marker],
        "kwargs": {},
        "enqueued_at": time.time(),
        "attempt": 0,
        "headers": {},
        "options": {},
    }
    raw.update(changes)
    return raw


def corpus(live_id: str) -> list[Poison]:
    """Every poison entry; ``live_id`` is a good message's, waiting (delayed) meanwhile."""
    seal = Signer(KEYS).seal
    ms = str(int(time.time() * 1000)).encode()
    items: list[Poison] = []

    def marker() -> str:
        """The marker of the entry being built."""
        return f"poison-{len(items):02d}"

    def body(**changes: Any) -> bytes:
        return orjson.dumps(envelope(marker(), **changes))

    def add(what: str, stored: bytes | None, reasons: set[str], key: bytes = b"") -> None:
        key = key or marker().encode()
        token = ms + b":" + key if stored is not None else key
        items.append(Poison(marker(), what, token, key, stored, frozenset(reasons)))

    add(
        "a waiting token that is not UTF-8",
        None,
        {"undecodable"},
        key=b"\xff\xfe " + marker().encode() + b" \x80",
    )
    add(
        "a message id that is not UTF-8 (valid body under it)",
        seal(body()),
        {"undecodable"},
        key=b"\xc3\x28" + marker().encode() + b"\xff",
    )
    add("a body that is not UTF-8", seal(body()[:-1] + b',"x":"\xff\xfe"}'), {"undecodable"})
    add("not JSON", seal(b"{poison"), {"undecodable"})
    add("a JSON list", seal(b'["poison"]'), {"undecodable"})
    add("a JSON string", seal(b'"poison"'), {"undecodable"})
    add("JSON null", seal(b"null"), {"undecodable"})
    add("an envelope lacking fields", seal(b'{"v":1,"task":"poison.record"}'), {"undecodable"})
    add("args an object, kwargs a list", seal(body(args={"x": 1}, kwargs=[1])), {"undecodable"})
    add("an unknown envelope version", seal(body(v=99)), {"undecodable"})
    add("a 10 MB body", seal(body(args=[marker(), "x" * HUGE])), {"too_large"})
    for depth in (300, 1000):
        deep = body(task="poison.payload", args=[marker(), 0]).replace(
            b",0]", b"," + b"[" * depth + b"]" * depth + b"]", 1
        )
        add(f"args nested {depth} levels deep", seal(deep), {"too_deep"})
    add(
        "args that do not fit the function",
        seal(body(args=[marker(), "one too many"])),
        {"bad_arguments"},
    )
    add("an envelope id that differs from its key", seal(body(id="elsewhere")), {"id_mismatch"})
    add(
        "an envelope id equal to another live message's id", seal(body(id=live_id)), {"id_mismatch"}
    )
    add("an unsigned message", body(), {"bad_signature"})
    add("a forged signature", b"s1:" + b"A" * 43 + b":" + body(), {"bad_signature"})
    add("an unknown task", seal(body(task="nobody.defines.this")), {"unknown_task"})
    return items


@pytest.mark.timeout(150)
def test_a_poison_corpus_never_stops_a_worker(
    chaos_redis: Callable[..., LocalRedis],
    producer_for: Callable[..., App],
    fleet: Fleet,
    ledger_dir: Path,
    figures: Callable[..., None],
) -> None:
    server = chaos_redis()
    producer = producer_for(server.url, signing_keys=KEYS)
    client = producer.broker.redis
    keys = producer.broker.keys(POISON_QUEUE)
    good = producer.remote("poison.record", queue=POISON_QUEUE)

    # Given a good message held back for 3 s (its id is what one poison entry claims), and a
    # queue where poison entries and good messages alternate
    (live,) = good.with_options(delay=3).enqueue_many([("good-live",)])
    poison = corpus(live.id)
    good_ids = ["good-live"]
    for n, item in enumerate(poison):
        batch = [f"good-{n:02d}-{k}" for k in range(2)]
        good.enqueue_many([(i,) for i in batch])
        good_ids += batch
        if item.body is not None:
            client.hset(keys.messages, item.key, item.body)
        client.lpush(keys.waiting, item.token)
    good.enqueue_many([("good-last",)])
    good_ids.append("good-last")

    # When one worker process runs the queue
    proc = fleet.start(
        server.url, "--concurrency", "4", "--queues", POISON_QUEUE,
        env={"SHOAL_SIGNING_KEYS": ",".join(KEYS), "SHOAL_LEASE": "2", "SHOAL_HEARTBEAT": "0.5"},
    )  # fmt: skip
    (child,) = wait_for(proc.child_pids, timeout=30, message="the worker process")

    def dlq_complete() -> bool:
        return (
            bool(client.zcard(keys.dead) >= len(poison))
            and not chaos_ledger.tally(ledger_dir, good_ids).lost
        )

    final, settled = settle(producer, POISON_QUEUE, dlq_complete, timeout=30)

    # Then: the same process, good messages once each, every poison entry in the DLQ
    problems: list[str] = []
    children = proc.child_pids()
    log = proc.log_path.read_bytes()
    if children != {child} or b"starting a replacement" in log:
        problems.append(
            f"the worker process exited: {log.count(b'starting a replacement')} replacement(s)"
            f" ({child} -> {sorted(children)})"
        )
    if not settled:
        problems.append(f"the queue did not settle in 30 s: {final}")
    runs = chaos_ledger.by_id(chaos_ledger.read(ledger_dir))
    wrong = {i: len(runs.get(i, [])) for i in good_ids if len(runs.get(i, [])) != 1}
    if wrong:
        problems.append(f"good messages not run exactly once (id: runs): {wrong}")
    ran = sorted(i for i in runs if i.startswith("poison-"))
    if ran:
        problems.append(f"poison entries ran as tasks: {ran}")
    dead: dict[bytes, bytes] = client.hgetall(keys.dead_entries)  # type: ignore[assignment]
    bodies: dict[bytes, bytes] = client.hgetall(keys.dead_bodies)  # type: ignore[assignment]
    verdicts = judge(poison, dead, bodies, problems)
    big = {_printable(k): len(v) for k, v in dead.items() if len(v) > LARGEST_DLQ_ENTRY}
    if big:
        problems.append(f"DLQ entries over {LARGEST_DLQ_ENTRY} bytes (id: bytes): {big}")
    longest = max((len(line) for line in log.splitlines()), default=0)
    if longest > LONGEST_LOG_LINE:
        problems.append(f"the worker log has a {longest}-byte line")
    listing = _dlq_list(server.url)
    if listing is not None:
        problems.append(listing)
    figures(
        good=len(good_ids),
        poison=len(poison),
        good_not_run_once=len(wrong),
        poison_ran=len(ran),
        worker_restarts=log.count(b"starting a replacement"),
        dead_lettered_as_expected=sum(1 for v in verdicts if v["reason"] in v["expected"]),
        longest_log_line=longest,
        largest_dlq_entry=max((len(v) for v in dead.values()), default=0),
        verdicts=verdicts,
    )
    assert not problems, "\n".join(problems)


def judge(
    poison: list[Poison], dead: dict[bytes, bytes], bodies: dict[bytes, bytes], problems: list[str]
) -> list[Any]:
    """Find each poison entry's DLQ entry by its marker (in its id, its summary or the body
    kept with it: a bad token is filed under an id of its own); note what is missing or wrong."""
    verdicts = []
    for item in poison:
        marker = item.marker.encode()
        found = [
            (k, v)
            for k, v in dead.items()
            if marker in k or marker in v[:200_000] or marker in bodies.get(k, b"")[:200_000]
        ]
        entry = _entry(found[0][1]) if found else {}
        reason = entry.get("reason")
        verdicts.append({"what": item.what, "reason": reason, "expected": sorted(item.reasons)})
        if reason not in item.reasons:
            problems.append(
                f"{item.what} ({item.marker}): "
                + (f"dead-lettered as {reason!r}" if found else "not in the DLQ")
                + f", expected {' or '.join(sorted(item.reasons))}"
            )
        elif int(entry.get("attempts") or 0) > 1:
            problems.append(f"{item.what} ({item.marker}): ran {entry['attempts']} times first")
    unexpected = len(dead) - sum(1 for v in verdicts if v["reason"] is not None)
    if unexpected > 0:
        problems.append(f"{unexpected} unexpected DLQ entries: {_summary(dead)}")
    return verdicts


def _entry(raw: bytes) -> dict[str, Any]:
    try:
        entry = orjson.loads(raw)
    except orjson.JSONDecodeError:
        entry = None
    if isinstance(entry, dict):
        return entry
    return {"reason": f"<unreadable entry: {raw[:80]!r}>"}


def _printable(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")[:60]


def _summary(dead: dict[bytes, bytes]) -> str:
    return "; ".join(
        f"{_printable(k)}: {_entry(v).get('reason')}" for k, v in list(dead.items())[:30]
    )


def _dlq_list(redis_url: str) -> str | None:
    """``shoal dlq list poison`` must answer (listing never loads whole bodies); None if so."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "shoal", "dlq", "list", POISON_QUEUE],
            env=worker_env(redis_url, COLUMNS="200"),
            capture_output=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return "`shoal dlq list poison` did not finish in 30 s"
    if done.returncode != 0:
        return f"`shoal dlq list poison` failed: {done.stderr[-500:].decode(errors='replace')}"
    return None
