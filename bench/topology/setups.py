"""The Redis set-ups the bench visits, each started fresh on loopback and stopped after.

The servers come from ``tests/topologies.py`` (the suite's own fixtures, reused, not copied):
one visit starts one topology, so only the set-up being measured runs on the machine.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from topologies import (
    REDIS_SERVER,
    AclTopology,
    ClusterTopology,
    SentinelTopology,
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


class SingleNode(ValkeyTopology):
    """The single node, started exactly as every other topology's servers are (a
    ``ServerProcess``: its own session, the same flags), with Debian's redis-server.

    Not ``SingleTopology`` over a ``LocalRedis``: that server stays in the bench's session,
    and with the kernel's scheduler autogroups (``/proc/sys/kernel/sched_autogroup_enabled``)
    it then shares the producer's CPU group, unlike every other topology's servers. That alone
    made its enqueue-to-start latency some 0.2 ms lower than ACL's or Valkey's, whose servers
    differ from it in nothing else that matters."""

    def __init__(self) -> None:
        super().__init__()
        self.name = "single"
        self.binary = REDIS_SERVER
        self.server.argv[0] = REDIS_SERVER  # the argv is valkey's otherwise, flags and all


SETUPS: tuple[Setup, ...] = (
    Setup("single", "single node", lambda: SingleNode().start()),
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
