"""Tasks of the flow- and task-control tests, run by ``shoal worker control_tasks:app``.

Each run is recorded in Redis (``{prefix}:test:ran``, a LIST of task ids in start order) so the
test process sees what ran, and in which order, whatever process ran it."""

from __future__ import annotations

import asyncio
import time

from shoal import App, progress

app = App()


def ran_key(prefix: str) -> str:
    return f"{prefix}:test:ran"


def _ran(task_id: str) -> None:
    app.broker.redis.rpush(ran_key(app.settings.key_prefix), task_id)


@app.task(queue="control", name="note")
def note(task_id: str) -> None:
    _ran(task_id)


@app.task(queue="control", name="sleepy", store_result=True, timeout=60)
def sleepy(task_id: str, steps: int) -> str:
    """A sync task that reports progress each step, then records that it finished."""
    for step in range(steps):
        progress(step, steps, note=f"step {step}")
        time.sleep(0.05)
    _ran(task_id)
    return "done"


@app.task(queue="control", name="sleepy_async", store_result=True, timeout=60)
async def sleepy_async(task_id: str, steps: int) -> str:
    for step in range(steps):
        progress(step, steps)
        await asyncio.sleep(0.05)
    _ran(task_id)
    return "done"


def starts_key(prefix: str) -> str:
    return f"{prefix}:test:starts"


def _started(task_id: str) -> None:
    """Record the start, with Redis's clock (one clock for every worker process)."""
    seconds, micros = app.broker.redis.time()
    stamp = f"{seconds}.{micros:06d}"
    app.broker.redis.rpush(starts_key(app.settings.key_prefix), f"{task_id} {stamp}")


@app.task(queue="control", name="limited", rate_limit="20/s")
def limited(task_id: str) -> None:
    _started(task_id)


@app.task(queue="control", name="unlimited")
def unlimited(task_id: str) -> None:
    _started(task_id)


@app.task(queue="metered", name="metered")
def metered(task_id: str) -> None:
    _started(task_id)


@app.task(queue="ranked", name="ranked")
def ranked(task_id: str) -> None:
    _ran(task_id)
