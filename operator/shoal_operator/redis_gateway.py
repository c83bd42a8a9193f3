"""The operator's one way into Redis, through the runtime's own APIs: measure a queue (O(1)),
promote what is due into its waiting list (so KEDA can read it), and write what a Queue
resource declares (its defaults, its schedules) where workers read them.

It keeps one Shoal App per Redis connection across ticks, and the last reading per queue (for
throughput). Measuring and writing only: deciding is in ``shoal.autoscale`` and ``queues``."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from shoal import App, BrokerError, ConfigurationError, QueueStats, Settings, queue_defaults
from shoal.protocol import CONNECTION_ERRORS, Promoted, connection_error
from shoal.scheduler import stored, write_queue_schedules
from shoal.schedules import Schedule, describe_time, from_queue_spec
from shoal_operator.errors import InvalidReference, RedisUnreachable
from shoal_operator.metrics import measuring_redis
from shoal_operator.redis_target import RedisTarget, SecretReader
from shoal_operator.tls_files import TLSFiles


@contextlib.contextmanager
def unreachable_on_redis_errors(conn: Connection) -> Iterator[None]:
    """Redis failures become the RedisUnreachable condition, naming the (masked) URL."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise RedisUnreachable("RedisUnreachable", str(connection_error(conn.url, exc))) from None
    except BrokerError as exc:
        raise RedisUnreachable("RedisUnreachable", str(exc)) from None


@dataclass(frozen=True, slots=True)
class Connection:
    """The runtime Settings of one Queue's Redis, as the operator uses it: hashable, and equal
    across ticks while the spec and its Secrets are unchanged (the App is kept per Connection)."""

    settings: Settings

    @property
    def url(self) -> str:
        return self.settings.redis_url


@dataclass(frozen=True, slots=True)
class Reading:
    """One measurement and the throughput since the previous one (tasks/s)."""

    stats: QueueStats
    throughput: float


class RedisGateway:
    """Shoal Apps per Redis connection (kept across ticks), and the last reading per queue."""

    def __init__(self) -> None:
        self._apps: dict[Connection, App] = {}
        self._last: dict[tuple[str, str], QueueStats] = {}
        self._lock = threading.Lock()
        self.tls_files = TLSFiles()

    def connect(self, target: RedisTarget, api: SecretReader, namespace: str) -> Connection:
        """The operator's own connection to a target: its Secrets read (each tick, so a changed
        Secret is used at once), TLS material written to private files, Settings validated."""
        found = target.resolve(api, namespace)

        def private_file(content: bytes | None, name: str) -> str | None:
            return self.tls_files.path(content, name) if content is not None else None

        try:
            settings = Settings(
                redis_url=found.url,
                redis_url_source="Queue",
                redis_username=found.username,
                redis_password=found.password,
                redis_sentinel_username=found.sentinel_username,
                redis_sentinel_password=found.sentinel_password,
                redis_tls_ca_file=private_file(found.tls_ca, "ca.crt"),
                redis_tls_cert_file=private_file(found.tls_cert, "tls.crt"),
                redis_tls_key_file=private_file(found.tls_key, "tls.key"),
                redis_tls_verify=found.tls_verify,
                key_prefix=target.key_prefix,
            ).validated()
        except ConfigurationError as exc:
            raise InvalidReference(
                "InvalidRedisSettings",
                f"Queue {target.queue}: its Redis settings are refused: {exc}; fix spec.redis "
                "or the Secrets it references",
            ) from None
        return Connection(settings)

    def app(self, conn: Connection) -> App:
        with self._lock:
            app = self._apps.get(conn)
            if app is None:
                app = self._apps[conn] = App(settings=conn.settings, middleware=[])
            return app

    def close(self) -> None:
        """Close every App's connections and remove the TLS files (the operator stops)."""
        with self._lock:
            apps, self._apps = list(self._apps.values()), {}
        for app in apps:
            app.close()
        self.tls_files.close()

    def promote(self, conn: Connection, queue: str) -> Promoted:
        """Move what is due (delayed messages, retries, lapsed leases) into the waiting list,
        as a worker's fetch would: with no worker running, its length stays true, so a stock
        KEDA redis scaler on it wakes a fleet at zero. Bounded per call (``MOVE_LIMIT``)."""
        with unreachable_on_redis_errors(conn):
            return self.app(conn).broker.promote(queue)

    def measure(self, conn: Connection, namespace: str, queue: str) -> Reading:
        """The queue's figures; RedisUnreachable when Redis does not answer."""
        with unreachable_on_redis_errors(conn), measuring_redis():
            stats = self.app(conn).measure(queue)
        previous = self._last.get((namespace, queue))
        self._last[(namespace, queue)] = stats
        throughput = 0.0
        if previous is not None and stats.measured_at_ms > previous.measured_at_ms:
            done = max(0, stats.completed - previous.completed)
            throughput = done * 1000 / (stats.measured_at_ms - previous.measured_at_ms)
        return Reading(stats, throughput)

    def write_schedules(
        self, conn: Connection, queue: str, spec: dict[str, Any]
    ) -> tuple[list[Schedule], dict[str, str], bool]:
        """Write the Queue's valid schedules where workers read them (its removed ones deleted,
        its invalid ones left as they were, code schedules alone); returns them, the invalid
        ones' errors by name, and whether Redis changed."""
        valid: list[Schedule] = []
        invalid: dict[str, str] = {}
        for item in spec.get("schedules") or []:
            try:
                valid.append(from_queue_spec(queue, item))
            except ConfigurationError as exc:
                invalid[str(item.get("name"))] = str(exc)
        with unreachable_on_redis_errors(conn):
            changed = write_queue_schedules(self.app(conn).broker, queue, valid, keep=invalid)
        return valid, invalid, changed

    def remove_schedules(self, conn: Connection, queue: str) -> None:
        """Delete every schedule a Queue resource wrote (and their claims)."""
        with unreachable_on_redis_errors(conn):
            write_queue_schedules(self.app(conn).broker, queue, [])

    def schedule_runs(self, conn: Connection, queue: str, now_ms: int) -> list[dict[str, str]]:
        """Each stored schedule's next run, last run and outcome, for the Queue's status."""
        with unreachable_on_redis_errors(conn):
            listed = stored(self.app(conn).broker, queue, now_ms)
        out = []
        for row in listed:
            zone = row.schedule.zone if row.schedule else None
            outcome = row.outcome if row.error is None else f"invalid: {row.error}"
            out.append(
                {
                    "name": row.name,
                    "nextRun": describe_time(row.next_ms, zone),
                    "lastRun": describe_time(row.last.tick_ms if row.last else None, zone),
                    "outcome": outcome,
                }
            )
        return out

    def configure(
        self, conn: Connection, queue: str, spec: dict[str, Any]
    ) -> tuple[dict[str, Any], bool]:
        """Make the Queue's defaults in Redis what the spec says (replacing what was there,
        only when it differs); returns them and whether Redis changed."""
        defaults = queue_defaults.from_queue_spec(spec)
        fields = queue_defaults.validate(queue, defaults)
        with unreachable_on_redis_errors(conn):
            changed = self.app(conn).broker.replace_queue_defaults(queue, fields)
        return defaults, changed

    def forget(self, namespace: str, queue: str) -> None:
        self._last.pop((namespace, queue), None)
