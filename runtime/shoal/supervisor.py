"""``shoal worker``: a supervisor process that keeps P worker processes alive.

The supervisor runs no tasks. ``shoal worker`` imports the task module once, to fail fast and to
read the app's settings, then :func:`handover` re-executes the interpreter in place (same PID)
as a lean supervisor: no task code, no Redis client, no asyncio. It forks each worker process
from that small image, so every worker imports the task module itself, cleanly, and shares the
supervisor's pages; it replaces any child that dies, forwards SIGTERM so they drain, and serves
the health endpoint Kubernetes probes: ``/livez`` (every child alive and looping) and
``/readyz`` (Redis answers).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import json
import logging
import mmap
import multiprocessing
import os
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, NoReturn

from shoal import logs
from shoal.errors import ShoalError, TaskModuleError
from shoal.recycling import EXIT_RECYCLED, RecycleLimits, RecycleNote
from shoal.settings import Settings

if TYPE_CHECKING:
    from http.server import ThreadingHTTPServer

    from shoal.metrics import MetricsServer

log = logging.getLogger("shoal.supervisor")

EXIT_REPLACE_ME = 3
"""A child exits with this after a hard timeout left a thread it cannot stop: start a new one."""

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}

WORKER_NAME = "shoal-worker"
"""The process name (``ps -o comm``, ``top``) of worker processes, set at fork (Linux)."""


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What each child runs: the app to import and how to consume."""

    app: str
    queues: list[str]
    concurrency: int
    burst: bool = False
    metrics: bool = False
    log_format: str = "text"
    max_tasks_per_process: int = 0
    max_memory_per_process_mib: int = 0


class Tick:
    """When a child's event loop last turned (``time.monotonic()``; 0 while it starts): one
    double in a page shared with the forked child. No lock: a child killed mid-write cannot
    leave the supervisor waiting forever on a lock it held, and one aligned 8-byte store is
    never seen half done."""

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, 8)  # anonymous and MAP_SHARED: the fork keeps it shared

    @property
    def value(self) -> float:
        return float(struct.unpack_from("d", self._page)[0])

    @value.setter
    def value(self, now: float) -> None:
        struct.pack_into("d", self._page, 0, now)


