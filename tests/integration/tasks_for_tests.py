"""Tasks the process-level tests run in ``shoal worker`` subprocesses (on PYTHONPATH).

Each execution is recorded in Redis, so the test process can count runs per message:
``HINCRBY {prefix}:test:runs <task_id> 1`` once the task has finished its work."""

from __future__ import annotations

import multiprocessing
import os
import time

from shoal import App

app = App()

if os.environ.get("TEST_WORKER_BOOT_S") and multiprocessing.parent_process() is not None:
    time.sleep(float(os.environ["TEST_WORKER_BOOT_S"]))  # a worker process's slow import


def runs_key(prefix: str) -> str:
    return f"{prefix}:test:runs"


def started_key(prefix: str) -> str:
    return f"{prefix}:test:started"


def _record(key: str, task_id: str) -> None:
    app.broker.redis.hincrby(key, task_id, 1)


@app.task(queue="delivery", name="slow")
def slow(task_id: str, seconds: float) -> int:
    """Sleep (a stand-in for real work), then record that this message ran to completion."""
    _record(started_key(app.settings.key_prefix), task_id)
    time.sleep(seconds)
    _record(runs_key(app.settings.key_prefix), task_id)
    return os.getpid()


@app.task(queue="delivery", name="record")
def record(task_id: str) -> int:
    _record(runs_key(app.settings.key_prefix), task_id)
    return os.getpid()


@app.task(queue="workflows", name="wf_square")
def wf_square(task_id: str, n: int, seconds: float) -> int:
    """A chord member: slow enough to be caught in flight by a SIGKILL."""
    time.sleep(seconds)
    _record(runs_key(app.settings.key_prefix), task_id)
    return n * n


@app.task(queue="workflows", name="wf_total")
def wf_total(squares: list[int], task_id: str) -> int:
    """A chord callback: records each run, so a test can prove it ran exactly once."""
    _record(runs_key(app.settings.key_prefix), task_id)
    return sum(squares)
