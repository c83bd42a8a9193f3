"""``shoal worker``: a supervisor process that keeps P worker processes alive.

The supervisor runs no tasks. It starts children (spawned, so each imports the task module
cleanly), replaces any that dies, forwards SIGTERM so they drain, and serves the health
endpoint Kubernetes probes: ``/livez`` (every child alive and looping) and ``/readyz``
(Redis answers).
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.sharedctypes import Synchronized
from typing import Any

from shoal import logs
from shoal.app import load_app
from shoal.errors import ShoalError, TaskModuleError
from shoal.metrics import MetricsServer
from shoal.settings import Settings

log = logging.getLogger("shoal.supervisor")

EXIT_REPLACE_ME = 3
"""A child exits with this after a hard timeout left a thread it cannot stop: start a new one."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What each child runs: the app to import and how to consume."""

    app: str
    queues: list[str]
    concurrency: int
    burst: bool = False
    metrics: bool = False
    log_format: str = "text"


def _child_main(spec: WorkerSpec, tick: Synchronized[float], log_level: int) -> None:
    """Entry point of a worker process."""
    logs.setup(log_level, spec.log_format)
    from shoal.worker import Worker  # imported here: the supervisor never needs it

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` dumps every stack

    try:
        app = load_app(spec.app)
    except TaskModuleError as exc:  # the supervisor imported it, this process cannot: say why
        sys.stderr.write(f"{exc.user_traceback()}error: {exc}\n")
        sys.stderr.flush()
        os._exit(2)
    if spec.metrics:
        from shoal.middleware.prometheus import Prometheus

        app.add_middleware(Prometheus())

    def beat() -> None:
        tick.value = time.monotonic()

    async def main() -> bool:
        worker = Worker(
            app, spec.queues or None, concurrency=spec.concurrency, burst=spec.burst, on_tick=beat
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()
        return worker.replace_requested

    code = 1
    try:
        code = EXIT_REPLACE_ME if asyncio.run(main()) else 0
    finally:
        logging.shutdown()
        # os._exit: never wait for task threads abandoned after a hard timeout or the grace
        # period, whether the worker returned or raised
        os._exit(code)


class _Child:
    def __init__(self, ctx: Any, spec: WorkerSpec, log_level: int) -> None:
        self.tick: Synchronized[float] = ctx.Value("d", 0.0)  # 0: still starting up
        self.process = ctx.Process(
            target=_child_main, args=(spec, self.tick, log_level), name="shoal-worker", daemon=False
        )
        self.process.start()
        self.started = time.monotonic()


class Supervisor:
    """Runs ``processes`` workers until SIGTERM (or, in burst mode, until they all drained)."""

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        processes: int,
        settings: Settings,
        health_port: int | None = None,
        metrics_port: int | None = None,
        log_level: int = logging.INFO,
    ) -> None:
        self.spec = spec
        self.processes = max(1, processes)
        self.settings = settings
        self.health_port = health_port
        self.metrics_port = metrics_port
        self.metrics: MetricsServer | None = None
        self.log_level = log_level
        self.ctx = multiprocessing.get_context("spawn")
        self.children: list[_Child | None] = []
        self.stopping = False
        self.restarts = 0

    def run(self) -> int:
        app = load_app(self.spec.app)  # fail fast, in the foreground, on a bad module path
        if self.metrics_port is not None:
            queues = self.spec.queues or app.queues()
            self.metrics = MetricsServer(self.metrics_port, self.settings, queues)
            self.metrics_port = self.metrics.start()
            log.info("supervisor: metrics on :%d/metrics", self.metrics_port)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        server = self._serve_health() if self.health_port is not None else None
        self.children = [_Child(self.ctx, self.spec, self.log_level) for _ in range(self.processes)]
        log.info(
            "supervisor %d: %d worker process(es) on %s",
            os.getpid(),
            self.processes,
            ",".join(self.spec.queues) or "the app's queues",
        )
        stop_deadline: float | None = None
        failed = False
        while any(c is not None for c in self.children):
            time.sleep(0.1)
            if self.stopping and stop_deadline is None:
                stop_deadline = time.monotonic() + self.settings.shutdown_grace_s + 10
            for i, child in enumerate(self.children):
                if child is None:
                    continue
                if child.process.is_alive():
                    self._kill_if_hung(child)
                    continue
                code = child.process.exitcode
                if self.metrics is not None and child.process.pid:
                    self.metrics.process_exited(child.process.pid)
                if self.stopping or (self.spec.burst and code == 0):
                    self.children[i] = None
                    failed |= code not in (0, -signal.SIGTERM)
                    continue
                self.restarts += 1
                log.log(
                    logging.WARNING if code == EXIT_REPLACE_ME else logging.ERROR,
                    "worker process %d exited with %s; starting a replacement",
                    child.process.pid,
                    code,
                )
                if time.monotonic() - child.started < 1:
                    time.sleep(1)  # a crash loop: don't spin
                if self.stop_requested():  # SIGTERM arrived during the pause: no new child
                    self.children[i] = None
                    continue
                self.children[i] = _Child(self.ctx, self.spec, self.log_level)
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                for child in self.children:
                    if child is not None and child.process.is_alive() and child.process.pid:
                        log.error(
                            "worker %d ignored SIGTERM past the grace period; its stacks "
                            "follow, then it is killed",
                            child.process.pid,
                        )
                        os.kill(child.process.pid, signal.SIGUSR1)
                        time.sleep(0.5)
                        child.process.kill()
                stop_deadline = float("inf")
        if server is not None:
            server.shutdown()
        if self.metrics is not None:
            self.metrics.stop()
        return 1 if failed else 0

    def stop_requested(self) -> bool:
        """Read anew each time: the signal handler sets ``stopping`` between any two lines."""
        return self.stopping

    def _kill_if_hung(self, child: _Child) -> None:
        """A child whose event loop stopped ticking for a whole lease (an async task blocking
        it, a deadlock) is killed and replaced; its messages return when their leases lapse."""
        limit = self.settings.lease_s + self.settings.heartbeat_s
        tick = child.tick.value
        if tick and time.monotonic() - tick > limit and not self.stopping:
            log.error(
                "worker process %d has not looped for %.0fs (blocked event loop?); killing it",
                child.process.pid,
                time.monotonic() - tick,
            )
            child.process.kill()
            child.process.join(5)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.info("supervisor: %s received, draining workers", signal.Signals(signum).name)
        self.stopping = True
        for child in self.children:
            if child is not None and child.process.is_alive() and child.process.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.process.pid, signal.SIGTERM)

    # --- health ---------------------------------------------------------------------------------

    def alive(self) -> tuple[bool, str]:
        """Liveness: every child process runs and its loop ticked recently."""
        stale_after = max(10.0, 3 * self.settings.heartbeat_s)
        now = time.monotonic()
        for child in self.children:
            if child is None:
                continue
            if not child.process.is_alive():
                return False, f"worker process {child.process.pid} is not running"
            if child.tick.value and now - child.tick.value > stale_after:
                return (
                    False,
                    f"worker process {child.process.pid} has not looped for "
                    f"{now - child.tick.value:.0f}s",
                )
        return True, f"{sum(c is not None for c in self.children)} worker process(es) looping"

    def ready(self) -> tuple[bool, str]:
        """Readiness: Redis answers."""
        from shoal.protocol import Broker

        broker = Broker(self.settings)
        try:
            broker.ping()
        except ShoalError as exc:
            return False, str(exc)
        finally:
            broker.close()
        return True, "Redis reachable"

    def _serve_health(self) -> ThreadingHTTPServer:
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                checks = {
                    "/livez": supervisor.alive,
                    "/healthz": supervisor.alive,
                    "/readyz": supervisor.ready,
                }
                check = checks.get(self.path.split("?")[0])
                if check is None:
                    self.send_error(404, "use /livez or /readyz")
                    return
                ok, detail = check()
                body = (("ok: " if ok else "failing: ") + detail + "\n").encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("0.0.0.0", self.health_port or 0), Handler)
        self.health_port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="shoal-health", daemon=True).start()
        return server
