"""Celery's side of the workflow bench: the same tasks, Redis broker and Redis result backend
(a chord needs one)."""

from __future__ import annotations

import os

from celery import Celery

url = os.environ["BENCH_REDIS_URL"]
app = Celery("wf", broker=url, backend=url)
app.conf.update(
    task_default_queue="wf",
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    result_expires=600,
)


@app.task(name="wf.inc")
def inc(x: int) -> int:
    return x + 1


@app.task(name="wf.total")
def total(values: list[int]) -> int:
    return sum(values)
