"""``shoal dev -f queue.yaml``: the cluster's manifests on a laptop, with local worker processes.

Each ``Worker`` becomes a fleet of local ``shoal worker`` processes (one per replica), sized by
the same autoscaling policy the operator uses (``shoal.autoscale``) when
``spec.autoscaling.enabled``, else by ``spec.replicas``. Queues get their defaults and
schedules written to Redis as the operator would. Redis is ``--redis-url``, else
``SHOAL_REDIS_URL``, else a ``redis-server`` started here on a free port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.live import Live
from rich.table import Table

from shoal import manifests, queue_defaults
from shoal.app import App
from shoal.autoscale import Decision, Policy, State, decide, policy_from_spec
from shoal.errors import ConfigurationError
from shoal.fleet import FleetMeter, in_flight_by_instance
from shoal.protocol.server import LocalRedis
from shoal.scheduler import next_unclaimed_tick, write_queue_schedules
from shoal.schedules import from_queue_spec
from shoal.settings import Settings

API_VERSION = "shoal.dev/v1alpha1"


@dataclass(frozen=True, slots=True)
class Manifests:
    queues: dict[str, dict[str, Any]]
    workers: dict[str, dict[str, Any]]


def load_manifests(paths: Sequence[Path]) -> Manifests:
    """Queues and Workers from YAML files, as the API server would store them (schema defaults
    applied). Refused, every problem at once with its file and document, when a document is
    not a Shoal Queue or Worker, or the CRDs' schema or CEL rules would refuse it."""
    crds = manifests.load_crds()
    queues: dict[str, dict[str, Any]] = {}
    workers: dict[str, dict[str, Any]] = {}
    queue_names: set[str] = set()  # valid or not: an invalid Queue is not also "missing"
    problems: list[str] = []
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(path.read_text()))
        except (OSError, yaml.YAMLError) as exc:
            problems.append(f"cannot read manifests from {path}: {exc}")
            continue
        for number, doc in enumerate(docs, 1):
            where = f"{path} (document {number})"
            if doc is None:
                continue
            if not isinstance(doc, dict):
                problems.append(f"{where}: not a Kubernetes object (a mapping with a kind)")
                continue
            kind, meta = doc.get("kind"), doc.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            if doc.get("apiVersion") != API_VERSION or kind not in {"Queue", "Worker"}:
                problems.append(
                    f"{where}: {doc.get('apiVersion')} {kind} {name or ''} is not a Shoal "
                    f"resource; shoal dev runs {API_VERSION} Queue and Worker only"
                )
                continue
            if not name:
                problems.append(f"{where}: a {kind} without metadata.name")
            elif kind == "Queue":
                queue_names.add(name)
            stored, invalid = manifests.check(doc, crds)
            problems += [f'{where}: {kind} "{name or ""}" is invalid: {e}' for e in invalid]
            if name and not invalid:
                (queues if kind == "Queue" else workers)[name] = stored["spec"]
    for name, spec in workers.items():
        missing = [q for q in spec["queues"] if q not in queue_names]
        if missing:
            problems.append(
                f"Worker {name}: needs its Queues defined in the same files "
                f"(missing: {', '.join(missing)})"
            )
    if problems:
        raise ConfigurationError(
            f"shoal dev started nothing: {len(problems)} problem(s) in the manifests\n"
            + "\n".join(f"  {p}" for p in problems)
        )
    return Manifests(queues, workers)


def policy_of(spec: dict[str, Any]) -> Policy | None:
    """The Worker's autoscaling policy, or None when it has a fixed size."""
    autoscaling = spec.get("autoscaling") or {}
    return policy_from_spec(autoscaling) if autoscaling.get("enabled") else None


@dataclass
class LocalFleet:
    """The local processes of one Worker: instance ``dev-<worker>-<n>`` each."""

    name: str
    spec: dict[str, Any]
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    state: State | None = None
    decision: Decision | None = None
    meter: FleetMeter = field(default_factory=FleetMeter)
    serial: int = 0

    def replicas(self) -> int:
        for instance, proc in list(self.processes.items()):
            if proc.poll() is not None:  # died: the next tick starts a replacement if needed
                del self.processes[instance]
        return len(self.processes)

    def scale_to(self, wanted: int, in_flight: dict[str, int]) -> None:
        while len(self.processes) < wanted:
            self.serial += 1
            instance = f"dev-{self.name}-{self.serial}"
            spec = self.spec
            self.processes[instance] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shoal",
                    "worker",
                    spec["module"],
                    "--queues",
                    ",".join(spec["queues"]),
                    "--concurrency",
                    str(spec.get("concurrency", 16)),
                    "--processes",
                    str(spec.get("processes", 1)),
                    "--log-level",
                    "WARNING",
                ],
                env={**self.env, "SHOAL_INSTANCE": instance},
            )
        # Scale-in removes the idlest instances first, like pod-deletion-cost in the cluster.
        for instance in sorted(self.processes, key=lambda i: in_flight.get(i, 0))[
            : max(0, len(self.processes) - wanted)
        ]:
            self.processes.pop(instance).send_signal(signal.SIGTERM)

    def stop(self) -> None:
        for proc in self.processes.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.processes.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.processes.clear()


