"""Connections: how Shoal opens Redis, which failures are Redis's, and errors that name the URL.

:func:`open_redis` and :func:`open_async_redis` turn a URL of any form Shoal accepts (one server,
TLS, a Sentinel-managed master, a Redis Cluster, a socket) and the ``SHOAL_REDIS_*`` settings into
a redis-py client; nothing else builds one. The blocking client turns a connection failure into
one :class:`~shoal.errors.BrokerError` naming the URL as given (masked), and tells whether a
failed command had reached Redis whole (:func:`sent_before_failing`): an enqueue is resent only
when it certainly did not run.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Sequence
from typing import Any, cast

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.asyncio.connection as aioconnection
import redis.asyncio.sentinel as aiosentinel
from redis import cluster, sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from shoal.errors import BrokerError, EnqueueOutcomeUnknown, RedisFull, ReplicationUnconfirmed
from shoal.protocol.scripts import Outgoing
from shoal.redis_url import RedisUrl, mask_url, parse_redis_url
from shoal.settings import Settings


def connection_error(url: str, exc: BaseException, outcome: str = "") -> BrokerError:
    """A one-line error naming the (masked) URL, what failed, ``outcome`` (what it means for
    the caller's data, a sentence) and what to check."""
    return BrokerError(
        f"cannot reach Redis at {mask_url(url)}: {_what_failed(exc)}. {outcome}{_advice(exc)}"
    )


def _what_failed(exc: BaseException) -> str:
    """redis-py's text of a failure, without the client objects some of them dump: "No master
    found for 'mymaster' : <redis.client.Redis(<ConnectionPool(...)>)> - ..." keeps its head."""
    text = str(exc)
    if isinstance(exc, sentinel.MasterNotFoundError | aiosentinel.MasterNotFoundError):
        text = text.split(" : ", 1)[0] + " (no sentinel answered, or none monitors it)"
    return text.rstrip(".")


def enqueue_what(queue: str, items: Sequence[Outgoing], task: str | None) -> str:
    n = len(items)
    of_task = "" if task is None else f" of task {task!r}"
    return f"enqueue of {n} message{'' if n == 1 else 's'}{of_task} to queue {queue!r}"


def enqueue_failed(
    url: str, exc: BaseException, what: str, sent: bool, items: Sequence[Outgoing]
) -> BrokerError:
    """The error of an enqueue whose connection failed: when the script was ``sent`` whole, its
    outcome is unknown (it may have run, and the answer was lost); else nothing was stored."""
    if not sent:
        return BrokerError(f"{what} failed: {connection_error(url, exc, 'Nothing was stored. ')}")
    one = len(items) == 1
    if all(dedupe for *_, dedupe in items):
        advice = (
            "Enqueueing again with the same dedupe_key is safe: if the first was stored, that "
            "message is returned (while it waits or runs) instead of a second one stored."
        )
    else:
        advice = (
            f"Enqueueing {'it' if one else 'them'} again may run {'it' if one else 'them'} "
            'twice; give messages a dedupe_key (README, "Dedupe") to make such a retry safe.'
        )
    return EnqueueOutcomeUnknown(
        f"{what}: the outcome is unknown. The connection to Redis at {mask_url(url)} failed "
        f"after the enqueue was sent ({_what_failed(exc)}), so the "
        f"{'message' if one else 'messages'} may or may not have been stored (and may run). "
        + advice
    )


def redis_full(url: str, what: str) -> RedisFull:
    return RedisFull(
        f"{what} refused: Redis at {mask_url(url)} is at its maxmemory limit and refuses writes "
        "(OOM). Nothing was stored. Give Redis room: raise maxmemory (keep maxmemory-policy "
        "noeviction, as an evicting policy drops messages), or free memory: let workers drain "
        "the queues (`shoal info` shows them), purge dead letters (`shoal dlq purge QUEUE`)."
    )


def replication_unconfirmed(
    url: str, what: str, confirmed: int, wanted: int, reply: object = None
) -> ReplicationUnconfirmed:
    why = f" (WAIT failed: {reply})" if isinstance(reply, Exception) else ""
    return ReplicationUnconfirmed(
        f"{what}: stored on the primary at {mask_url(url)}, but {confirmed} of "
        f"{wanted} replica{'' if wanted == 1 else 's'} confirmed it within "
        f"SHOAL_REDIS_WAIT_TIMEOUT{why}, so a failover now could lose it. It will run unless the "
        "primary fails first. Check the replicas (`INFO replication`), lower "
        "SHOAL_REDIS_WAIT_REPLICAS or raise SHOAL_REDIS_WAIT_TIMEOUT; enqueueing again with the "
        "same dedupe_key is safe."
    )


def run_then_wait(
    client: redis.Redis, command: Sequence[Any], replicas: int, timeout_ms: int
) -> tuple[Any, Any]:
    """Send ``command``, then ``WAIT replicas timeout_ms``, on one connection (WAIT counts that
    connection's writes): two writes, one round trip. Each is written on its own, so a
    connection lost after the command was written is known as sent. Error replies are
    returned, not raised."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_command(*command)  # type: ignore[no-untyped-call]
        connection.send_command("WAIT", replicas, timeout_ms)  # type: ignore[no-untyped-call]
        replies: list[Any] = []
        for _ in range(2):
            try:
                replies.append(connection.read_response())
            except redis.exceptions.ResponseError as exc:  # the reply was read: still in step
                replies.append(exc)
        return replies[0], replies[1]
    except BaseException:
        connection.disconnect()  # type: ignore[no-untyped-call]
        raise
    finally:
        pool.release(connection)


def is_out_of_memory(exc: redis.exceptions.ResponseError) -> bool:
    # Redis 7 keeps a script's OOM error code; 6.2 wraps it in "ERR Error running script"
    return isinstance(exc, redis.exceptions.OutOfMemoryError) or "-OOM " in str(exc)


def redis_call_timeout_s(lease_s: float) -> float:
    """How long a worker waits for one Redis reply: a third of the lease (1 to 5 s), so a
    stalled Redis fails a renewal in time for the next one, well before the lease ends."""
    return max(1.0, min(5.0, lease_s / 3))


CONNECTION_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    socket.gaierror,
    redis.exceptions.RedisClusterException,  # no seed node of a Cluster answered
    redis.exceptions.ClusterDownError,  # a Cluster mid-failover: retried like a dropped link
)
REDIS_ERRORS = (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError)
"""Every Redis failure, connection or reply (READONLY after a failover, OOM, BUSY): retried with
backoff by the loops, never allowed to end one."""
MAX_BACKOFF_S = 5.0

REFUSED = redis.exceptions.ResponseError
"""Redis answered with an error: a script refused its data, or a command was not allowed."""


ENQUEUE_RESENDS = (0.05, 0.2)
"""Pauses before resending an enqueue whose connection failed *before it was sent whole* (it
certainly did not run: a connection dropped while idle, a failover). One that reached Redis is
never resent: a worker may already have run and acked it, and a resend would run it again; the
caller gets EnqueueOutcomeUnknown instead. redis-py itself resends nothing."""


# --- whether a failed command had been sent ---------------------------------------------------

_sent = threading.local()


def begin_send() -> None:
    """Start one logical operation on this thread (a script call may be EVALSHA, SCRIPT LOAD,
    EVALSHA): :func:`sent_before_failing` then tells whether any of its commands reached Redis."""
    _sent.whole = False


def sent_before_failing() -> bool:
    """Whether this thread's last operation wrote a command whole (on any of its sends) before
    its connection failed: then Redis may have run it. False: it certainly did not run."""
    return bool(getattr(_sent, "whole", True))


@contextlib.contextmanager
def sends_not_counted() -> Iterator[None]:
    """Commands sent inside (the client's own housekeeping, such as reloading a Cluster's slot
    map) do not count as the operation's: :func:`sent_before_failing` answers as before."""
    whole = sent_before_failing()
    try:
        yield
    finally:
        _sent.whole = whole


class _RecordsSends:
    """Mixed into redis-py's connection classes: marks the thread's operation as sent once a
    command was written whole. Health-check PINGs (written with ``check_health=False``) and
    the handshake (HELLO, AUTH, SELECT, CLIENT SETINFO) do not count."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        super().send_packed_command(command, check_health)  # type: ignore[misc]
        if check_health:
            _sent.whole = True

    def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        with sends_not_counted():  # the handshake (HELLO, AUTH, SELECT) is not the command
            super().on_connect_check_health(*args, **kwargs)  # type: ignore[misc]


class _Connection(_RecordsSends, redis.Connection):
    pass


class _SSLConnection(_RecordsSends, redis.SSLConnection):
    pass


class _UnixConnection(_RecordsSends, redis.UnixDomainSocketConnection):
    pass


class _SentinelConnection(_RecordsSends, sentinel.SentinelManagedConnection):
    pass


class _SentinelSSLConnection(_RecordsSends, sentinel.SentinelManagedSSLConnection):
    pass


# --- the clients ------------------------------------------------------------------------------


class _Explains:
    """Mixed into the blocking clients: a connection failure becomes one BrokerError naming the
    URL as given, so producers, the CLI and ``handle.result()`` never show a redis-py traceback
    for a wrong SHOAL_REDIS_URL."""

    shown_url: str = ""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        try:
            return super().execute_command(*args, **options)  # type: ignore[misc]
        except CONNECTION_ERRORS as exc:
            raise connection_error(self.shown_url, exc) from exc

    def target(self) -> str:
        """The URL as given (password masked), for error messages."""
        return mask_url(self.shown_url)


class ExplainingRedis(_Explains, redis.Redis):
    """One server, or the master a Sentinel names (closing it closes the sentinels' clients)."""

    sentinels: sentinel.Sentinel | None = None

    def close(self) -> None:
        super().close()
        for client in self.sentinels.sentinels if self.sentinels else ():
            client.close()


class _AsyncSentinelMaster(aioredis.Redis):
    """The master a Sentinel names; closing it closes the sentinels' clients too."""

    sentinels: aiosentinel.Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for client in self.sentinels.sentinels if self.sentinels else ():
            await client.aclose()


class ExplainingCluster(_Explains, cluster.RedisCluster):
    """A Redis Cluster: MOVED and ASK are followed, the slot map refreshed after a failover.

    redis-py reloads the slot map (CLUSTER SLOTS) when a command's connection fails; those
    sends are housekeeping, so they must not make :func:`sent_before_failing` say that the
    failed command reached Redis."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        reload = self.nodes_manager.initialize

        def initialize_uncounted(*args: Any, **kwargs: Any) -> Any:
            with sends_not_counted():
                return reload(*args, **kwargs)

        self.nodes_manager.initialize = initialize_uncounted  # type: ignore[method-assign]


BlockingRedis = ExplainingRedis | ExplainingCluster


def client_options(url: RedisUrl, settings: Settings) -> dict[str, Any]:
    """Database, credentials, TLS and redis-py's URL query options, common to every form.

    Precedence: the URL's credentials, then its query (``?password=``, ``?db=``, as redis-py
    reads them), then ``SHOAL_REDIS_USERNAME`` / ``SHOAL_REDIS_PASSWORD``; TLS options in the
    query (``?ssl_ca_certs=``) win over ``SHOAL_REDIS_TLS_*``."""
    options: dict[str, Any] = {"db": url.db}
    if url.query:  # redis-py's own parser types them (socket_timeout=3 -> 3.0)
        parsed = redis.connection.parse_url(f"redis://localhost/?{url.query}")  # type: ignore[no-untyped-call]
        for key in ("host", "port", "path", "connection_class"):
            parsed.pop(key, None)
        options.update(parsed)
    username = url.username or options.get("username") or settings.redis_username
    password = url.password or options.get("password") or settings.redis_password
    options.pop("username", None)
    options.pop("password", None)
    if username:
        options["username"] = username
    if password:
        options["password"] = password
    if url.tls:
        for key, value in _tls_options(settings).items():
            if value is not None:
                options.setdefault(key, value)
    return options


def _tls_options(settings: Settings) -> dict[str, Any]:
    verify = settings.redis_tls_verify
    return {
        "ssl_ca_certs": settings.redis_tls_ca_file,
        "ssl_certfile": settings.redis_tls_cert_file,
        "ssl_keyfile": settings.redis_tls_key_file,
        "ssl_cert_reqs": "required" if verify else "none",
        "ssl_check_hostname": verify,
    }


def _sentinel_options(
    url: RedisUrl, settings: Settings, timeouts: dict[str, Any]
) -> dict[str, Any]:
    """How to talk to the sentinels themselves: their own credentials, the same TLS."""
    options: dict[str, Any] = dict(timeouts)
    if settings.redis_sentinel_username:
        options["username"] = settings.redis_sentinel_username
    if settings.redis_sentinel_password:
        options["password"] = settings.redis_sentinel_password
    if url.tls:
        options.update(ssl=True, **_tls_options(settings))
    return options


def open_redis(settings: Settings, **timeouts: Any) -> BlockingRedis:
    """The blocking client for ``settings.redis_url``. redis-py resends nothing (``retry`` 0):
    the callers decide what is safe to send again (see :data:`ENQUEUE_RESENDS`)."""
    url = parse_redis_url(settings.redis_url)
    options = {**timeouts, **client_options(url, settings)}
    client: BlockingRedis
    if url.kind == "cluster":
        options.pop("db")  # a Cluster has only database 0
        (host, port), *more = url.hosts
        # ``url=`` makes redis-py build each node's pool from these options, our connection
        # class (which records sends) included; the seed's scheme carries no TLS on its own
        try:  # redis-py reads the slot map here: an unreachable Cluster fails now
            client = ExplainingCluster(
                url=f"redis://{_netloc(host, port)}",
                startup_nodes=[cluster.ClusterNode(h, p) for h, p in more],  # type: ignore[no-untyped-call]
                connection_class=_SSLConnection if url.tls else _Connection,
                retry=Retry(NoBackoff(), 0),
                **options,
            )
        except CONNECTION_ERRORS as exc:
            raise connection_error(settings.redis_url, exc) from exc
    elif url.kind == "sentinel":
        assert url.master_name is not None
        sentinels = sentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(url.hosts),
            sentinel_kwargs={
                **_sentinel_options(url, settings, timeouts),
                "retry": Retry(NoBackoff(), 0),  # a sentinel down: ask the next one at once
            },
        )
        master: ExplainingRedis = sentinels.master_for(  # type: ignore[no-untyped-call]
            url.master_name,
            redis_class=ExplainingRedis,
            connection_class=_SentinelSSLConnection if url.tls else _SentinelConnection,
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        master.sentinels = sentinels
        client = master
    else:
        if url.kind == "unix":
            where: dict[str, Any] = {"path": url.path, "connection_class": _UnixConnection}
        else:
            ((host, port),) = url.hosts
            kind = _SSLConnection if url.tls else _Connection
            where = {"host": host, "port": port, "connection_class": kind}
        pool = redis.ConnectionPool(retry=Retry(NoBackoff(), 0), **where, **options)
        client = cast(ExplainingRedis, ExplainingRedis.from_pool(pool))
    client.shown_url = settings.redis_url
    return client


AsyncRedis = aioredis.Redis | aiocluster.RedisCluster


def open_async_redis(settings: Settings, **timeouts: Any) -> AsyncRedis:
    """The worker's asyncio client for ``settings.redis_url``; redis-py resends nothing: the
    worker's loops own retrying."""
    url = parse_redis_url(settings.redis_url)
    options = {**timeouts, **client_options(url, settings)}
    if url.kind == "cluster":
        options.pop("db")  # a Cluster has only database 0
        return aiocluster.RedisCluster(
            startup_nodes=[aiocluster.ClusterNode(h, p) for h, p in url.hosts],
            retry=AsyncRetry(NoBackoff(), 0),
            ssl=url.tls,
            **options,
        )
    if url.kind == "sentinel":
        assert url.master_name is not None
        sentinels = aiosentinel.Sentinel(  # type: ignore[no-untyped-call]
            list(url.hosts),
            sentinel_kwargs={
                **_sentinel_options(url, settings, timeouts),
                "retry": AsyncRetry(NoBackoff(), 0),
            },
        )
        if url.tls:
            options["connection_class"] = aiosentinel.SentinelManagedSSLConnection
        master: _AsyncSentinelMaster = sentinels.master_for(
            url.master_name,
            redis_class=_AsyncSentinelMaster,
            retry=AsyncRetry(NoBackoff(), 0),
            **options,
        )
        master.sentinels = sentinels
        return master
    if url.kind == "unix":
        options.pop("socket_keepalive", None)  # a TCP option: a unix socket's connection refuses it
        where: dict[str, Any] = {
            "path": url.path,
            "connection_class": aioconnection.UnixDomainSocketConnection,
        }
    else:
        ((host, port),) = url.hosts
        kind = aioconnection.SSLConnection if url.tls else aioconnection.Connection
        where = {"host": host, "port": port, "connection_class": kind}
    pool = aioredis.ConnectionPool(retry=AsyncRetry(NoBackoff(), 0), **where, **options)
    return aioredis.Redis.from_pool(pool)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _advice(exc: BaseException) -> str:
    """What to check, by what failed."""
    text = str(exc).lower()
    if "certificate" in text or "ssl" in text or "tls" in text:
        return (
            "Check the TLS settings: SHOAL_REDIS_TLS_CA_FILE must hold the CA that signed the "
            "server's certificate, whose name must match the URL's host (or set "
            "SHOAL_REDIS_TLS_VERIFY=false to try a self-signed server), and a server with "
            "tls-auth-clients wants SHOAL_REDIS_TLS_CERT_FILE and SHOAL_REDIS_TLS_KEY_FILE."
        )
    if isinstance(exc, redis.exceptions.AuthenticationError) or "auth" in text or "noperm" in text:
        return (
            "Check the credentials: the user and password in the URL, or SHOAL_REDIS_USERNAME "
            'and SHOAL_REDIS_PASSWORD (README, "Production Redis" has the ACL rule).'
        )
    if ("master" in text and "sentinel" in text) or isinstance(exc, sentinel.MasterNotFoundError):
        return (
            "Check that the sentinels answer and monitor that master name (`redis-cli -p 26379 "
            "sentinel masters`), and SHOAL_REDIS_SENTINEL_PASSWORD if they have a password."
        )
    return (
        "Check SHOAL_REDIS_URL (redis://host:port/db, redis+sentinel://, redis+cluster://, "
        "rediss:// for TLS) and that the server is running."
    )
