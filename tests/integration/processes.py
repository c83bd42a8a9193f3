"""Process-level helpers: ``shoal worker`` subprocesses on the test Redis, killed by PID.

Imported by the integration tests as ``from processes import ...`` (this directory is on
sys.path)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import psutil
import redis

HERE = Path(__file__).parent


class WorkerProcess:
    """A ``python -m shoal worker tasks_for_tests:app`` supervisor and its children (another
    app with ``app_spec``). ``wrapper`` runs it through a command that execs it in place
    (``ip netns exec NS``), so ``pid`` is still the supervisor's. It leads a process group
    of its own, which its worker processes join as they are forked."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        app_spec: str = "tasks_for_tests:app",
        wrapper: Sequence[str] = (),
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            [*wrapper, sys.executable, "-m", "shoal", "worker", app_spec, *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def children(self) -> list[psutil.Process]:
        """The worker processes (multiprocessing's helpers excluded)."""
        try:
            kids = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        return [k for k in kids if _is_worker(k)]

    def child_pids(self) -> set[int]:
        return {k.pid for k in self.children()}

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL the supervisor and everything it started: its whole process group at once,
        so a worker process forked as the supervisor dies (a replacement, a recycle) cannot
        outlive it and take the next test's tasks from the same Redis."""
        procs = []
        if self.popen.poll() is None:  # (once reaped, its pid may be another process's)
            with contextlib.suppress(psutil.NoSuchProcess):
                supervisor = psutil.Process(self.pid)
                procs = [supervisor, *supervisor.children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        for proc in procs:  # any that left the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(10)
        psutil.wait_procs(procs, timeout=10)
        self._log.close()


def _is_worker(proc: psutil.Process) -> bool:
    """A worker process: forked by the supervisor, it names itself ``shoal-worker`` (its
    ``comm``, what ``ps`` and ``top`` show). Matched on that name, not on "any child": right
    after the fork, before the rename, a child is not yet a worker that serves."""
    try:
        return proc.name() == "shoal-worker"
    except psutil.Error:
        return False


def worker_env(
    redis_url: str, topology_env: Mapping[str, str] | None = None, **extra: str
) -> dict[str, str]:
    """This process's environment without its ``SHOAL_*``, then ``SHOAL_REDIS_URL``, the
    topology's ``SHOAL_*`` (``topology.env``: passwords, TLS files) and ``extra``, in that
    order of precedence (``extra`` wins)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env["SHOAL_REDIS_URL"] = redis_url
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.update(topology_env or {})
    env.update(extra)
    return env


def runs(client: redis.Redis, prefix: str = "shoal") -> dict[str, int]:
    """Completed executions per task id, as recorded by tasks_for_tests."""
    raw = client.hgetall(f"{prefix}:test:runs")
    return {k.decode(): int(v) for k, v in raw.items()}


@contextlib.contextmanager
def shoal_dev(
    manifest: Path, redis_url: str, log: Path, topology_env: Mapping[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """``shoal dev -f MANIFEST`` against the test Redis (with the topology's ``SHOAL_*``), its
    output in ``log``; stopped (as Ctrl-C would: SIGTERM, then waited for) when the block ends."""
    with log.open("wb") as out:
        dev = subprocess.Popen(
            [sys.executable, "-m", "shoal", "dev", "-f", str(manifest), "--redis-url", redis_url],
            env=worker_env(redis_url, topology_env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield dev
    finally:
        dev.terminate()
        dev.wait(60)
