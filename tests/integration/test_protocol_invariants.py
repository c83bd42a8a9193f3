"""Random walks over the Lua scripts, checking the delivery invariants after every step.

Enqueues (with priorities and delays), fetches with short leases (so leases lapse and are
recovered), acks, retries, handbacks, rate-limit put-backs, cancels, purges and renewals, in a
random order on one queue. After each step: no message is leased twice while a lease lives;
every stored message is in exactly one place (a live token in waiting, in flight, or delayed);
every priority entry and stale token is still in waiting; and what ``measure`` reports as
waiting is never below what is really ready (a KEDA scaler must never see fewer)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import pytest

from shoal import App
from shoal.protocol import scripts as s
from shoal.protocol.keys import QueueKeys

OFFSETS = [None, -50_000, -20_000, 0, 10_000, 40_000]
"""Priority offsets (ms): the default, then priorities 0, 3, 5 (explicitly), 6 and 9."""
STEPS = ("enqueue", "fetch", "ack", "retry", "handback", "throttle", "cancel", "clear", "pause")
WEIGHTS = (20, 25, 10, 6, 5, 6, 5, 0.3, 3)


def _state(app: App, k: QueueKeys) -> dict[str, Any]:
    r = app.broker.redis
    return {
        "messages": {x.decode() for x in r.hkeys(k.messages)},
        "inflight": {
            x.decode(): score for x, score in r.zrange(k.inflight, 0, -1, withscores=True)
        },
        "delayed": {x.decode() for x in r.zrange(k.delayed, 0, -1)},
        "waiting": [x.decode() for x in r.lrange(k.waiting, 0, -1)],
        "ready": {x.decode() for x in r.zrange(k.ready, 0, -1)},
        "stale": {x.decode() for x in r.smembers(k.stale)},
    }


def _check(app: App, k: QueueKeys, where: str) -> None:
    st = _state(app, k)
    live: dict[str, int] = {}
    for token in st["waiting"]:
        if token not in st["stale"]:
            mid = token.split(":", 1)[1]
            live[mid] = live.get(mid, 0) + 1
    for mid in st["messages"]:
        places = (mid in st["inflight"]) + (mid in st["delayed"])
        assert places <= 1, f"{where}: {mid} both in flight and delayed"
        if places == 0:
            assert live.get(mid, 0) == 1, (
                f"{where}: {mid} stored, waiting, with {live.get(mid, 0)} live tokens"
            )
        else:
            assert live.get(mid, 0) == 0, f"{where}: {mid} in flight or delayed with a live token"
    for token in st["ready"] | st["stale"]:
        assert token in st["waiting"], f"{where}: priority or stale token {token} not in waiting"
    ready = sum(1 for m in st["messages"] if m not in st["inflight"] and m not in st["delayed"])
    assert app.measure(k.queue).waiting >= ready, f"{where}: measure counts fewer than are ready"


@pytest.mark.parametrize("seed", range(6))
def test_random_walks_keep_every_message_in_exactly_one_place(
    make_app: Callable[..., App], seed: int
) -> None:
    rng = random.Random(seed)
    app = make_app()
    k = app.broker.keys(f"walk{seed}")
    owned: dict[str, int] = {}
    known: list[str] = []
    for step in range(500):
        op = rng.choices(STEPS, WEIGHTS)[0]
        if op == "enqueue":
            items = []
            for _ in range(rng.randint(1, 4)):
                known.append(mid := f"m{len(known)}")
                items.append((mid, rng.choice([0, 0, 0, 5, 30]), b"{}", None))
            app.broker._run(s.enqueue_call(k, items, None, rng.choice(OFFSETS)))
        elif op == "fetch":
            before = _state(app, k)["inflight"]
            call = s.fetch_call(k, rng.choice([5, 20, 200, 5000]), rng.randint(1, 6))
            fetched = s.parse_fetch(app.broker._run(call))
            for leased in fetched.messages:
                deadline = before.get(leased.id)
                assert deadline is None or deadline <= fetched.now_ms, (
                    f"seed {seed} step {step}: {leased.id} leased twice"
                )
                owned[leased.id] = leased.owner
        elif op in ("ack", "retry", "handback", "throttle") and owned:
            mid = rng.choice(sorted(owned))
            owner = owned.pop(mid)
            if op == "ack":
                app.broker._run(s.ack_call(k, [(mid, owner, None, None)], 1000))
            elif op == "retry":
                app.broker._run(s.retry_call(k, mid, rng.choice([0, 3, 20]), b"{}", owner))
            elif op == "handback":
                app.broker._run(s.handback_call(k, [(mid, owner)]))
            elif (
                int(app.broker._run(s.throttle_call(k, "t", rng.choice([10.0, 60.0]), mid, owner)))
                == 0
            ):
                owned[mid] = owner  # may start now: still this walk's lease
        elif op == "cancel" and known:
            app.broker._run(s.cancel_call(k, rng.choice(known[-30:]), b'{"ok":false}', 1000))
        elif op == "clear":
            app.broker.clear(k.queue, batch=rng.randint(1, 5))
        elif op == "pause":
            time.sleep(rng.choice([0.002, 0.01, 0.03]))  # lets short leases lapse
        _check(app, k, f"seed {seed} step {step} after {op}")
