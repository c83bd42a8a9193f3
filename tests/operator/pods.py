"""What a kubelet would run for a Worker's pods in these tests: `shoal worker` processes on the
test Redis, and stopping a process as Kubernetes does (SIGTERM, then SIGKILL after a grace)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from helpers import shoal_env


def stop(proc: subprocess.Popen[bytes], grace_s: float = 20) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``grace_s``."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@contextlib.contextmanager
def worker_pod(
    tmp_path: Path, redis_url: str, key_prefix: str, module: str, source: str, queue: str
) -> Iterator[None]:
    """`shoal worker MODULE:app --queues QUEUE` with ``source`` written to ``MODULE.py``; its
    output goes to ``worker.log`` in ``tmp_path``."""
    (tmp_path / f"{module}.py").write_text(source)
    env = shoal_env(redis_url, key_prefix)
    env["PYTHONPATH"] = str(tmp_path)
    with (tmp_path / "worker.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "shoal", "worker", f"{module}:app", "--queues", queue],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield
        finally:
            stop(proc)
