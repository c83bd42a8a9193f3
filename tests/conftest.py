"""Fixtures shared by the whole suite: a real redis-server, clean keyspaces, in-process workers.

* ``redis_server`` (session): our own ``redis-server`` on a free loopback port, via
  :class:`shoal.protocol.server.LocalRedis`; stopped by PID at the end. Never port 6379.
* ``topology`` (function): the Redis the test runs on, a :class:`topologies.Topology`. It is
  ``single`` (the session server) unless the test is marked ``@pytest.mark.every_topology``:
  then it runs once per topology (single, cluster, sentinel, tls, acl, valkey; the marker's
  arguments, if any, name a subset). Each kind starts once per session, only if a collected
  test needs it, all side by side in background threads (``topology_pool``). Tests may also
  ask for one kind directly: ``cluster_topology``, ``sentinel_topology``, ``tls_topology``,
  ``acl_topology``, ``valkey_topology``, ``single_topology``, and ``sentinel_auth_topology``
  (sentinels behind a password).
* ``redis_url`` (function): the topology's URL after a flush, so every test starts empty.
* ``redis_client``: a plain client of the session server (``single`` only; elsewhere use
  ``topology.admin()``).
* ``app``: an :class:`shoal.App` on that Redis with a key prefix of its own and the
  topology's settings (passwords, TLS files).
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
from topologies import (
    FACTORIES,
    TOPOLOGY_NAMES,
    AclTopology,
    ClusterTopology,
    SentinelTopology,
    SingleTopology,
    TlsTopology,
    Topology,
    TopologyPool,
    ValkeyTopology,
)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[LocalRedis]:
    server = start_local_redis()
    try:
        yield server
    finally:
        server.stop()


EVERY_TOPOLOGY = "every_topology"
NEEDED_TOPOLOGIES = pytest.StashKey[set[str]]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{EVERY_TOPOLOGY}(*names): run the test on every Redis topology (or on those named), "
        "through the topology fixture (redis_url, make_app and app use it)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``every_topology`` that uses ``topology`` runs once per topology."""
    marker = metafunc.definition.get_closest_marker(EVERY_TOPOLOGY)
    if marker is None or "topology" not in metafunc.fixturenames:
        return
    names = list(marker.args) or list(TOPOLOGY_NAMES)
    unknown = sorted(set(names) - set(TOPOLOGY_NAMES))
    if unknown:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: unknown topology {unknown} in @pytest.mark."
            f"{EVERY_TOPOLOGY}; use some of {', '.join(TOPOLOGY_NAMES)}"
        )
    metafunc.parametrize("topology", names, indirect=True, ids=names)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Note which topologies the selected tests need, so they can start side by side."""
    needed: set[str] = set()
    for item in session.items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and "topology" in callspec.params:
            needed.add(callspec.params["topology"])
        fixtures = getattr(item, "fixturenames", ())
        needed.update(name for name in FACTORIES if f"{name}_topology" in fixtures)
    session.config.stash[NEEDED_TOPOLOGIES] = needed


@pytest.fixture(scope="session")
def topology_pool(request: pytest.FixtureRequest) -> Iterator[TopologyPool]:
    """Starts, when first asked, every topology the session needs, in background threads;
    stops them all (SIGKILL by process group) at the end."""
    pool = TopologyPool()
    needed: set[str] = request.config.stash.get(NEEDED_TOPOLOGIES, set())
    pool.prefetch(needed)
    try:
        yield pool
    finally:
        pool.stop()


@pytest.fixture(scope="session")
def single_topology(redis_server: LocalRedis) -> Iterator[SingleTopology]:
    topology = SingleTopology(redis_server)
    try:
        yield topology
    finally:
        topology.stop()


@pytest.fixture(scope="session")
def cluster_topology(topology_pool: TopologyPool) -> ClusterTopology:
    return topology_pool.get_as("cluster", ClusterTopology)


@pytest.fixture(scope="session")
def sentinel_topology(topology_pool: TopologyPool) -> SentinelTopology:
    return topology_pool.get_as("sentinel", SentinelTopology)


@pytest.fixture(scope="session")
def sentinel_auth_topology(topology_pool: TopologyPool) -> SentinelTopology:
    """Like ``sentinel_topology``, but the sentinels require ``sentinel_password``."""
    return topology_pool.get_as("sentinel_auth", SentinelTopology)


@pytest.fixture(scope="session")
def tls_topology(topology_pool: TopologyPool) -> TlsTopology:
    return topology_pool.get_as("tls", TlsTopology)


@pytest.fixture(scope="session")
def acl_topology(topology_pool: TopologyPool) -> AclTopology:
    return topology_pool.get_as("acl", AclTopology)


@pytest.fixture(scope="session")
def valkey_topology(topology_pool: TopologyPool) -> ValkeyTopology:
    return topology_pool.get_as("valkey", ValkeyTopology)


@pytest.fixture
def topology(request: pytest.FixtureRequest) -> Topology:
    """The Redis this test runs on: ``single``, or each in turn under ``every_topology``."""
    name = getattr(request, "param", "single")
    topology: Topology = request.getfixturevalue(f"{name}_topology")
    return topology


@pytest.fixture
def redis_client(redis_server: LocalRedis, request: pytest.FixtureRequest) -> Iterator[redis.Redis]:
    """A plain client of the session server: on another topology it would look at the wrong
    Redis, so there it fails and points at ``topology.admin()``."""
    callspec = getattr(request.node, "callspec", None)
    name = callspec.params.get("topology", "single") if callspec is not None else "single"
    if name != "single":
        pytest.fail(
            f"redis_client is the single server's client, but this test runs on {name!r}: "
            "use topology.admin() instead",
            pytrace=False,
        )
    client = redis.Redis(port=redis_server.port)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_url(topology: Topology) -> str:
    """The topology's URL, emptied first: each test starts from a clean keyspace."""
    topology.flush()
    return topology.url


@pytest.fixture
def key_prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_app(redis_url: str, key_prefix: str, topology: Topology) -> Iterator[Callable[..., App]]:
    """Build Apps on the test Redis (same prefix and the topology's settings unless given),
    closed at teardown."""
    apps: list[App] = []

    def make(**overrides: Any) -> App:
        overrides.setdefault("key_prefix", key_prefix)
        for name, value in topology.settings.items():
            overrides.setdefault(name, value)
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
