"""Tasks that misbehave on purpose, for the timeout and hard-timeout tests.

Imported by worker subprocesses (``failure_tasks:app``) and by the tests themselves."""

from __future__ import annotations

import asyncio
import socket
import time

from shoal import App

app = App()


@app.task(queue="runaway", name="spin", timeout=0.3, max_retries=0)
def spin() -> None:
    """A pure-Python busy loop: the soft timeout interrupts it."""
    while True:
        pass


@app.task(queue="runaway", name="sleep_forever", timeout=0.3, max_retries=0)
def sleep_forever() -> None:
    """Blocked in C: only the hard timeout (a new process) frees the slot."""
    time.sleep(3600)


@app.task(queue="runaway", name="read_forever", timeout=0.3, max_retries=0)
def read_forever() -> None:
    """A blocking socket read from a peer that never sends anything."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    client.recv(1)


@app.task(queue="runaway", name="async_hang", timeout=0.3, max_retries=0)
async def async_hang() -> None:
    """An async task awaiting forever: cancelled at its timeout."""
    await asyncio.Event().wait()


@app.task(queue="runaway", name="ok", store_result=True)
def ok(value: int) -> int:
    """A task that works, to show the worker still serves after a runaway one."""
    return value * 2
