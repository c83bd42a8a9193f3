"""arq (asyncio) on Redis; one worker process per ``arq`` command, no batch-enqueue API."""

from __future__ import annotations

import os
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

import record

REDIS = RedisSettings.from_dsn(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6390/0"))


async def work(ctx: dict[str, Any], run: str, i: int, t_enq: float, sleep: float) -> None:
    await record.run_async(run, i, t_enq, sleep)


# arq logs two INFO lines per job by default; the other peers run at WARNING, so does arq.
LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"stderr": {"class": "logging.StreamHandler", "level": "WARNING"}},
    "loggers": {"arq": {"handlers": ["stderr"], "level": "WARNING"}},
}


class WorkerSettings:
    functions: ClassVar[list[Any]] = [work]
    redis_settings = REDIS
    max_jobs = int(os.environ.get("BENCH_CONCURRENCY", "10"))  # arq's default is 10


class Producer:
    bulk_api = None

    async def start(self) -> None:
        self.pool: ArqRedis = await create_pool(REDIS)

    async def close(self) -> None:
        await self.pool.aclose()

    async def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        await self.pool.enqueue_job("work", run, i, t_enq, sleep)
