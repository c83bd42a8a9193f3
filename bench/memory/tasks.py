"""The tiny task module ``bench/memory/run.py`` starts ``shoal worker`` on."""

from __future__ import annotations

import asyncio
import time

from shoal import App

app = App()  # SHOAL_REDIS_URL is set by run.py

QUEUE = "mem"


@app.task(queue=QUEUE)
def noop(i: int) -> int:
    return i


@app.task(queue=QUEUE)
async def anoop(i: int) -> int:
    return i


@app.task(queue=QUEUE)
def io(i: int) -> int:
    time.sleep(0.05)
    return i


@app.task(queue=QUEUE)
async def aio(i: int) -> int:
    await asyncio.sleep(0.05)
    return i
