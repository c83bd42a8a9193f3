"""The bench's Shoal app: a sync and an async no-op task, and the producer the driver calls.

Workers load it as ``shoal worker tasks:app``; the producer process imports it too. Both get
the topology's ``SHOAL_*`` variables, so ``App()`` is configured exactly as a user's would be.
Each task body is the throughput bench's bookkeeping (``record.py``): one pipelined round trip
to the bench's own side-channel Redis (``BENCH_BOOK_URL``), never to the topology under test, so
the verification costs the same on every topology and needs no rights there (ACL user, Cluster
slots).
"""

from __future__ import annotations

from typing import Any

import record
from shoal import App

app = App()

SYNC_QUEUE = "sync"
ASYNC_QUEUE = "async"


@app.task(queue=SYNC_QUEUE)
def noop_sync(run: str, i: int, t_enq: float) -> None:
    """What most users write: a plain function, run on a worker thread."""
    record.run_sync(run, i, t_enq, 0.0)


@app.task(queue=ASYNC_QUEUE)
async def noop_async(run: str, i: int, t_enq: float) -> None:
    """The asyncio flavour, run on the worker's event loop."""
    await record.run_async(run, i, t_enq, 0.0)


TASKS: dict[str, Any] = {"sync": noop_sync, "async": noop_async}


class Producer:
    """The interface the throughput bench's ``driver.py`` actions call (single, bulk, close)."""

    def __init__(self, kind: str) -> None:
        self.task = TASKS[kind]

    def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        """One ``task.enqueue()``: a round trip per task (two with WAIT)."""
        self.task.enqueue(run, i, t_enq)

    def bulk(self, run: str, items: list[tuple[int, float]], sleep: float) -> None:
        """One ``task.enqueue_many()`` for the whole batch: one round trip."""
        self.task.enqueue_many([(run, i, t_enq) for i, t_enq in items])

    def close(self) -> None:
        app.close()
