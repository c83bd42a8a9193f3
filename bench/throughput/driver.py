"""Producer side of one benchmark step, run with the PEER's venv python (not the harness's).

    python driver.py PEER ACTION --run RUN --n N [--sleep S] [--rate R] [--batch B]

ACTION is ``single`` (one task at a time), ``bulk`` (the peer's batch API, ``--batch`` tasks per
call), ``paced`` (one at a time at ``--rate`` tasks/s), ``warm`` (a trickle of tasks until the
workers have shown up, see :func:`warm`) or ``body`` (the benchmark task's own body, no queue:
see :func:`body`). Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import inspect
import json
import sys
import time
from typing import Any

import redis

import record


async def call(fn: Any, *args: Any) -> None:
    """Call a producer method that may be sync or async."""
    result = fn(*args)
    if inspect.isawaitable(result):
        await result


async def single(producer: Any, args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    for i in range(args.n):
        await call(producer.single, args.run, i, time.time(), args.sleep)
    return {"n": args.n, "elapsed": time.perf_counter() - t0}


async def bulk(producer: Any, args: argparse.Namespace) -> dict[str, Any]:
    if getattr(producer, "bulk", None) is None:
        return {"n": 0, "elapsed": None, "error": "no batch API"}
    t0 = time.perf_counter()
    for start in range(0, args.n, args.batch):
        now = time.time()
        items = [(i, now) for i in range(start, min(args.n, start + args.batch))]
        await call(producer.bulk, args.run, items, args.sleep)
    return {"n": args.n, "elapsed": time.perf_counter() - t0}


async def paced(producer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Enqueue one at a time on a fixed schedule; report how far behind schedule we fell."""
    t0 = time.perf_counter()
    worst_lag = 0.0
    for i in range(args.n):
        target = t0 + i / args.rate
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        worst_lag = max(worst_lag, time.perf_counter() - target)
        await call(producer.single, args.run, i, time.time(), args.sleep)
    elapsed = time.perf_counter() - t0
    return {
        "n": args.n,
        "elapsed": elapsed,
        "achieved_rate": args.n / elapsed,
        "worst_lag": worst_lag,
    }


async def warm(producer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Trickle tasks (every 50 ms) until ``--min-pids`` distinct worker pids have run one and at
    least one second passed, then wait for all of them to finish. Bounded by ``--max-wait``."""
    book = redis.Redis.from_url(record.BOOK_URL)
    t0 = time.perf_counter()
    deadline = t0 + args.max_wait
    sent = 0
    pids: set[int] = set()
    while time.perf_counter() < deadline:
        await call(producer.single, args.run, sent, time.time(), 0.0)
        sent += 1
        await asyncio.sleep(0.05)
        pids = {r[4] for r in record.parse_records(book.lrange(record.rec_key(args.run), 0, -1))}
        if len(pids) >= args.min_pids and time.perf_counter() - t0 >= 1.0:
            break
    while time.perf_counter() < deadline + 10:
        if book.hlen(record.exec_key(args.run)) >= sent:
            return {"n": sent, "pids": len(pids), "elapsed": time.perf_counter() - t0}
        await asyncio.sleep(0.05)
    return {
        "n": sent,
        "pids": len(pids),
        "elapsed": time.perf_counter() - t0,
        "error": f"warm-up tasks not all executed ({book.hlen(record.exec_key(args.run))}"
        f"/{sent}) within {args.max_wait + 10:.0f}s",
    }


async def body(producer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The CPU of the benchmark task's body alone (its bookkeeping round trip, see
    :mod:`record`), called ``--n`` times in a row in this process with the peer's own redis-py:
    what every worker pays per task whatever the queue, so ``cpu_ms_per_task`` minus this is
    the queue's own cost. Async peers' bodies are the asyncio form, as their tasks are."""
    asynchronous = args.async_body
    for i in range(min(200, args.n)):  # connect and warm up, not counted
        await _body(asynchronous, args.run, i)
    cpu0 = time.process_time()
    for i in range(args.n):
        await _body(asynchronous, args.run, i)
    cpu = time.process_time() - cpu0
    return {"n": args.n, "cpu_ms_per_call": 1000 * cpu / args.n, "async": asynchronous}


async def _body(asynchronous: bool, run: str, i: int) -> None:
    if asynchronous:
        await record.run_async(run, i, time.time(), 0.0)
    else:
        record.run_sync(run, i, time.time(), 0.0)


ACTIONS = {"single": single, "bulk": bulk, "paced": paced, "warm": warm, "body": body}


async def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("peer")
    parser.add_argument("action", choices=sorted(ACTIONS))
    parser.add_argument("--run", required=True)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--min-pids", type=int, default=2)
    parser.add_argument("--max-wait", type=float, default=20.0)
    parser.add_argument("--async-body", action="store_true", help="body: the asyncio form")
    args = parser.parse_args()
    module = importlib.import_module(f"peers.{args.peer}_peer")
    producer = module.Producer()
    if hasattr(producer, "start"):
        await producer.start()
    try:
        result = await ACTIONS[args.action](producer, args)
    finally:
        if hasattr(producer, "close"):
            await call(producer.close)
    result["api"] = getattr(producer, "enqueue_api", None)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
