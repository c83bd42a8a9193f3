"""One settings object for the whole runtime: read from ``SHOAL_*`` once, overridable by arguments.

Every knob lives here with its unit and why it has its default. No other module reads the
environment; the operator writes these same variables into worker pods.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from typing import Any

from shoal.errors import ConfigurationError
from shoal.redis_url import parse_redis_url

Seconds = float | timedelta
"""Public APIs take durations in seconds, as a float or a ``timedelta``."""

DEFAULT_REDIS_URL = "redis://localhost:6379/0"


def to_seconds(value: Seconds) -> float:
    """Normalise a public duration argument to float seconds."""
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def validate_redis_url(url: str) -> str:
    """Check that ``url`` is a Redis URL Shoal can use; raise a one-line error otherwise."""
    parse_redis_url(url)
    return url


@dataclass(frozen=True, slots=True)
class Settings:
    """Runtime configuration. Build it with :meth:`from_env`; override fields with arguments."""

    redis_url: str = DEFAULT_REDIS_URL
    """Where the broker lives. ``SHOAL_REDIS_URL``. Redis ≥ 6.2 or Valkey."""

    redis_url_source: str = "default"
    """Where ``redis_url`` came from (``argument``, ``SHOAL_REDIS_URL``, ``default``), for repr."""

    redis_username: str | None = None
    """Redis ACL user (``SHOAL_REDIS_USERNAME``); a user name in the URL wins over it."""

    redis_password: str | None = field(default=None, repr=False)
    """Redis AUTH password (``SHOAL_REDIS_PASSWORD``), kept out of the URL so the operator can
    inject it from a Kubernetes Secret. A password in the URL wins over it."""

    redis_sentinel_username: str | None = None
    """ACL user on the sentinels themselves (``SHOAL_REDIS_SENTINEL_USERNAME``), for
    ``redis+sentinel://`` URLs; the URL's credentials are the master's."""

    redis_sentinel_password: str | None = field(default=None, repr=False)
    """Password of the sentinels (``SHOAL_REDIS_SENTINEL_PASSWORD``): sentinels often have their
    own ``requirepass``, or none while the master has one."""

    redis_tls_ca_file: str | None = None
    """PEM file of the CA that signed the server's certificate (``SHOAL_REDIS_TLS_CA_FILE``);
    unset: the system's trust store. Only with ``rediss://`` URLs."""

    redis_tls_cert_file: str | None = None
    """Client certificate PEM, for servers that ask for one (``SHOAL_REDIS_TLS_CERT_FILE``,
    Redis's ``tls-auth-clients yes``)."""

    redis_tls_key_file: str | None = field(default=None, repr=False)
    """Private key PEM of the client certificate (``SHOAL_REDIS_TLS_KEY_FILE``)."""

    redis_tls_verify: bool = True
    """Whether the server's certificate and host name are checked (``SHOAL_REDIS_TLS_VERIFY``).
    Turn off only to try a self-signed server: without it, TLS encrypts but anyone can pose as
    Redis."""

    redis_wait_replicas: int = 0
    """After each enqueue, wait until this many replicas have it (Redis ``WAIT``;
    ``SHOAL_REDIS_WAIT_REPLICAS``). 0: return once the primary has it, as Redis replicates
    asynchronously: a primary that fails before replicating loses it. See README, "Sentinel
    and failover"."""

    redis_wait_timeout_s: float = 1.0
    """Longest an enqueue waits for those replicas (``SHOAL_REDIS_WAIT_TIMEOUT``, seconds);
    fewer by then raise :class:`~shoal.errors.ReplicationUnconfirmed`."""

    key_prefix: str = "shoal"
    """Prefix of every Redis key (``SHOAL_KEY_PREFIX``); lets several apps share one Redis."""

    default_queue: str = "default"
    """Queue of tasks declared without ``queue=`` (``SHOAL_DEFAULT_QUEUE``)."""

    lease_s: float = 10.0
    """How long a fetched message stays reserved without a heartbeat (``SHOAL_LEASE``, seconds).

    A worker that dies (SIGKILL, OOM, node gone) stops renewing; its messages return to waiting
    after at most this long. Short enough to recover fast, long enough to ride out a GC pause."""

    heartbeat_s: float = 2.0
    """How often a worker renews its leases and its registration (``SHOAL_HEARTBEAT``, seconds).
    Must be well under ``lease_s``: a third or less, so two missed beats don't lose the lease."""

    default_timeout_s: float = 300.0
    """Timeout of a task that declares none (``SHOAL_DEFAULT_TIMEOUT``, seconds)."""

    default_max_retries: int = 3
    """Retries of a failing task that declares none (``SHOAL_MAX_RETRIES``)."""

    min_backoff_s: float = 1.0
    """First retry delay before jitter (``SHOAL_MIN_BACKOFF``, seconds); doubles per attempt."""

    max_backoff_s: float = 3600.0
    """Ceiling of the retry delay (``SHOAL_MAX_BACKOFF``, seconds)."""

    result_ttl_s: float = 3600.0
    """How long stored task results live in Redis (``SHOAL_RESULT_TTL``, seconds)."""

    workflow_ttl_s: float = 7 * 86400.0
    """How long a workflow's state (group results, started steps) lives in Redis after its last
    change (``SHOAL_WORKFLOW_TTL``, seconds): longer than any member's retries may take."""

    max_message_bytes: int = 512 * 1024
    """Largest encoded message accepted at enqueue (``SHOAL_MAX_MESSAGE_BYTES``). Redis holds
    every waiting message in memory: a bound keeps one bad producer from filling it."""

    shutdown_grace_s: float = 30.0
    """After SIGTERM, how long a worker lets running tasks finish before handing them back
    (``SHOAL_SHUTDOWN_GRACE``, seconds). Keep Kubernetes ``terminationGracePeriodSeconds``
    above it."""

    idle_poll_s: float = 1.0
    """Longest a worker with nothing to do sleeps before looking again (``SHOAL_IDLE_POLL``,
    seconds). New messages wake it at once; this bounds delayed and expired-lease pickup."""

    dlq_max_entries: int = 10_000
    """Dead letters kept per queue (``SHOAL_DLQ_MAX_ENTRIES``); the oldest are dropped first."""

    dlq_max_age_s: float = 7 * 24 * 3600.0
    """Age after which dead letters are dropped (``SHOAL_DLQ_MAX_AGE``, seconds; 7 days)."""

    priority_aging_s: float = 10.0
    """What one priority level is worth in waiting time (``SHOAL_PRIORITY_AGING``, seconds; read
    where messages are enqueued): a priority-9 message waits at most 9 x this longer than a
    priority-0 one enqueued with it, so no priority starves under steady load."""

    worker_ttl_s: float = 30.0
    """How long a worker's registration outlives its last heartbeat (``SHOAL_WORKER_TTL``)."""

    hard_timeout_grace_s: float = 5.0
    """How long a sync task may ignore its soft timeout before its process is replaced
    (``SHOAL_HARD_TIMEOUT_GRACE``, seconds). A thread stuck in C code (``time.sleep``, a blocking
    socket read) cannot be interrupted; only a new process frees its slot."""

    max_lost_deliveries: int = 3
    """Times a message may be delivered to a worker that then vanished (SIGKILL, OOM, node loss)
    before it is dead-lettered as ``worker_lost`` (``SHOAL_MAX_LOST_DELIVERIES``). Protects the
    queue from a message that crashes every worker that runs it."""

    worker_max_tasks_per_process: int = 0
    """Finished tasks (any outcome) after which ``shoal worker`` replaces a worker process
    (``SHOAL_WORKER_MAX_TASKS_PER_PROCESS``; ``--max-tasks-per-process``). 0: never. For task
    code that leaks: the process finishes what it runs, hands back what it leased ahead, and a
    fresh one takes its place; nothing is lost. Celery's ``max_tasks_per_child``."""

    worker_max_memory_per_process_mib: int = 0
    """Resident memory in MiB past which ``shoal worker`` replaces a worker process once its
    running tasks finish (``SHOAL_WORKER_MAX_MEMORY_PER_PROCESS_MIB``;
    ``--max-memory-per-process``). 0: never. Checked after each task (at most every 50 ms);
    keep it well under the container's memory limit divided by the processes per pod, so the
    process is recycled before the kernel's OOM killer ends the whole pod mid-task."""

    instance: str = field(default_factory=socket.gethostname)
    """Name of this worker instance in the registry (``SHOAL_INSTANCE``; default the host name,
    which in Kubernetes is the pod name). The autoscaler maps in-flight counts to pods by it."""

    log_format: str = "text"
    """``text`` for people, ``json`` for log pipelines (``SHOAL_LOG_FORMAT``). Either way every
    line logged while a task runs carries its id, name, queue, attempt and trace id."""

    otel_export: bool = False
    """Whether ``shoal worker`` sets up OpenTelemetry trace export itself. True when the standard
    variables ask for it (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``
    or ``OTEL_TRACES_EXPORTER=otlp``) and ``OTEL_SDK_DISABLED`` is not true. An app that installs
    its own tracer provider keeps it."""

    otel_protocol: str = "http/protobuf"
    """OTLP transport: ``grpc`` or ``http/protobuf`` (``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL``, else
    ``OTEL_EXPORTER_OTLP_PROTOCOL``). The exporters read endpoint, headers and timeouts from
    their own ``OTEL_*`` variables."""

    signing_keys: tuple[str, ...] = field(default=(), repr=False)
    """HMAC-SHA256 keys (``SHOAL_SIGNING_KEYS``, comma-separated). The first signs; all verify, so
    keys rotate by prepending the new one. With keys set, a worker dead-letters unsigned or badly
    signed messages (``bad_signature``) and never runs them."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read ``SHOAL_*`` once, then apply ``overrides`` (explicit arguments win)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = _ENV_NAMES.get(f.name)
            if name is None or name not in env:
                continue
            values[f.name] = _parse(name, env[name], f.type)
        if "redis_url" in values:
            values["redis_url_source"] = "SHOAL_REDIS_URL"
        values.update(_otel_from_env(env))
        explicit = {k: v for k, v in overrides.items() if v is not None}
        if "redis_url" in explicit:
            explicit["redis_url_source"] = "argument"
        values.update(explicit)
        return cls(**values).validated()

    def validated(self) -> Settings:
        """Return self after checking cross-field rules; raise ConfigurationError naming one."""
        self._validate_redis()
        for name in (
            "lease_s",
            "heartbeat_s",
            "default_timeout_s",
            "idle_poll_s",
            "workflow_ttl_s",
            "priority_aging_s",
        ):
            if getattr(self, name) <= 0:
                raise ConfigurationError(
                    f"setting {name} ({_ENV_NAMES[name]}) must be > 0 seconds, "
                    f"got {getattr(self, name)}"
                )
        for name in ("worker_max_tasks_per_process", "worker_max_memory_per_process_mib"):
            if getattr(self, name) < 0:
                raise ConfigurationError(
                    f"setting {name} ({_ENV_NAMES[name]}) must be 0 (off) or a positive "
                    f"number, got {getattr(self, name)}"
                )
        if self.log_format not in {"text", "json"}:
            raise ConfigurationError(
                f"log format {self.log_format!r} is not one of text, json (SHOAL_LOG_FORMAT)"
            )
        if self.otel_protocol not in {"grpc", "http/protobuf"}:
            raise ConfigurationError(
                f"OTLP protocol {self.otel_protocol!r} is not supported: set "
                "OTEL_EXPORTER_OTLP_PROTOCOL to grpc or http/protobuf"
            )
        if self.heartbeat_s * 2 > self.lease_s:
            raise ConfigurationError(
                f"heartbeat ({self.heartbeat_s}s) must be at most half the lease "
                f"({self.lease_s}s): "
                "raise SHOAL_LEASE or lower SHOAL_HEARTBEAT"
            )
        return self

    def _validate_redis(self) -> None:
        url = parse_redis_url(self.redis_url)
        tls_files = {
            "redis_tls_ca_file": self.redis_tls_ca_file,
            "redis_tls_cert_file": self.redis_tls_cert_file,
            "redis_tls_key_file": self.redis_tls_key_file,
        }
        for name, path in tls_files.items():
            if path is None:
                continue
            if not url.tls:
                raise ConfigurationError(
                    f"{_ENV_NAMES[name]} is set but the Redis URL {url.masked!r} does not use "
                    "TLS; use rediss:// (or rediss+sentinel://, rediss+cluster://), or unset it"
                )
            if not os.access(path, os.R_OK):
                raise ConfigurationError(
                    f"{_ENV_NAMES[name]}={path!r} is not a readable file; mount the PEM file "
                    "there (the Queue's spec.redis.tls Secrets are mounted by the operator)"
                )
        if (self.redis_tls_cert_file is None) != (self.redis_tls_key_file is None):
            raise ConfigurationError(
                "a TLS client certificate needs both SHOAL_REDIS_TLS_CERT_FILE and "
                "SHOAL_REDIS_TLS_KEY_FILE; set both, or neither"
            )
        if self.redis_wait_replicas < 0 or self.redis_wait_timeout_s < 0.001:  # WAIT 0 blocks
            raise ConfigurationError(
                f"SHOAL_REDIS_WAIT_REPLICAS ({self.redis_wait_replicas}) must be 0 or more and "
                f"SHOAL_REDIS_WAIT_TIMEOUT ({self.redis_wait_timeout_s}) at least 0.001 seconds"
            )

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some fields replaced (None values ignored)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None}).validated()


def env_name(field_name: str) -> str:
    """The ``SHOAL_*`` variable of a Settings field (``redis_tls_ca_file`` →
    ``SHOAL_REDIS_TLS_CA_FILE``), for whoever writes a worker's environment."""
    return _ENV_NAMES[field_name]


