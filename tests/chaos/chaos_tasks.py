"""The tasks the chaos drills run in real ``shoal worker chaos_tasks:app`` processes.

Every run is written to the execution ledger (:mod:`chaos_ledger`), so a test can count lost
messages, duplicates and runs of one message that overlapped in time, whatever happened to
Redis meanwhile."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import chaos_ledger

from shoal import App

app = App()

QUEUE = "chaos"
POISON_QUEUE = "poison"
SLICE_S = 0.02
"""Work sleeps in slices this long, so an interruption lands within one slice."""


@app.task(queue=QUEUE, name="chaos.work")
def work(task_id: str, seconds: float) -> None:
    """``seconds`` of (sleeping) work in a thread, recorded from start to end."""
    token = chaos_ledger.started(task_id, seconds)
    outcome = "ok"
    try:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, SLICE_S))
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        chaos_ledger.ended(token, task_id, outcome)


@app.task(queue=QUEUE, name="chaos.work_async")
async def work_async(task_id: str, seconds: float) -> None:
    """The same on the worker's event loop: cancellation is how it is stopped."""
    token = chaos_ledger.started(task_id, seconds)
    outcome = "ok"
    try:
        await asyncio.sleep(seconds)
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        chaos_ledger.ended(token, task_id, outcome)


@app.task(queue=POISON_QUEUE, name="poison.record", min_backoff=0.05, max_backoff=0.1)
def record(task_id: str) -> None:
    """A good message of the poison drill (a poison one must never get here). Quick retries:
    a message wrongly retried shows in its attempt count, not in the drill's length."""
    chaos_ledger.ended(chaos_ledger.started(task_id, 0.0), task_id, "ok")


@app.task(queue=POISON_QUEUE, name="poison.payload", min_backoff=0.05, max_backoff=0.1)
def payload(task_id: str, value: Any) -> None:
    """Takes any JSON value: the deep-nesting poison targets it, so only the depth is wrong."""
    chaos_ledger.ended(chaos_ledger.started(task_id, 0.0), task_id, "ok")
