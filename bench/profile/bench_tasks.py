"""The no-op tasks the breakdown drains (a module of their own, so their time is one stage)."""

from __future__ import annotations

from shoal import App

app = App()  # SHOAL_REDIS_URL is set before this module is imported


@app.task(queue="profile-sync")
def sync_noop(i: int) -> None:
    return None


@app.task(queue="profile-async")
async def async_noop(i: int) -> None:
    return None
