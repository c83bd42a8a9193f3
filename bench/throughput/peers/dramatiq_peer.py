"""Dramatiq on its RedisBroker (processes x threads)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

import record

broker = RedisBroker(url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6390/0"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench", max_retries=0)
def work(run: str, i: int, t_enq: float, sleep: float) -> None:
    record.run_sync(run, i, t_enq, sleep)


class Producer:
    bulk_api = "group().run() (one enqueue per message)"

    def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        work.send(run, i, t_enq, sleep)

    def bulk(self, run: str, items: list[tuple[int, float]], sleep: float) -> None:
        dramatiq.group(work.message(run, i, t_enq, sleep) for i, t_enq in items).run()
