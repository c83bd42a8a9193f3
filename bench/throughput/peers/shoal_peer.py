"""Shoal (this project): async tasks, ``shoal worker --processes 2``; ``enqueue_many`` batches.

One at a time, the producer awaits ``enqueue_async`` when the runtime has one (an asyncio app
would), else it calls the blocking ``enqueue``; ``Producer.enqueue_api`` says which.
"""

from __future__ import annotations

from typing import Any

import otel_sdk
import record
from shoal import App

app = App()  # SHOAL_REDIS_URL is set by the harness


@app.task(queue="bench")
async def work(run: str, i: int, t_enq: float, sleep: float) -> None:
    await record.run_async(run, i, t_enq, sleep)


_enqueue_async: Any = getattr(work, "enqueue_async", None)


class Producer:
    bulk_api = "task.enqueue_many (one round trip per batch)"
    enqueue_api = (
        "task.enqueue_async" if _enqueue_async else "task.enqueue (the runtime has no async one)"
    )

    def __init__(self) -> None:
        self.tracer_provider = otel_sdk.producer_provider()

    def close(self) -> None:
        otel_sdk.shutdown(self.tracer_provider)

    def single(self, run: str, i: int, t_enq: float, sleep: float) -> Any:
        """The awaitable of ``enqueue_async`` (the driver awaits it), else ``enqueue``'s handle."""
        if _enqueue_async is not None:
            return _enqueue_async(run, i, t_enq, sleep)
        return work.enqueue(run, i, t_enq, sleep)

    def bulk(self, run: str, items: list[tuple[int, float]], sleep: float) -> None:
        work.enqueue_many([(run, i, t_enq, sleep) for i, t_enq in items])
