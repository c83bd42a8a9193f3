"""The throughput bench's sync body as a Shoal task, for ``floor.py``'s Shoal rows."""

from __future__ import annotations

import record
from shoal import App

app = App()  # SHOAL_REDIS_URL is set before this module is imported


@app.task(queue="floor", name="work")
def work(run: str, i: int, t_enq: float, sleep: float) -> None:
    record.run_sync(run, i, t_enq, sleep)
