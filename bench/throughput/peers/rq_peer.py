"""RQ on Redis: ``Worker`` (forks a work horse per job) or ``SimpleWorker`` (in-process)."""

from __future__ import annotations

import os

from redis import Redis
from rq import Queue

import record


def work(run: str, i: int, t_enq: float, sleep: float) -> None:
    record.run_sync(run, i, t_enq, sleep)


class Producer:
    bulk_api = "Queue.enqueue_many (one pipeline)"

    def __init__(self) -> None:
        url = os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6390/0")
        self.queue = Queue("bench", connection=Redis.from_url(url))

    def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        self.queue.enqueue(work, run, i, t_enq, sleep)

    def bulk(self, run: str, items: list[tuple[int, float]], sleep: float) -> None:
        self.queue.enqueue_many(
            [Queue.prepare_data(work, (run, i, t_enq, sleep)) for i, t_enq in items]
        )
