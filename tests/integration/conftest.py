"""Fixtures for the integration tests; the helpers live in ``processes.py``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from processes import WorkerProcess, worker_env

from shoal import App


@pytest.fixture
def worker_process(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """``worker_process(redis_url, "--processes", "1", SHOAL_LEASE="2")`` starts a supervisor
    (of ``tasks_for_tests:app``, or of ``app_spec=``)."""
    started: list[WorkerProcess] = []

    def start(
        redis_url: str, *args: str, app_spec: str = "tasks_for_tests:app", **env: str
    ) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        proc = WorkerProcess(list(args), worker_env(redis_url, **env), log_path, app_spec)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.kill()


@pytest.fixture
def producer(redis_url: str) -> Iterator[App]:
    """An App that enqueues the tasks of a worker subprocess by name, under the ``shoal``
    prefix (this process never imports their module)."""
    app = App(redis_url=redis_url, key_prefix="shoal")
    try:
        yield app
    finally:
        app.close()