def _child_main(
    spec: WorkerSpec,
    tick: Tick,
    note: RecycleNote,
    log_level: int,
    inherited: Sequence[socket.socket],
    supervisor: int,
) -> None:
    """Entry point of a worker process, just forked from the supervisor (pid ``supervisor``,
    signals blocked)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the supervisor's handlers are not ours
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    for sock in inherited:  # the supervisor's listening sockets: a worker never accepts
        sock.close()
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(WORKER_NAME)
    logs.setup(log_level, spec.log_format)
    import asyncio  # imported here: the supervisor never needs them

    from shoal.app import load_app
    from shoal.worker import Worker

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1` dumps every stack

    try:
        app = load_app(spec.app)
    except TaskModuleError as exc:  # `shoal worker` imported it, this process cannot: say why
        sys.stderr.write(f"{exc.user_traceback()}error: {import_failure(exc)}\n")
        sys.stderr.flush()
        os._exit(2)
    if spec.metrics:
        from shoal.middleware.prometheus import Prometheus

        app.add_middleware(Prometheus())

    recycle = RecycleLimits(spec.max_tasks_per_process, spec.max_memory_per_process_mib)

    async def main() -> int:
        def watch_supervisor() -> None:
            if os.getppid() != supervisor and not worker.stopping:
                orphaned(worker.id, supervisor)
                worker.stop()

        def beat() -> None:
            tick.value = time.monotonic()
            watch_supervisor()

        def booted() -> None:  # before the first fetch: forked as the supervisor died
            freeze_boot_heap()
            watch_supervisor()

        worker = Worker(
            app,
            spec.queues or None,
            concurrency=spec.concurrency,
            burst=spec.burst,
            on_tick=beat,
            recycle=recycle,
            on_booted=booted,
        )
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()
        if worker.replace_requested:
            return EXIT_REPLACE_ME
        if worker.recycled is not None:
            note.write(worker.recycled)
            return EXIT_RECYCLED
        return 0

    code = 1
    try:
        code = asyncio.run(main())
    finally:
        logging.shutdown()
        # os._exit: never wait for task threads abandoned after a hard timeout or the grace
        # period, whether the worker returned or raised
        os._exit(code)


def orphaned(worker_id: str, supervisor: int) -> None:
    """A worker process whose supervisor died (SIGKILLed, or OOM-killed) is nobody's to stop
    or replace: it drains as on SIGTERM and exits, rather than serve on unseen (Gunicorn's
    workers do the same). Checked before the first fetch and at every tick, a few times a
    second: one ``getppid``."""
    log.warning(
        "worker %s: its supervisor (pid %d) is gone; draining as on SIGTERM, then exiting. "
        "Start `shoal worker` again to serve these queues",
        worker_id,
        supervisor,
    )


def freeze_boot_heap() -> None:
    """Take what this worker process allocated to boot (the task module and everything it
    imports, the middleware's set-up) out of the garbage collector's sight: it lives as long as
    the process, and every full collection walked all of it again, a pause of 25-40 ms with
    every slot waiting (a task that slept 50 ms ended after 90). Collections then walk only
    what was made since. The price: a reference cycle made at boot and dropped later is never
    collected (nor finalized); that is bounded by the boot heap. Only in processes ``shoal
    worker`` owns: in an application's own process the heap is the application's."""
    gc.collect()
    gc.freeze()


def import_failure(exc: TaskModuleError) -> str:
    """The line that ends a task module's failed import: its error's last line (``KeyError:
    'DATABASE_URL'``) and what to do, so a log read from its end still says why."""
    import traceback

    last = traceback.format_exception_only(type(exc.error), exc.error)[-1].strip()
    return (
        f"could not import {exc.module!r}: {last}. Fix it (the traceback above shows where; "
        f"`python -c 'import {exc.module}'` reproduces it)"
    )


class _Child:
    def __init__(
        self, ctx: Any, spec: WorkerSpec, log_level: int, inherited: Sequence[socket.socket]
    ) -> None:
        self.tick = Tick()
        self.note = RecycleNote()
        self.process = ctx.Process(
            target=_child_main,
            args=(spec, self.tick, self.note, log_level, inherited, os.getpid()),
            name=WORKER_NAME,
            daemon=False,
        )
        self.process.start()
        self.started = time.monotonic()


class Supervisor:
    """Runs ``processes`` workers until SIGTERM (or, in burst mode, until they all drained).

    ``queues``: the app's own queues, measured by ``/metrics`` when ``spec.queues`` is empty."""

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        processes: int,
        settings: Settings,
        health_port: int | None = None,
        metrics_port: int | None = None,
        log_level: int = logging.INFO,
        queues: Sequence[str] = (),
    ) -> None:
        self.spec = spec
        self.processes = max(1, processes)
        self.settings = settings
        self.health_port = health_port
        self.metrics_port = metrics_port
        self.metrics: MetricsServer | None = None
        self.log_level = log_level
        self.queues = list(queues)
        self.ctx = multiprocessing.get_context("fork")
        self.children: list[_Child | None] = []
        self.stopping = False
        self.restarts = 0
        """Worker processes replaced after a crash (a recycle is not one)."""
        self.recycles = 0
        """Worker processes replaced at a recycling limit."""
        self._health: ThreadingHTTPServer | None = None
        self._fork_lock = threading.Lock()
        """Held while forking, and by a health thread while it imports: a child forked then
        would inherit that module's import lock, held by a thread it does not have."""

    def run(self) -> int:
        if self.metrics_port is not None:
            from shoal.metrics import MetricsServer

            self.metrics = MetricsServer(
                self.metrics_port, self.settings, self.spec.queues or self.queues
            )
            self.metrics_port = self.metrics.start()
            log.info("supervisor: metrics on :%d/metrics", self.metrics_port)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        if self.health_port is not None:
            self._health = self._serve_health()
        self.children = [self._start_child() for _ in range(self.processes)]
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
                else:
                    failed |= self._exited(i, child)
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
        if self._health is not None:
            self._health.shutdown()
        if self.metrics is not None:
            self.metrics.stop()
        return 1 if failed else 0

    def _exited(self, i: int, child: _Child) -> bool:
        """Child ``i`` has exited: replace it, unless the worker stops (or drained, in burst
        mode). True when its exit counts as a failure of the whole run."""
        code = child.process.exitcode
        if self.metrics is not None and child.process.pid:
            self.metrics.process_exited(child.process.pid)
        if self.stopping or (self.spec.burst and code == 0):
            self.children[i] = None
            return code not in (0, -signal.SIGTERM, EXIT_RECYCLED)
        if code == EXIT_RECYCLED:
            self._recycled(i, child)
            return False
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
            return False
        self._replace(i)
        return False

    def _recycled(self, i: int, child: _Child) -> None:
        """A child reached a recycling limit and drained: a replacement starts at once (no
        crash pause, nothing counted as a restart)."""
        self.recycles += 1
        recycled = child.note.read()
        log.info(
            "worker process %d (process %d of %d) recycled %s; starting a replacement",
            child.process.pid,
            i + 1,
            self.processes,
            recycled.describe() if recycled is not None else "at a limit",
        )
        if self.metrics is not None:
            self.metrics.recycled(recycled.reason if recycled is not None else "tasks")
        self._replace(i)

    def _replace(self, i: int) -> None:
        """Start child ``i`` anew. SIGTERM may have come while it was forked, after the signal
        handler told the others: then it is told too, and drains with them."""
        child = self.children[i] = self._start_child()
        if self.stop_requested() and child.process.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signal.SIGTERM)

    def _start_child(self) -> _Child:
        """Fork a worker process. Stop signals wait until the child has its own handlers; what
        the supervisor allocated so far is frozen, so no garbage collection in the child writes
        to (and so copies) those shared pages."""
        inherited = [self._health.socket] if self._health is not None else []
        if self.metrics is not None and self.metrics.listener is not None:
            inherited.append(self.metrics.listener)
        with self._fork_lock:
            gc.collect()
            gc.freeze()
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            try:
                return _Child(self.ctx, self.spec, self.log_level, inherited)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

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
            tick = child.tick.value
            if tick and now - tick > stale_after:
                return (
                    False,
                    f"worker process {child.process.pid} has not looped for {now - tick:.0f}s",
                )
        return True, f"{sum(c is not None for c in self.children)} worker process(es) looping"

    def ready(self) -> tuple[bool, str]:
        """Readiness: Redis answers."""
        with self._fork_lock:  # the first probe loads the Redis client: see _fork_lock
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
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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

        try:
            server = ThreadingHTTPServer(("0.0.0.0", self.health_port or 0), Handler)
        except OSError as exc:  # taken since `shoal worker` checked it: one line, not a traceback
            raise ShoalError(
                f"--health-port {self.health_port}: cannot listen there ({exc.strerror or exc}); "
                "stop what uses it or pass another port"
            ) from None
        self.health_port = server.server_address[1]
        threading.Thread(target=server.serve_forever, name="shoal-health", daemon=True).start()
        return server


