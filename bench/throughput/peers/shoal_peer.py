"""Shoal (this project): async tasks, ``shoal worker --processes 2``; ``enqueue_many`` batches."""

from __future__ import annotations

import record
from shoal import App

app = App()  # SHOAL_REDIS_URL is set by the harness


@app.task(queue="bench")
async def work(run: str, i: int, t_enq: float, sleep: float) -> None:
    await record.run_async(run, i, t_enq, sleep)


class Producer:
    bulk_api = "task.enqueue_many (one round trip per batch)"

    def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        work.enqueue(run, i, t_enq, sleep)

    def bulk(self, run: str, items: list[tuple[int, float]], sleep: float) -> None:
        work.enqueue_many([(run, i, t_enq, sleep) for i, t_enq in items])
