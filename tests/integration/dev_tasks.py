"""Tasks for the ``shoal dev`` tests (imported by the worker processes it starts)."""

from __future__ import annotations

import asyncio

from shoal import App

app = App()


@app.task(queue="burst", name="crunch")
async def crunch(i: int) -> None:
    await asyncio.sleep(0.2)
