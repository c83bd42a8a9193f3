"""Where a worker's time goes per task: fetch, decode, dispatch, run, ack, heartbeat, hooks.

    .venv/bin/python bench/profile/breakdown.py [--tasks 20000] [--mode sync|async|both]

One worker in this process drains N pre-filled no-op tasks (concurrency 16 for sync bodies,
64 for async ones, the CLI's and the bench's settings) from a private redis-server, under
cProfile: the event loop's thread and every slot thread get a profiler each, merged. Each
function's own time is put in one stage by its name (``STAGES``); the shares are what matter,
since cProfile itself slows every call. Not part of the test suite."""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("run (the task body)", ("bench_tasks.py",)),
    ("hooks", ("hooks.py", "middleware/")),
    ("decode + admit", ("message.py", "signing.py", "_admit", "orjson.loads")),
    ("fetch", ("_fetch", "parse_fetch", "fetch_call", "Notifications")),
    ("ack", ("_flush_acks", "parse_ack", "ack_call", "_succeeded", "encode_success")),
    ("heartbeat + leases", ("_heartbeat", "_renew", "leases.py", "_watch", "registry.py")),
    (
        "dispatch to a slot thread",
        ("execution.py", "queue.py", "_slot", "_run_in_slot", "_count_slot", "SimpleQueue"),
    ),
    ("Redis client (redis-py, sockets)", ("redis/", "socket", "hiredis", "select")),
    ("asyncio machinery", ("asyncio/", "_asyncio", "events.py", "base_events", "selector")),
    ("worker bookkeeping", ("worker.py",)),
]


WAITING = {
    "<method 'poll' of 'select.epoll' objects>",
    "<method 'get' of '_queue.SimpleQueue' objects>",
    "<method 'acquire' of '_thread.lock' objects>",
}


def stage_of(filename: str, name: str) -> str:
    where = f"{filename}:{name}"
    for stage, marks in STAGES:
        if any(mark in where for mark in marks):
            return stage
    return "other"


def drain(mode: str, tasks: int) -> tuple[pstats.Stats, int] | None:
    import bench_tasks
    from shoal.execution import SlotThreads
    from shoal.worker import Worker

    thread_cpu: list[float] = []
    serve = SlotThreads._serve

    def timed_serve(self: SlotThreads, slot: int) -> None:
        try:
            serve(self, slot)
        finally:
            thread_cpu.append(time.thread_time())

    SlotThreads._serve = timed_serve  # type: ignore[method-assign]
    task: Any = bench_tasks.sync_noop if mode == "sync" else bench_tasks.async_noop
    for start in range(0, tasks, 1000):
        task.enqueue_many([(i,) for i in range(start, min(tasks, start + 1000))])
    worker = Worker(
        bench_tasks.app, [task.queue], concurrency=16 if mode == "sync" else 64, burst=True
    )
    # cProfile on the loop thread while slot threads hand work back stalls the drain here (seen
    # on Python 3.11): sync bodies get CPU per thread instead, loop thread against slot threads.
    main = cProfile.Profile()
    if mode == "async":
        main.enable()
    loop_cpu = time.thread_time()
    asyncio.run(worker.run())
    loop_cpu = time.thread_time() - loop_cpu
    main.disable()
    for thread in threading.enumerate():  # let the slot threads end and stop their profilers
        if thread.name.startswith("shoal-slot") and thread is not threading.current_thread():
            thread.join(1)
    SlotThreads._serve = serve  # type: ignore[method-assign]
    if mode == "sync":
        print(
            f"\nsync tasks: {worker.processed} processed; CPU per task: event-loop thread "
            f"(fetch, decode, dispatch, ack, heartbeat) {loop_cpu / worker.processed * 1e6:.0f} "
            f"µs, slot threads (hooks, run, queue the ack) "
            f"{sum(thread_cpu) / worker.processed * 1e6:.0f} µs"
        )
        return None
    return pstats.Stats(main), worker.processed


def report(mode: str, stats: pstats.Stats, processed: int) -> None:
    by_stage: dict[str, float] = defaultdict(float)
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, name), (_cc, _nc, own, _cum, _callers) in raw.items():
        if name in WAITING:
            continue  # waiting, not working
        by_stage[stage_of(filename, name)] += own
    total = sum(by_stage.values())
    per_task = total / processed * 1e6
    print(f"\n{mode} tasks: {processed} processed; profiled CPU {per_task:.0f} µs/task")
    print("| stage | share | µs/task (profiled) |\n| --- | ---: | ---: |")
    for stage, seconds in sorted(by_stage.items(), key=lambda kv: -kv[1]):
        print(f"| {stage} | {seconds / total:.0%} | {seconds / processed * 1e6:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--mode", choices=("sync", "async", "both"), default="both")
    args = parser.parse_args()
    from shoal.protocol.server import LocalRedis

    with LocalRedis() as server:
        os.environ["SHOAL_REDIS_URL"] = server.url
        for mode in ("sync", "async") if args.mode == "both" else (args.mode,):
            profiled = drain(mode, args.tasks)
            if profiled is not None:
                report(mode, *profiled)


if __name__ == "__main__":
    main()
