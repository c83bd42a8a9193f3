"""The ``/metrics`` endpoint of ``shoal worker``: every worker process's task metrics, merged,
plus each queue's depth measured in Redis when Prometheus scrapes."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from shoal.errors import BrokerError
from shoal.settings import Settings

if TYPE_CHECKING:
    from shoal.protocol import Broker

log = logging.getLogger("shoal.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class QueueCollector:
    """Per-queue gauges (waiting, in flight, delayed, dead, oldest age) read at scrape time."""

    def __init__(self, settings: Settings, queues: Sequence[str]) -> None:
        from shoal.protocol import Broker  # here: the supervisor loads Redis only to serve this

        self.broker: Broker = Broker(settings)
        self.queues = list(queues)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        families = {
            "waiting": GaugeMetricFamily(
                "shoal_queue_waiting", "Messages ready to run", labels=["queue"]
            ),
            "in_flight": GaugeMetricFamily(
                "shoal_queue_in_flight", "Messages leased by workers", labels=["queue"]
            ),
            "delayed": GaugeMetricFamily(
                "shoal_queue_delayed", "Messages delayed or waiting to retry", labels=["queue"]
            ),
            "dead": GaugeMetricFamily(
                "shoal_queue_dead", "Messages in the dead-letter queue", labels=["queue"]
            ),
            "oldest_age_s": GaugeMetricFamily(
                "shoal_queue_oldest_age_seconds",
                "Age of the oldest waiting message",
                labels=["queue"],
            ),
        }
        up = GaugeMetricFamily("shoal_redis_up", "1 when Redis answered the last measurement")
        try:
            stats = self.broker.measure_many(self.queues) if self.queues else []
        except BrokerError as exc:
            log.warning("metrics: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for s in stats:
            for field, family in families.items():
                family.add_metric([s.queue], float(getattr(s, field)))
        yield up
        yield from families.values()


class MetricsServer:
    """Owns the multiprocess directory and the HTTP server of one supervisor."""

    def __init__(self, port: int, settings: Settings, queues: Sequence[str]) -> None:
        self.port = port
        self.dir = tempfile.mkdtemp(prefix="shoal-metrics-")
        # prometheus_client reads this in each worker process (inherited at spawn).
        os.environ[MULTIPROC_ENV] = self.dir
        self.settings = settings
        self.queues = queues
        self._server: Any = None
        self._recycles: Any = None

    def start(self) -> int:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.dir)  # type: ignore[no-untyped-call]
        registry.register(QueueCollector(self.settings, self.queues))
        self._recycles = _recycles_counter()
        self._server, _ = start_http_server(self.port, registry=registry)
        self.port = self._server.server_address[1]
        return self.port

    @property
    def listener(self) -> socket.socket | None:
        """The listening socket, once started (a forked worker process closes its copy)."""
        return self._server.socket if self._server is not None else None

    def process_exited(self, pid: int) -> None:
        """Forget a dead worker process's live gauges (in flight)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.dir)  # type: ignore[no-untyped-call]

    def recycled(self, reason: str) -> None:
        """Count a worker process replaced at a recycling limit (``tasks`` or ``memory``)."""
        if self._recycles is not None:
            self._recycles.labels(reason).inc()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
        shutil.rmtree(self.dir, ignore_errors=True)


def _recycles_counter() -> Any:
    """``shoal_worker_recycles_total{reason}``, counted by the supervisor (in the multiprocess
    directory, merged like the workers' metrics); both reasons start at 0."""
    from prometheus_client import Counter

    from shoal.recycling import REASONS

    counter = Counter(
        "shoal_worker_recycles",
        "Worker processes replaced at --max-tasks-per-process or --max-memory-per-process",
        ["reason"],
        registry=None,
    )
    for reason in REASONS:
        counter.labels(reason)
    return counter
