"""Shoal (this project) with sync tasks, as Celery, RQ and Dramatiq users write them: the worker
runs them on its threads. The producer uses the blocking ``enqueue`` / ``enqueue_many``."""

from __future__ import annotations

import otel_sdk
import record
from shoal import App

app = App()  # SHOAL_REDIS_URL is set by the harness


@app.task(queue="bench")
def work(run: str, i: int, t_enq: float, sleep: float) -> None:
    record.run_sync(run, i, t_enq, sleep)


class Producer:
    bulk_api = "task.enqueue_many (one round trip per batch)"
    enqueue_api = "task.enqueue"

    def __init__(self) -> None:
        self.tracer_provider = otel_sdk.producer_provider()

    def close(self) -> None:
        otel_sdk.shutdown(self.tracer_provider)

    def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        work.enqueue(run, i, t_enq, sleep)

    def bulk(self, run: str, items: list[tuple[int, float]], sleep: float) -> None:
        work.enqueue_many([(run, i, t_enq, sleep) for i, t_enq in items])
