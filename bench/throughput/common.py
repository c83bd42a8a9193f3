"""Harness helpers: a private redis-server, worker process groups, resource sampling, stats."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import redis


def free_port() -> int:
    """A free TCP port on 127.0.0.1 that is not Redis' default 6379."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port != 6379:
            return port


@contextlib.contextmanager
def redis_server(log_dir: Path) -> Iterator[int]:
    """Start ``redis-server`` on a free port without persistence; kill it on exit."""
    port = free_port()
    log = (log_dir / "redis-server.log").open("w")
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "yes",
            "--dir",
            str(log_dir),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start (see {log.name})") from None
                time.sleep(0.05)
        client.close()
        yield port
    finally:
        kill_tree([proc])
        log.close()


def kill_tree(procs: Sequence[subprocess.Popen[bytes]], grace: float = 0.0) -> None:
    """Kill every process group started for ``procs`` plus any stray descendants."""
    stray: list[psutil.Process] = []
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            stray.extend(psutil.Process(proc.pid).children(recursive=True))
    sig = signal.SIGTERM if grace > 0 else signal.SIGKILL
    for proc in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # started with start_new_session: pgid == pid
    if grace > 0:
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.05)
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
    for child in stray:
        with contextlib.suppress(psutil.Error):
            child.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


@dataclass
class Workers:
    """The root processes of one peer's workers for one scenario (each in its own group)."""

    procs: list[subprocess.Popen[bytes]]
    logs: list[IO[bytes]]
    log_paths: list[Path]

    @classmethod
    def start(
        cls, cmds: list[list[str]], env: dict[str, str], cwd: Path, log_prefix: Path
    ) -> Workers:
        procs, logs, paths = [], [], []
        for k, cmd in enumerate(cmds):
            path = log_prefix.with_name(f"{log_prefix.name}.w{k}.log")
            log = path.open("wb")
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=env,
                    cwd=cwd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            logs.append(log)
            paths.append(path)
        return cls(procs, logs, paths)

    def dead(self) -> str | None:
        """A description of the first worker root that exited, if any."""
        for proc, path in zip(self.procs, self.log_paths, strict=True):
            if proc.poll() is not None:
                return f"worker exited rc={proc.returncode}: {tail(path)}"
        return None

    def stop(self, grace: float = 0.0) -> None:
        """Kill the process groups; with ``grace``, first SIGTERM the roots only (as a service
        manager would) and give them that long to shut down cleanly."""
        if grace > 0:
            for proc in self.procs:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and any(p.poll() is None for p in self.procs):
                time.sleep(0.05)
        kill_tree(self.procs)
        for log in self.logs:
            log.close()


def tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip()[:200] for line in text[-lines:])


@dataclass
class Sample:
    t: float  # time.time()
    cpu: float  # seconds, whole tree (own + reaped children)
    rss: int  # bytes, sum over live processes of the tree
    procs: int  # live processes in the trees


@dataclass
class Sampler:
    """Samples CPU time and RSS of the worker process trees every ``interval`` seconds."""

    roots: list[int]
    interval: float = 0.02
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _cache: dict[int, psutil.Process] = field(default_factory=dict)

    def _proc(self, pid: int) -> psutil.Process:
        proc = self._cache.get(pid)
        if proc is None:
            proc = self._cache[pid] = psutil.Process(pid)
        return proc

    def sample(self) -> Sample:
        cpu, rss, procs = 0.0, 0, 0
        for root in self.roots:
            try:
                tree = [self._proc(root), *self._proc(root).children(recursive=True)]
            except psutil.Error:
                continue
            for proc in tree:
                try:
                    with proc.oneshot():
                        times = proc.cpu_times()
                        mem = proc.memory_info().rss
                except psutil.Error:
                    continue
                cpu += times.user + times.system + times.children_user + times.children_system
                rss += mem
                procs += 1
        # CPU of the tree only grows; a child that died but is not yet reaped is briefly missing.
        if self.samples:
            cpu = max(cpu, self.samples[-1].cpu)
        return Sample(time.time(), cpu, rss, procs)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def cpu_at(self, t: float) -> float | None:
        """CPU of the first sample taken at or after ``t``."""
        for sample in self.samples:
            if sample.t >= t:
                return sample.cpu
        return None

    def peak_rss(self) -> int:
        return max((s.rss for s in self.samples), default=0)

    def max_procs(self) -> int:
        return max((s.procs for s in self.samples), default=0)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in [0, 100]."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def median_or_none(values: Sequence[Any]) -> Any:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None