@contextlib.contextmanager
def _redis(url: str | None, console: Console) -> Iterator[str]:
    if url:
        yield url
        return
    with LocalRedis() as server:
        console.print(
            f"Started redis-server on 127.0.0.1:{server.port}. Producers: "
            f"export SHOAL_REDIS_URL={server.url}"
        )
        yield server.url


class DevRunner:
    """Runs the fleets until interrupted (or ``duration_s``, for scripts)."""

    def __init__(self, manifests: Manifests, redis_url: str | None, console: Console) -> None:
        self.manifests = manifests
        self.redis_url = redis_url
        self.console = console
        self.stopping = False

    def run(self, duration_s: float | None = None) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self._stop())
        with _redis(self.redis_url, self.console) as url:
            prefixes = {
                ((q.get("redis") or {}).get("keyPrefix", "shoal"))
                for q in self.manifests.queues.values()
            }
            if len(prefixes) > 1:
                raise ConfigurationError("shoal dev runs Queues of one key prefix at a time")
            settings = Settings(
                redis_url=url,
                redis_url_source="shoal dev",
                key_prefix=prefixes.pop() if prefixes else "shoal",
            ).validated()
            app = App(settings=settings, middleware=[])
            for name, spec in self.manifests.queues.items():
                app.configure_queue(name, **queue_defaults.from_queue_spec(spec))
                entries = spec.get("schedules") or []
                write_queue_schedules(app.broker, name, [from_queue_spec(name, e) for e in entries])
            env = {**os.environ, "SHOAL_REDIS_URL": url, "SHOAL_KEY_PREFIX": settings.key_prefix}
            fleets = [
                LocalFleet(n, s, {**env, "OTEL_SERVICE_NAME": n})
                for n, s in self.manifests.workers.items()
            ]
            deadline = None if duration_s is None else time.monotonic() + duration_s
            try:
                self._loop(app, fleets, deadline)
            finally:
                for fleet in fleets:
                    fleet.stop()
                app.close()
        self.console.print("shoal dev: stopped every worker it started.")

    def _stop(self) -> None:
        self.stopping = True

    def _loop(self, app: App, fleets: list[LocalFleet], deadline: float | None) -> None:
        live = Live(console=self.console, auto_refresh=False) if self.console.is_terminal else None
        with live or contextlib.nullcontext():
            try:
                while not self.stopping and (deadline is None or time.monotonic() < deadline):
                    poll = min((p.poll_s for f in fleets if (p := policy_of(f.spec))), default=2.0)
                    for fleet in fleets:
                        self._tick(app, fleet)
                    if live is not None:
                        live.update(self._table(fleets), refresh=True)
                    time.sleep(poll)
            except KeyboardInterrupt:
                pass

    def _tick(self, app: App, fleet: LocalFleet) -> None:
        current = fleet.replicas()
        in_flight = in_flight_by_instance(app.broker)
        policy = policy_of(fleet.spec)
        if policy is None:
            wanted, reason = int(fleet.spec.get("replicas", 1)), "fixed size (spec.replicas)"
        else:
            ready = sum(1 for instance in fleet.processes if instance in in_flight)
            snap = fleet.meter.snapshot(app.broker, fleet.spec["queues"], current, ready)
            tick = next_unclaimed_tick(app.broker, fleet.spec["queues"], policy.schedule_hold_s)
            snap = replace(snap, next_tick=tick)  # woken for schedules, as in the cluster
            fleet.decision = decide(policy, snap, fleet.state)
            fleet.state = fleet.decision.state
            wanted, reason = fleet.decision.replicas, fleet.decision.reason
        if wanted != current:
            if not self.console.is_terminal:
                self.console.print(f"{fleet.name}: {current} → {wanted} ({reason})")
            fleet.scale_to(wanted, in_flight)

    @staticmethod
    def _table(fleets: list[LocalFleet]) -> Table:
        table = Table(title="shoal dev (Ctrl-C stops everything)")
        for col in ("worker", "queues", "processes", "last decision"):
            table.add_column(col)
        for f in fleets:
            table.add_row(
                f.name,
                ",".join(f.spec["queues"]),
                str(len(f.processes)),
                f.decision.reason if f.decision else "fixed size",
            )
        return table
