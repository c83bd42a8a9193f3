"""Bookkeeping done by every benchmark task, inside the peer's worker process.

Each task execution makes exactly ONE pipelined round trip to the bookkeeping database (db 1 on
the benchmark's Redis; the peers use db 0):

* ``HINCRBY bench:exec:<run> <i> 1`` -- how many times task ``i`` of this run executed;
* ``RPUSH bench:rec:<run> "<i> <t_enq> <t_start> <t_end> <pid>"`` -- timings for rates/latency.

``t_start`` is taken on entry to the task body, ``t_end`` after its (optional) sleep, both with
``time.time()``; ``t_enq`` is taken by the producer right before it enqueued the task.

This module only needs ``redis`` (every peer venv has it); sync peers use :func:`run_sync`,
asyncio-native peers use :func:`run_async`.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import redis
import redis.asyncio as aioredis

BOOK_URL = os.environ.get("BENCH_BOOK_URL", "redis://127.0.0.1:6390/1")

_sync_lock = threading.Lock()
_sync_client: tuple[int, redis.Redis] | None = None
_async_clients: dict[int, aioredis.Redis] = {}


def exec_key(run: str) -> str:
    return f"bench:exec:{run}"


def rec_key(run: str) -> str:
    return f"bench:rec:{run}"


def _line(i: int, t_enq: float, t_start: float, t_end: float) -> str:
    return f"{i} {t_enq!r} {t_start!r} {t_end!r} {os.getpid()}"


def _client() -> redis.Redis:
    """One thread-safe client per process (re-created after fork)."""
    global _sync_client
    pid = os.getpid()
    if _sync_client is None or _sync_client[0] != pid:
        with _sync_lock:
            if _sync_client is None or _sync_client[0] != pid:
                _sync_client = (pid, redis.Redis.from_url(BOOK_URL))
    return _sync_client[1]


def run_sync(run: str, i: int, t_enq: float, sleep: float) -> None:
    """Body of a synchronous benchmark task."""
    t_start = time.time()
    if sleep > 0:
        time.sleep(sleep)
    pipe = _client().pipeline(transaction=False)
    pipe.hincrby(exec_key(run), str(i), 1)
    pipe.rpush(rec_key(run), _line(i, t_enq, t_start, time.time()))
    pipe.execute()


def _aclient() -> aioredis.Redis:
    """One asyncio client per running event loop (connections are bound to a loop)."""
    loop_id = id(asyncio.get_running_loop())
    client = _async_clients.get(loop_id)
    if client is None:
        client = aioredis.Redis.from_url(BOOK_URL)
        _async_clients[loop_id] = client
    return client


async def run_async(run: str, i: int, t_enq: float, sleep: float) -> None:
    """Body of an asyncio-native benchmark task."""
    t_start = time.time()
    if sleep > 0:
        await asyncio.sleep(sleep)
    pipe = _aclient().pipeline(transaction=False)
    pipe.hincrby(exec_key(run), str(i), 1)
    pipe.rpush(rec_key(run), _line(i, t_enq, t_start, time.time()))
    await pipe.execute()


def parse_records(raw: list[Any]) -> list[tuple[int, float, float, float, int]]:
    out = []
    for item in raw:
        text = item.decode() if isinstance(item, bytes) else str(item)
        i, t_enq, t_start, t_end, pid = text.split()
        out.append((int(i), float(t_enq), float(t_start), float(t_end), int(pid)))
    return out
