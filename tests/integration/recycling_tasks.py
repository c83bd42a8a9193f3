"""Tasks the recycling tests run in ``shoal worker`` subprocesses (on PYTHONPATH).

Each execution records, in Redis, the process that ran it and the message's delivery count at
that moment: a message handed back by a recycled process runs on its first delivery (a
handback does not count); one left to its lease's expiry would run on its second."""

from __future__ import annotations

import os

from shoal import App
from shoal.logs import current_task
from shoal.protocol.keys import queue_keys

app = App()
app.broker.redis.ping()  # connected at import: a process's first task is as quick as the rest

QUEUE = "recycling"

_leaked: list[bytearray] = []
"""What ``leak`` keeps: its process grows by ``mib`` per call, as leaky task code does."""


def runs_key(prefix: str) -> str:
    return f"{prefix}:test:recycling:runs"


def pids_key(prefix: str) -> str:
    return f"{prefix}:test:recycling:pids"


def deliveries_key(prefix: str) -> str:
    return f"{prefix}:test:recycling:deliveries"


def _record(task_id: str) -> int:
    ctx = current_task.get()
    assert ctx is not None, "called outside a worker"
    prefix = app.settings.key_prefix
    redis = app.broker.redis
    delivery = redis.hget(queue_keys(prefix, QUEUE).deliveries, ctx.task_id)
    pipe = redis.pipeline(transaction=False)
    pipe.hincrby(runs_key(prefix), task_id, 1)
    pipe.hset(pids_key(prefix), task_id, os.getpid())
    pipe.hset(deliveries_key(prefix), task_id, int(delivery or 0))
    pipe.execute()
    return os.getpid()


@app.task(queue=QUEUE, name="recycling.record")
def record(task_id: str) -> int:
    return _record(task_id)


@app.task(queue=QUEUE, name="recycling.record_async")
async def record_async(task_id: str) -> int:
    return _record(task_id)  # a quick blocking call on the loop: fine for a test


@app.task(queue=QUEUE, name="recycling.leak")
def leak(task_id: str, mib: int) -> int:
    block = bytearray(mib * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not just reserved
    _leaked.append(block)
    return _record(task_id)
