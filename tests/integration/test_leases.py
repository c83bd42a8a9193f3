"""Lease ownership: a worker whose lease lapsed (a long pause) and whose message was delivered
to another worker can no longer retry, hand back, renew or dead-letter it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from shoal import App
from shoal.broker import AsyncBroker


def test_a_lapsed_lease_belongs_to_the_next_delivery(make_app: Callable[..., App]) -> None:
    app = make_app()
    keys = app.broker.keys("q")
    (handle,) = app.remote("job", queue="q").enqueue_many([()])

    async def scenario() -> None:
        a, b = AsyncBroker(app.settings), AsyncBroker(app.settings)
        # Given worker A holds delivery 1, pauses past its lease, and B gets delivery 2
        (first,) = (await a.fetch("q", 1)).messages
        assert first[0] == handle.id and first[2] == 1
        app.broker.redis.zadd(keys.inflight, {handle.id: 0})  # A's lease lapsed
        (second,) = (await b.fetch("q", 1)).messages
        assert second[2] == 2
        b_deadline = app.broker.redis.zscore(keys.inflight, handle.id)

        # When A wakes up and acts on its stale delivery, nothing changes
        assert await a.retry("q", handle.id, 0, b"{}", 1) is False
        assert await a.handback("q", [(handle.id, 1)]) == 0
        await a.renew("q", [(handle.id, 1)])
        assert await a.dead("q", handle.id, b"{}", None, None, (10, 60), 1) is False
        stats = app.measure("q")
        assert (stats.delayed, stats.waiting, stats.dead, stats.in_flight) == (0, 0, 0, 1)
        assert app.broker.redis.zscore(keys.inflight, handle.id) == b_deadline

        # Then B's own lease works as usual
        app.broker.redis.zadd(keys.inflight, {handle.id: 5}, xx=True)
        await b.renew("q", [(handle.id, 2)])
        assert (app.broker.redis.zscore(keys.inflight, handle.id) or 0) > 5
        assert await b.handback("q", [(handle.id, 2)]) == 1
        assert app.measure("q").waiting == 1
        await a.close()
        await b.close()

    asyncio.run(scenario())
