"""No-op tasks for the tracing-overhead bench. ``BENCH_WITHOUT_TRACING=1`` builds the App with
no tracing middleware at all: the baseline that "tracing off costs nothing" is measured against."""

from __future__ import annotations

import os

from shoal import App, Retries

app = App(middleware=[Retries()]) if os.environ.get("BENCH_WITHOUT_TRACING") else App()


@app.task(queue="trace-bench", name="noop")
async def noop(i: int) -> None:
    return None


@app.task(queue="trace-bench", name="noop-sync")
def noop_sync(i: int) -> None:
    """The same in a slot thread (``run.py --sync``)."""
    return None
