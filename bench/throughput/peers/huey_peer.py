"""huey on RedisHuey (blocking BRPOP dequeue); no batch-enqueue API."""

from __future__ import annotations

import os

from huey import RedisHuey

import record

huey = RedisHuey("bench", url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6390/0"))


@huey.task()
def work(run: str, i: int, t_enq: float, sleep: float) -> None:
    record.run_sync(run, i, t_enq, sleep)


class Producer:
    bulk_api = None

    def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        work(run, i, t_enq, sleep)
