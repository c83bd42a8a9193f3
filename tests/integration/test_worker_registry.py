"""The worker registry's wire format: ``{p}:workers`` scores are milliseconds, like every other
time Shoal stores (the key table in shoal/protocol/keys.py says so)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from shoal import App
from shoal.protocol import AsyncBroker
from shoal.protocol.keys import workers_key
from shoal.protocol.registry import WorkerRegistration


def test_a_registration_is_scored_with_its_heartbeat_in_milliseconds(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    broker = AsyncBroker(app.settings)

    async def register() -> None:
        try:
            await broker.register_worker(WorkerRegistration(id="w-1"), ttl_s=30)
        finally:
            await broker.close()

    before_ms = int(time.time() * 1000)
    asyncio.run(register())
    after_ms = int(time.time() * 1000)

    score = app.broker.redis.zscore(workers_key(app.settings.key_prefix), "w-1")
    assert score is not None
    assert score == int(score)  # whole milliseconds
    assert before_ms <= score <= after_ms  # in seconds it would be a thousand times smaller
    assert [w.id for w in app.broker.workers()] == ["w-1"]
