"""Every task has a timeout: runaway sync loops, calls blocked in C, and hung coroutines stop,
count as failures, and the worker keeps serving."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import failure_tasks
import orjson
import psutil
import pytest
from processes import worker_env

from helpers import wait_for
from shoal import App


@pytest.fixture
def runaway_app(redis_url: str, key_prefix: str) -> Iterator[App]:
    app = failure_tasks.app
    app.settings = app.settings.with_overrides(redis_url=redis_url, key_prefix=key_prefix)
    app.close()
    yield app
    app.close()


def live_children(pid: int) -> set[int]:
    """Worker processes of a supervisor: running, and not multiprocessing's resource tracker."""
    pids = set()
    for child in psutil.Process(pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(
                child.cmdline()
            ):
                pids.add(child.pid)
        except psutil.Error:
            continue
    return pids


def dead_reasons(app: App) -> dict[str, tuple[str, str]]:
    return {e.task or "": (e.reason, e.exception_type) for e in app.dlq("runaway").entries()}


@pytest.mark.parametrize("task_name", ["spin", "async_hang"])
def test_soft_timeouts_stop_the_task_in_process(
    runaway_app: App, worker: Any, task_name: str
) -> None:
    runaway_app.tasks[task_name].enqueue()
    done = runaway_app.tasks["ok"].enqueue(21)
    worker(runaway_app, ["runaway"], concurrency=1)
    assert dead_reasons(runaway_app) == {task_name: ("retries_exhausted", "TaskTimeout")}
    assert done.result(timeout=5) == 42


def test_calls_blocked_in_c_get_a_hard_timeout_and_a_new_process(
    runaway_app: App, tmp_path: Path
) -> None:
    # Given a worker process whose only slot will be stuck in C code
    env = worker_env(
        runaway_app.settings.redis_url,
        SHOAL_KEY_PREFIX=runaway_app.settings.key_prefix,
        SHOAL_HARD_TIMEOUT_GRACE="0.5",
    )
    env["PYTHONPATH"] = f"{Path(__file__).parent}:{env['PYTHONPATH']}"
    log = (tmp_path / "worker.log").open("wb")
    supervisor = subprocess.Popen(
        [sys.executable, "-m", "shoal", "worker", "failure_tasks:app", "-c", "1"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        first_pids = wait_for(lambda: live_children(supervisor.pid), message="a child")
        # When a sleeping task and a blocking socket read overrun their timeouts
        runaway_app.tasks["sleep_forever"].enqueue()
        runaway_app.tasks["read_forever"].enqueue()
        wait_for(
            lambda: len(dead_reasons(runaway_app)) == 2,
            timeout=30,
            message="both runaway tasks dead-lettered",
        )
        # Then both failed by hard timeout, and the stuck processes were replaced
        assert dead_reasons(runaway_app) == {
            "sleep_forever": ("retries_exhausted", "HardTimeout"),
            "read_forever": ("retries_exhausted", "HardTimeout"),
        }
        wait_for(
            lambda: live_children(supervisor.pid) - first_pids,
            message="a replacement worker process",
        )
        # And the worker still serves
        assert runaway_app.tasks["ok"].enqueue(5).result(timeout=20) == 10
        assert supervisor.poll() is None
    finally:
        supervisor.terminate()
        supervisor.wait(30)
        log.close()
    assert b"will be replaced" in (tmp_path / "worker.log").read_bytes()


def test_message_timeout_overrides_the_task_timeout(runaway_app: App, worker: Any) -> None:
    handle = runaway_app.tasks["async_hang"].with_options(timeout=0.05).enqueue()
    worker(runaway_app, ["runaway"], concurrency=1)
    raw = runaway_app.broker.redis.hget(runaway_app.broker.keys("runaway").dead_entries, handle.id)
    assert raw is not None
    assert "0.05s timeout" in orjson.loads(raw)["error"]
