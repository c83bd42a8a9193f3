"""Fixtures shared by the whole suite: a real redis-server, clean keyspaces, in-process workers.

* ``redis_server`` (session): our own ``redis-server`` on a free loopback port, via
  :class:`shoal.protocol.server.LocalRedis`; stopped by PID at the end. Never port 6379.
* ``redis_url`` (function): the server's URL after a FLUSHALL, so every test starts empty.
* ``app``: an :class:`shoal.App` on that Redis with a key prefix of its own.
* ``worker``: runs a :class:`shoal.worker.Worker` in a thread; ``burst=True`` returns when drained,
  ``burst=False`` returns a handle to stop it later.
* :func:`wait_for`: poll a condition with a deadline; tests never sleep to wait.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest
import redis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from helpers import RunningWorker, start_local_redis
from shoal import App
from shoal.protocol.server import LocalRedis
from shoal.worker import Worker


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    server = start_local_redis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_client(redis_server: LocalRedis) -> Iterator[redis.Redis]:
    client = redis.Redis(port=redis_server.port)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_url(redis_server: LocalRedis, redis_client: redis.Redis) -> str:
    """The session Redis, emptied: each test starts from a clean keyspace."""
    redis_client.flushall()
    return redis_server.url


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_app(redis_url: str, key_prefix: str) -> Iterator[Callable[..., App]]:
    """Build Apps on the test Redis (same prefix unless given), closed at teardown."""
    apps: list[App] = []

    def make(**overrides: Any) -> App:
        overrides.setdefault("key_prefix", key_prefix)
        app = App(redis_url=redis_url, **overrides)
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            app.close()


@pytest.fixture
def app(make_app: Callable[..., App]) -> App:
    return make_app()


class WorkerFactory(Protocol):
    def __call__(
        self,
        app: App,
        queues: list[str] | None = None,
        *,
        concurrency: int = 4,
        burst: bool = True,
        timeout: float = 30.0,
    ) -> Any: ...


@pytest.fixture
def worker() -> Iterator[WorkerFactory]:
    """``worker(app, queues)`` drains the queues and returns the Worker (``burst=True``), or
    starts a long-running one and returns its :class:`RunningWorker` (``burst=False``)."""
    running: list[RunningWorker] = []

    def run(
        app: App,
        queues: list[str] | None = None,
        *,
        concurrency: int = 4,
        burst: bool = True,
        timeout: float = 30.0,
    ) -> Any:
        handle = RunningWorker(Worker(app, queues, concurrency=concurrency, burst=burst))
        running.append(handle)
        handle.start()
        return handle.join(timeout) if burst else handle

    try:
        yield run
    finally:
        for handle in running:
            if handle.thread.is_alive():
                handle.stop()


# Hypothesis: no per-example deadline (CI machines are shared and slow), same examples count.
hypothesis_settings.register_profile(
    "shoal", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("shoal")
