"""taskiq (asyncio) with taskiq-redis's ListQueueBroker (LPUSH/BRPOP, no acknowledgements)."""

from __future__ import annotations

import os

from taskiq_redis import ListQueueBroker

import record

broker = ListQueueBroker(
    url=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6390/0"), queue_name="bench"
)


@broker.task(task_name="work")
async def work(run: str, i: int, t_enq: float, sleep: float) -> None:
    await record.run_async(run, i, t_enq, sleep)


class Producer:
    bulk_api = None

    async def start(self) -> None:
        await broker.startup()

    async def close(self) -> None:
        await broker.shutdown()

    async def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        await work.kiq(run, i, t_enq, sleep)
