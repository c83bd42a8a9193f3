"""saq (asyncio) on Redis; ``saq --workers 2``. No batch-enqueue API (``map`` waits for results)."""

from __future__ import annotations

import os
from typing import Any

from saq import Queue

import record

queue = Queue.from_url(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6390/0"), name="bench")


async def work(ctx: dict[str, Any], *, run: str, i: int, t_enq: float, sleep: float) -> None:
    await record.run_async(run, i, t_enq, sleep)


settings = {
    "queue": queue,
    "functions": [work],
    "concurrency": int(os.environ.get("BENCH_CONCURRENCY", "10")),  # saq's default is 10
}


class Producer:
    bulk_api = None

    async def start(self) -> None:
        await queue.connect()

    async def close(self) -> None:
        await queue.disconnect()

    async def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        await queue.enqueue("work", run=run, i=i, t_enq=t_enq, sleep=sleep)
