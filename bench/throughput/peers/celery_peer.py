"""Celery 5 on its Redis broker (kombu); prefork pool for no-op, thread pool for I/O."""

from __future__ import annotations

import os

from celery import Celery, group

import record

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6390/0"))
app.conf.update(
    task_default_queue="bench",
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.work")
def work(run: str, i: int, t_enq: float, sleep: float) -> None:
    record.run_sync(run, i, t_enq, sleep)


class Producer:
    bulk_api = "group().apply_async() (one publish per task)"

    def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        work.apply_async((run, i, t_enq, sleep))

    def bulk(self, run: str, items: list[tuple[int, float]], sleep: float) -> None:
        group(work.s(run, i, t_enq, sleep) for i, t_enq in items).apply_async()