_ENV_NAMES = {
    "redis_url": "SHOAL_REDIS_URL",
    "redis_username": "SHOAL_REDIS_USERNAME",
    "redis_password": "SHOAL_REDIS_PASSWORD",
    "redis_sentinel_username": "SHOAL_REDIS_SENTINEL_USERNAME",
    "redis_sentinel_password": "SHOAL_REDIS_SENTINEL_PASSWORD",
    "redis_tls_ca_file": "SHOAL_REDIS_TLS_CA_FILE",
    "redis_tls_cert_file": "SHOAL_REDIS_TLS_CERT_FILE",
    "redis_tls_key_file": "SHOAL_REDIS_TLS_KEY_FILE",
    "redis_tls_verify": "SHOAL_REDIS_TLS_VERIFY",
    "redis_wait_replicas": "SHOAL_REDIS_WAIT_REPLICAS",
    "redis_wait_timeout_s": "SHOAL_REDIS_WAIT_TIMEOUT",
    "key_prefix": "SHOAL_KEY_PREFIX",
    "default_queue": "SHOAL_DEFAULT_QUEUE",
    "lease_s": "SHOAL_LEASE",
    "heartbeat_s": "SHOAL_HEARTBEAT",
    "default_timeout_s": "SHOAL_DEFAULT_TIMEOUT",
    "default_max_retries": "SHOAL_MAX_RETRIES",
    "min_backoff_s": "SHOAL_MIN_BACKOFF",
    "max_backoff_s": "SHOAL_MAX_BACKOFF",
    "result_ttl_s": "SHOAL_RESULT_TTL",
    "workflow_ttl_s": "SHOAL_WORKFLOW_TTL",
    "max_message_bytes": "SHOAL_MAX_MESSAGE_BYTES",
    "shutdown_grace_s": "SHOAL_SHUTDOWN_GRACE",
    "idle_poll_s": "SHOAL_IDLE_POLL",
    "dlq_max_entries": "SHOAL_DLQ_MAX_ENTRIES",
    "dlq_max_age_s": "SHOAL_DLQ_MAX_AGE",
    "priority_aging_s": "SHOAL_PRIORITY_AGING",
    "worker_ttl_s": "SHOAL_WORKER_TTL",
    "hard_timeout_grace_s": "SHOAL_HARD_TIMEOUT_GRACE",
    "max_lost_deliveries": "SHOAL_MAX_LOST_DELIVERIES",
    "worker_max_tasks_per_process": "SHOAL_WORKER_MAX_TASKS_PER_PROCESS",
    "worker_max_memory_per_process_mib": "SHOAL_WORKER_MAX_MEMORY_PER_PROCESS_MIB",
    "signing_keys": "SHOAL_SIGNING_KEYS",
    "log_format": "SHOAL_LOG_FORMAT",
    "instance": "SHOAL_INSTANCE",
}
"""Field → environment variable. The operator writes these names into worker pods."""


def _otel_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """The two decisions Shoal takes from the standard OpenTelemetry variables."""
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    wanted = exporter == "otlp" or (
        exporter != "none"
        and bool(
            env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        )
    )
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    protocol = (
        env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or env.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    return {"otel_export": wanted and not disabled, "otel_protocol": protocol.strip()}


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _parse(name: str, raw: str, kind: Any) -> Any:
    kind = str(kind)
    if kind == "str | None":
        return raw or None
    if kind == "bool":
        if raw.strip().lower() in _TRUE | _FALSE:
            return raw.strip().lower() in _TRUE
        raise ConfigurationError(
            f"environment variable {name}={raw!r} is not a yes or a no; set true or false"
        )
    if kind.startswith("tuple"):
        return tuple(part.strip() for part in raw.split(",") if part.strip())
    try:
        if kind == "float":
            return float(raw)
        if kind == "int":
            return int(raw)
    except ValueError:
        raise ConfigurationError(
            f"environment variable {name}={raw!r} is not a valid {kind}; set a number"
        ) from None
    return raw
