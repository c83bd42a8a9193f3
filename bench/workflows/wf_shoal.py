"""Shoal's side of the workflow bench: three no-op tasks (run by ``shoal worker wf_shoal``)."""

from __future__ import annotations

from shoal import App

app = App()


@app.task(queue="wf")
async def inc(x: int) -> int:
    return x + 1


@app.task(queue="wf")
async def total(values: list[int]) -> int:
    return sum(values)
