"""``shoal demo``: Redis, two worker processes and a few thousand tasks, measured, then cleaned up.

The tasks below are what the workers import (``shoal.demo:app``); ``run_demo`` is the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from shoal.app import App
from shoal.canvas import chord
from shoal.errors import ShoalError
from shoal.protocol.results import decode_result
from shoal.protocol.server import LocalRedis

if TYPE_CHECKING:  # the workers import this module for its tasks: rich only where it prints
    from rich.console import Console

app = App()
QUEUE = "demo"


@app.task(queue=QUEUE, store_result=True, timeout=10)
async def fetch_page(i: int) -> list[float]:
    """An I/O-bound task: waits on a (simulated) 5 ms network call."""
    started = time.time()
    await asyncio.sleep(0.005)
    return [started, time.time()]


@app.task(queue=QUEUE, store_result=True, timeout=10)
def checksum(i: int) -> list[float]:
    """A CPU-bound task, run in a worker thread."""
    started = time.time()
    digest = b"%d" % i
    for _ in range(200):
        digest = hashlib.sha256(digest).digest()
    return [started, time.time()]


@app.task(queue=QUEUE, timeout=10)
def merge(results: list[list[float]]) -> int:
    """A chord callback: runs once, after every member, with their results in order."""
    return len(results)


_seen: set[int] = set()


@app.task(queue=QUEUE, store_result=True, max_retries=2, min_backoff=0.05, timeout=10)
def flaky(i: int) -> list[float]:
    """Fails the first time a process sees it, then succeeds: shows retries with backoff."""
    if i not in _seen:
        _seen.add(i)
        raise ConnectionError("upstream hiccup (the first attempt fails on purpose)")
    return [time.time(), time.time()]


@contextlib.contextmanager
def _redis_url(console: Console) -> Iterator[str]:
    if app.settings.redis_url_source == "SHOAL_REDIS_URL":
        console.print(f"Using Redis from SHOAL_REDIS_URL: {app!r}")
        yield app.settings.redis_url
        return
    with LocalRedis() as server:
        console.print(f"Started redis-server {server.binary} on 127.0.0.1:{server.port}")
        yield server.url


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] if ordered else 0.0


def run_demo(*, tasks: int, processes: int, console: Console) -> None:
    """Enqueue ``tasks`` tasks against ``processes`` workers and print what happened."""
    with _redis_url(console) as url:
        env = {**os.environ, "SHOAL_REDIS_URL": url}
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shoal",
                "worker",
                "shoal.demo:app",
                "--processes",
                str(processes),
                "--concurrency",
                "32",
                "--log-level",
                "ERROR",  # the flaky task's retries are expected: the summary counts them
            ],
            env=env,
        )
        producer = App(url)
        try:
            _wait_for_workers(producer, processes, worker)
            _drive(producer, tasks, console)
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        console.print("Workers stopped; everything the demo started is cleaned up.")


def _wait_for_workers(producer: App, count: int, worker: subprocess.Popen[bytes]) -> None:
    """Block until ``count`` worker processes registered, so latency figures exclude start-up."""
    deadline = time.monotonic() + 60
    while len(producer.broker.workers()) < count:
        if worker.poll() is not None or time.monotonic() > deadline:
            raise ShoalError(f"the demo's workers did not start (exit code {worker.poll()})")
        time.sleep(0.05)


def _drive(producer: App, count: int, console: Console) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )
    from rich.table import Table

    kinds = [producer.remote(t.name, queue=QUEUE) for t in (fetch_page, checksum)]
    flaky_task = producer.remote(flaky.name, queue=QUEUE)
    before = producer.measure(QUEUE)
    sent_at: dict[str, float] = {}
    t0 = time.time()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        sent = progress.add_task("enqueue ", total=count + 10)
        done = progress.add_task("complete", total=count + 10)
        for start in range(0, count, 250):
            kind = kinds[(start // 250) % 2]
            now = time.time()
            for h in kind.enqueue_many([(i,) for i in range(start, min(count, start + 250))]):
                sent_at[h.id] = now
            progress.update(sent, completed=len(sent_at))
        now = time.time()
        for h in flaky_task.enqueue_many([(i,) for i in range(10)]):
            sent_at[h.id] = now
        progress.update(sent, completed=len(sent_at))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            finished = producer.measure(QUEUE).completed - before.completed
            progress.update(done, completed=finished)
            if finished >= len(sent_at):
                break
            time.sleep(0.05)
    elapsed = time.time() - t0
    stats = producer.measure(QUEUE)
    waits = []
    results = producer.broker.stored_results(QUEUE, list(sent_at))
    for message_id, raw in zip(sent_at, results, strict=True):
        result = decode_result(raw) if raw else None
        if result is not None and result.ok:
            waits.append(result.value[0] - sent_at[message_id])
    table = Table(
        title="shoal demo",
        caption=f"{len(sent_at):,} tasks on {QUEUE!r}; enqueue→start: from enqueue returning to "
        "a worker starting the task; throughput: from the first enqueue to the last completion "
        '(README, "Two commands", says what each figure means)',
    )
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_row("tasks completed", f"{stats.completed - before.completed:,} / {len(sent_at):,}")
    table.add_row(
        "retried (flaky task, fails once on purpose)", str(stats.retried - before.retried)
    )
    table.add_row("dead-lettered", str(stats.dead_total - before.dead_total))
    table.add_row("throughput, enqueue to last completion", f"{len(waits) / elapsed:,.0f} tasks/s")
    table.add_row("enqueue→start p50", f"{_percentile(waits, 50) * 1000:.1f} ms")
    table.add_row("enqueue→start p99", f"{_percentile(waits, 99) * 1000:.1f} ms")
    table.add_row(*_chord_row(producer))
    console.print(table)


def _chord_row(producer: App) -> tuple[str, str]:
    """A chord: 100 members in parallel, then one callback with their results (one call)."""
    member = producer.remote(fetch_page.name, queue=QUEUE)
    started = time.perf_counter()
    handle = chord([member.s(i) for i in range(100)], producer.remote(merge.name, queue=QUEUE).s())
    gathered = handle.enqueue().result(timeout=60)
    elapsed_ms = (time.perf_counter() - started) * 1000
    return "chord: 100 members, then a callback", f"{gathered} results in {elapsed_ms:.0f} ms"
