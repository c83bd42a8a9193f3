"""The Redis set-ups the bench visits, each started fresh on loopback and stopped after.

The servers come from ``tests/topologies.py`` (the suite's own fixtures, reused, not copied):
one visit starts one topology, so only the set-up being measured runs on the machine.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from shoal.protocol.server import LocalRedis
from topologies import (
    REDIS_SERVER,
    AclTopology,
    ClusterTopology,
    SentinelTopology,
    SingleTopology,
    TlsTopology,
    Topology,
    ValkeyTopology,
    valkey_server_binary,
)

KEY_PREFIX = "benchtopo"
"""``SHOAL_KEY_PREFIX`` on every set-up; the ACL user may touch only keys under it."""


@dataclass(frozen=True)
class Setup:
    """One row of the table: a topology, plus the ``SHOAL_*`` variables that go with it."""

    name: str
    label: str
    start: Callable[[], Topology]
    binary: str = REDIS_SERVER
    extra_env: dict[str, str] = field(default_factory=dict)


class LocalSingle(SingleTopology):
    """``SingleTopology`` over a LocalRedis it owns (the suite's conftest owns it there)."""

    def __init__(self) -> None:
        self.local = LocalRedis(binary=REDIS_SERVER).start()
        super().__init__(self.local)

    def stop(self) -> None:
        super().stop()
        self.local.stop()


SETUPS: tuple[Setup, ...] = (
    Setup("single", "single node", LocalSingle),
    Setup("cluster", "cluster, 3 masters x 1 replica", lambda: ClusterTopology().start()),
    Setup("sentinel", "sentinel, 1 replica, 3 sentinels", lambda: SentinelTopology().start()),
    Setup("tls", "TLS + client certificates", lambda: TlsTopology().start()),
    Setup("acl", "ACL user (shoal redis-acl rule)", lambda: AclTopology(KEY_PREFIX).start()),
    Setup("valkey", "Valkey", lambda: ValkeyTopology().start(), binary=valkey_server_binary()),
    Setup(
        "sentinel_wait",
        "sentinel + SHOAL_REDIS_WAIT_REPLICAS=1",
        lambda: SentinelTopology().start(),
        extra_env={"SHOAL_REDIS_WAIT_REPLICAS": "1"},
    ),
)
"""In table order; ``single`` first: every ratio is against it."""


def server_version(setup: Setup) -> str:
    """``redis-server --version`` (or valkey-server's) of the binary the set-up runs."""
    out = subprocess.run([setup.binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


@contextmanager
def running(setup: Setup) -> Iterator[Topology]:
    """The set-up's topology, started; stopped (every process SIGKILLed) on the way out."""
    topology = setup.start()
    try:
        yield topology
    finally:
        topology.stop()
