"""What a stock KEDA ``redis`` scaler reads (``LLEN`` of the waiting list) with no worker
running, before and after the promoter (``Broker.promote``, what the operator runs on every
poll of a Queue) moved what is due; and that promoting loses and duplicates nothing.

KEDA's redis scaler, with ``listName`` set, runs ``LLEN listName`` (see
``examples/keda-scaledobject.yaml``); these tests read exactly that key the same way."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from helpers import wait_for
from shoal import App
from shoal.protocol import AsyncBroker
from shoal.protocol.scripts import MOVE_LIMIT


def keda_reads(app: App, queue: str) -> int:
    """``LLEN`` of the documented waiting key: KEDA's redis scaler's whole metric."""
    return int(app.broker.redis.llen(app.broker.keys(queue).waiting))


def redis_passed(app: App, ms: float) -> None:
    """Wait (polling, with a deadline) until Redis's clock has passed ``ms``."""
    wait_for(lambda: app.broker.time_ms() > ms, timeout=10, message="Redis's clock moving on")


@pytest.mark.every_topology
def test_due_delayed_retry_and_lapsed_lease_become_visible_to_keda_without_a_worker(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()
    ran: Counter[str] = Counter()
    lock = threading.Lock()

    @app.task(queue="q", name="job")
    def job(what: str) -> None:
        with lock:
            ran[what] += 1

    keys = app.broker.keys("q")
    # Given, with no worker running: a delayed message coming due, a retry coming due, a lease
    # that lapsed (its worker died holding it); and, as controls, a message delayed for an
    # hour and a lease still held by a live worker
    later = job.with_options(delay=3600).enqueue("later")
    job.enqueue_many([("retried",), ("lapsed",), ("held",)])

    async def scenario(dead_worker: AsyncBroker) -> None:
        fetched = (await dead_worker.fetch("q", 3)).messages
        # (enqueued only now: a fetch also promotes what is due, and on a loaded machine more
        # than its delay could pass before this fetch)
        delayed = job.with_options(delay=0.3).enqueue("delayed")
        leases = {_arg(m.body or b""): m for m in fetched}
        retried, lapsed = leases["retried"], leases["lapsed"]
        assert await dead_worker.retry("q", retried.id, 0.3, retried.body or b"", retried.owner)
        app.broker.redis.zadd(keys.inflight, {lapsed.id: 0})  # its deadline passed: it lapsed
        redis_passed(app, float(app.broker.redis.zscore(keys.delayed, delayed.id) or 0))
        redis_passed(app, float(app.broker.redis.zscore(keys.delayed, retried.id) or 0))

        # Then KEDA reads 0: nothing would wake a fleet at zero
        assert keda_reads(app, "q") == 0

        # When the promoter runs (the operator's poll of the Queue)
        promoted = app.broker.promote("q")

        # Then KEDA reads the three that are due; the controls stay where they were
        assert (promoted.delayed, promoted.recovered, promoted.waiting) == (2, 1, 3)
        assert keda_reads(app, "q") == 3
        stats = app.measure("q")
        assert (stats.waiting, stats.delayed, stats.in_flight) == (3, 1, 1)
        assert stats.recovered == 1

        # And promoting again moves nothing twice
        again = app.broker.promote("q")
        assert (again.moved, again.waiting) == (0, 3)
        assert keda_reads(app, "q") == 3

        # The worker whose lease lapsed can no longer decide that message: no second outcome
        refused = await dead_worker.ack("q", [(lapsed.id, lapsed.owner, None, None)])
        assert refused == (0, [lapsed.id])
        # (the live worker's task finishes; the hour-long delay is cut short, so a worker
        # drains everything: its own fetch promotes through the same Lua)
        held = leases["held"]
        assert await dead_worker.ack("q", [(held.id, held.owner, None, None)]) == (1, [])
        app.broker.redis.zadd(keys.delayed, {later.id: 0}, xx=True)

    async def with_dead_worker() -> None:
        dead_worker = AsyncBroker(app.settings)
        try:
            await scenario(dead_worker)
        finally:  # a failed assertion must not leave its connections for a later test's GC
            await dead_worker.close()

    asyncio.run(with_dead_worker())

    # When a worker drains the queue, each due task ran exactly once; nothing was lost
    worker(app, ["q"])
    assert ran == Counter({"delayed": 1, "retried": 1, "lapsed": 1, "later": 1})
    stats = app.measure("q")
    assert (stats.waiting, stats.delayed, stats.in_flight, stats.dead) == (0, 0, 0, 0)
    assert stats.completed == 5


def test_each_call_is_bounded_and_promote_repeats_while_calls_are_full(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    task = app.remote("job", queue="q")
    n = 2 * MOVE_LIMIT + 7
    task.with_options(delay=0.2).enqueue_many([(i,) for i in range(n)])
    keys = app.broker.keys("q")
    last_due = app.broker.redis.zrange(keys.delayed, -1, -1, withscores=True)[0][1]
    redis_passed(app, float(last_due))  # type: ignore[arg-type]

    # One call moves at most MOVE_LIMIT (a script's run time stays bounded)
    first = app.broker.promote("q", max_calls=1)
    assert (first.delayed, first.waiting) == (MOVE_LIMIT, MOVE_LIMIT)

    # Repeated calls take the rest, each message once
    rest = app.broker.promote("q")
    assert (rest.delayed, rest.waiting) == (n - MOVE_LIMIT, n)
    tokens = app.broker.redis.lrange(keys.waiting, 0, -1)
    ids = {bytes(t).split(b":", 1)[1] for t in tokens}  # type: ignore[arg-type]
    assert len(ids) == n == len(tokens)
    assert app.measure("q").delayed == 0


def test_a_lease_kept_alive_by_its_worker_is_never_promoted(make_app: Callable[..., App]) -> None:
    app = make_app()
    (handle,) = app.remote("job", queue="q").enqueue_many([()])

    async def scenario() -> None:
        live = AsyncBroker(app.settings)
        (leased,) = (await live.fetch("q", 1)).messages
        for _ in range(3):  # the promoter polls while the worker renews: nothing moves
            assert app.broker.promote("q").moved == 0
            assert (await live.renew("q", [(leased.id, leased.owner)])).lost == []
        assert keda_reads(app, "q") == 0
        assert await live.ack("q", [(handle.id, leased.owner, None, None)]) == (1, [])
        await live.close()

    asyncio.run(scenario())
    assert app.measure("q").completed == 1


def _arg(body: bytes) -> str:
    """The first argument of a stored envelope (the tests' tasks take one string)."""
    return str(orjson.loads(body)["args"][0])
