"""Tasks for the tracing tests, run by a real ``shoal worker`` process (``traced_tasks:app``)."""

from __future__ import annotations

import asyncio
import logging

from opentelemetry import trace

from shoal import App

app = App()
log = logging.getLogger("traced_tasks")
tracer = trace.get_tracer("traced_tasks")


@app.task(queue="traced", name="charge", store_result=True)
def charge(order: int) -> int:
    """A sync task that makes a span of its own and logs a line."""
    with tracer.start_as_current_span("call payment provider"):
        log.info("charging order %s", order)
    return order


@app.task(queue="traced", name="notify")
async def notify(order: int) -> None:
    """An async task with a nested span of its own."""
    with tracer.start_as_current_span("render notification"):
        await asyncio.sleep(0)


@app.task(queue="traced", name="flaky", max_retries=1, min_backoff=0.01, max_backoff=0.01)
def flaky(order: int) -> None:
    """Always fails: one retry, then the dead-letter queue."""
    raise ConnectionError(f"provider refused order {order}")
