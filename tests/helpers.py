"""Helpers the tests import (``from helpers import wait_for``): tests/ is on sys.path."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from shoal.errors import ShoalError
from shoal.message import Message
from shoal.middleware import Middleware
from shoal.protocol.server import LocalRedis
from shoal.task import Task
from shoal.worker import Worker


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    message: str = "condition",
    interval: float = 0.01,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s.

    Returns the truthy value. The short pause between polls is not a wait for a duration: the
    deadline is the only timing, and a condition that holds earlier returns earlier."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")
        time.sleep(interval)


def start_local_redis(port: int | None = None) -> LocalRedis:
    """Start a redis-server of our own; a missing binary fails loudly with the install hint."""
    try:
        server = LocalRedis(port)
    except ShoalError as exc:
        pytest.fail(
            f"redis-server is required for the integration tests: {exc}. "
            "On Debian/Ubuntu: `apt-get install redis-server`; on macOS: `brew install redis`.",
            pytrace=False,
        )
    assert server.port != 6379, "the tests never use the default Redis port"
    return server.start()


class RunningWorker:
    """A Worker running in a thread with its own event loop."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="test-worker", daemon=True)

    def _main(self) -> None:
        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            self._ready.set()
            await self.worker.run()

        try:
            asyncio.run(run())
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    def start(self) -> RunningWorker:
        self.thread.start()
        self._ready.wait(10)
        return self

    def join(self, timeout: float = 30.0) -> Worker:
        """Wait for the worker to return; fail the test if it does not, or if it raised."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            pytest.fail(f"worker {self.worker.id} did not return within {timeout}s")
        if self.error is not None:
            raise AssertionError(f"worker {self.worker.id} crashed: {self.error!r}") from self.error
        return self.worker

    def call(self, fn: Callable[[], Any]) -> None:
        """Run ``fn`` on the worker's event loop thread (as a signal handler would)."""
        assert self._loop is not None, "the worker loop is not running"
        self._loop.call_soon_threadsafe(fn)

    def stop(self, timeout: float = 30.0) -> Worker:
        """Ask the worker to stop (as SIGTERM does) and wait until it has drained."""
        if self.thread.is_alive() and self._loop is not None:
            self._loop.call_soon_threadsafe(self.worker.stop)
        return self.join(timeout)


def shoal_env(redis_url: str, key_prefix: str) -> dict[str, str]:
    """This process's environment without any SHOAL_ variable, pointed at the test Redis and
    key prefix: what a `shoal` command or worker started by a test sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env.update(SHOAL_REDIS_URL=redis_url, SHOAL_KEY_PREFIX=key_prefix)
    return env


def on_a_terminal(
    env: dict[str, str], args: list[str], until: Callable[[str], bool] | None = None
) -> str:
    """Run ``python -m shoal ARGS`` on a pseudo-terminal; what it drew. With ``until``: interrupt
    it (Ctrl-C) once what it drew satisfies ``until``, and expect a clean exit."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
        env=env,
    )
    os.close(follower)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            text = b"".join(chunks).decode(errors="replace")
            if until is not None and until(text):
                proc.send_signal(signal.SIGINT)
                until = None
            ready, _, _ = select.select([leader], [], [], 1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
    out = b"".join(chunks).decode(errors="replace")
    assert proc.returncode == 0, out
    return out


def http_status(url: str) -> int:
    """The HTTP status ``url`` answers with; 0 when nothing answers (not listening yet)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, ConnectionError):
        return 0


class AfterProcessRecorder(Middleware):
    """Middleware that records every ``after_process`` call: (task name, result, exception
    type name or None)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, str | None]] = []

    def after_process(
        self,
        task: Task[Any, Any],
        message: Message,
        *,
        result: Any,
        exception: BaseException | None,
    ) -> None:
        kind = type(exception).__name__ if exception is not None else None
        self.calls.append((task.name, result, kind))