# --- handing over from `shoal worker` -------------------------------------------------------------

RESUME = "from shoal.supervisor import resume; resume()"


def handover(supervisor: Supervisor) -> NoReturn:
    """Become ``supervisor`` in a fresh interpreter: ``os.execv`` keeps the PID (signals and the
    exit status still reach whoever started ``shoal worker``) and drops everything ``shoal
    worker`` imported to check the task module: the module itself, the Redis client, the CLI.

    The configuration travels in an unlinked temporary file, as it may hold passwords (argv and
    the environment are readable by others, and the environment is passed on to tasks)."""
    import tempfile
    from subprocess import _args_from_interpreter_flags  # type: ignore[attr-defined]

    with tempfile.TemporaryFile() as carrier:
        carrier.write(json.dumps(to_state(supervisor)).encode())
        carrier.flush()
        carrier.seek(0)
        os.set_inheritable(carrier.fileno(), True)
        sys.stdout.flush()
        sys.stderr.flush()
        flags: list[str] = _args_from_interpreter_flags()  # -X, -W, -O, … as this one has
        argv = [sys.executable, *flags, "-c", RESUME, str(carrier.fileno()), *sys.argv[1:]]
        os.execv(sys.executable, argv)
    raise AssertionError("unreachable: execv returns only by raising")


def resume() -> NoReturn:
    """The other side of :func:`handover`: read the configuration, run the supervisor."""
    with open(int(sys.argv[1]), "rb") as carrier:
        supervisor = from_state(json.loads(carrier.read()))
    logs.setup(supervisor.log_level, supervisor.spec.log_format)
    try:
        code = supervisor.run()
    except ShoalError as exc:  # as the `shoal` command reports it: one line, status 2
        sys.stderr.write(f"error: {exc}\n")
        code = 2
    sys.exit(code)


def to_state(supervisor: Supervisor) -> dict[str, Any]:
    """A supervisor's configuration as JSON-able data, with this process's ``sys.argv`` and
    ``sys.path`` (workers see the ones they saw when the supervisor imported the app)."""
    return {
        "argv": sys.argv,
        "path": sys.path,
        "spec": asdict(supervisor.spec),
        "processes": supervisor.processes,
        "settings": asdict(supervisor.settings),
        "health_port": supervisor.health_port,
        "metrics_port": supervisor.metrics_port,
        "log_level": supervisor.log_level,
        "queues": supervisor.queues,
    }


def from_state(state: dict[str, Any]) -> Supervisor:
    """The supervisor :func:`to_state` described; restores ``sys.argv`` and ``sys.path``."""
    sys.argv[:] = state["argv"]
    sys.path[:] = state["path"]
    tuples = {f.name for f in fields(Settings) if isinstance(f.default, tuple)}
    values: dict[str, Any] = {
        k: tuple(v) if k in tuples else v for k, v in state["settings"].items()
    }
    return Supervisor(
        WorkerSpec(**state["spec"]),
        processes=state["processes"],
        settings=Settings(**values),
        health_port=state["health_port"],
        metrics_port=state["metrics_port"],
        log_level=state["log_level"],
        queues=state["queues"],
    )
