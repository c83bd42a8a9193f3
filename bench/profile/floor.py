"""The floor under the throughput bench's sync rows: its task body with no queue at all.

    .venv/bin/python bench/profile/floor.py [--tasks 20000] [--runs 3]

Every row of ``bench/throughput`` runs the same body (``throughput/record.py``: one pipelined
round trip of bookkeeping to the bench's Redis) in 2 worker processes on this 2-core machine,
beside the Redis they all use. Here 2 processes run that body in as many threads as Shoal's
sync worker runs, fed from memory instead of from a queue: what no queue can beat on this
machine. Then ``shoal worker --processes 2`` runs the same body on the same private
redis-server, in the same run, from a real queue:

* **no-op**: N tasks, 16 threads a process (Shoal's default ``--concurrency``); tasks/s from
  the tasks' own timestamps (first start to last end), CPU per task of the process trees from
  10 % done to the end (as the throughput bench measures both).
* **600 x 50 ms drain**: 600 tasks that sleep 50 ms, 50 threads a process (the throughput
  bench's I/O set-up); from the moment they are available (the floor's processes, started
  and ready, are told to go; Shoal's warm workers get them in one enqueue_many) to the last
  end. Ideal at 100-way concurrency: 0.30 s.

Not part of the test suite."""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import redis

HERE = Path(__file__).resolve().parent
THROUGHPUT = HERE.parent / "throughput"
sys.path[:0] = [str(HERE), str(THROUGHPUT)]

import record  # noqa: E402

PROCESSES = 2


def serve(count: int, threads: int, sleep: float, run: str) -> None:
    """A floor process: ``threads`` threads run the bench's body ``count`` times in all, from
    the moment the parent says go (both processes ready: no interpreter start-up counted)."""
    numbers = itertools.count()
    lock = threading.Lock()
    go = threading.Event()

    def loop() -> None:
        go.wait()
        while True:
            with lock:
                i = next(numbers)
            if i >= count:
                return
            record.run_sync(run, i, 0.0, sleep)

    pool = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in pool:
        thread.start()
    book = redis.Redis.from_url(record.BOOK_URL)
    book.rpush(f"ready:{run}", os.getpid())
    if book.blpop([f"go:{run}"], timeout=60) is None:
        raise SystemExit(f"{run}: no go within 60 s")
    go.set()
    for thread in pool:
        thread.join()


class Measured:
    """Tasks/s and CPU per task of a set of process trees running ``n`` recorded tasks."""

    def __init__(self, book: redis.Redis, run: str, n: int, roots: list[psutil.Process]) -> None:
        self.book, self.run, self.n, self.roots = book, run, n, roots
        self.key = record.rec_key(run)

    def cpu(self) -> float:
        total = 0.0
        for root in self.roots:
            with_children = [root, *root.children(recursive=True)]
            for proc in with_children:
                try:
                    t = proc.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    continue
        return total

    def wait(self, deadline_s: float = 120) -> tuple[float, float, float]:
        """(tasks/s, CPU ms per task from 10 % done, first start) once all ``n`` ran."""
        end = time.monotonic() + deadline_s
        cpu_at_10 = None
        while (done := int(self.book.llen(self.key))) < self.n:
            if cpu_at_10 is None and done >= self.n // 10:
                cpu_at_10, done_at_10 = self.cpu(), done
            if time.monotonic() > end:
                raise SystemExit(f"{self.run}: only {done} of {self.n} tasks ran in time")
            time.sleep(0.001)
        cpu_end = self.cpu()
        rows = record.parse_records(self.book.lrange(self.key, 0, -1))
        first, last = min(r[2] for r in rows), max(r[3] for r in rows)
        if cpu_at_10 is None:
            raise SystemExit(f"{self.run}: done before 10 % was seen; use more tasks")
        per_task = (cpu_end - cpu_at_10) / (self.n - done_at_10) * 1000
        return self.n / (last - first), per_task, first


def floor_processes(
    book: redis.Redis, run: str, n: int, threads: int, sleep: float
) -> tuple[list[subprocess.Popen[bytes]], float]:
    """Start the floor processes, wait until each is ready, say go; (processes, go time)."""
    share = [n // PROCESSES + (1 if i < n % PROCESSES else 0) for i in range(PROCESSES)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--serve", str(k), str(threads), str(sleep), run],
            env=os.environ.copy(),
        )
        for k in share
    ]
    deadline = time.monotonic() + 60
    while int(book.llen(f"ready:{run}")) < PROCESSES:
        if time.monotonic() > deadline:
            raise SystemExit(f"{run}: the floor processes did not start within 60 s")
        time.sleep(0.01)
    t0 = time.time()
    book.rpush(f"go:{run}", *[1] * PROCESSES)
    return procs, t0


def shoal_worker(concurrency: int) -> subprocess.Popen[bytes]:
    path = os.pathsep.join([str(HERE), str(THROUGHPUT), os.environ.get("PYTHONPATH", "")])
    command = ["shoal", "worker", "floor_tasks:app", "-Q", "floor", "-p", str(PROCESSES)]
    return subprocess.Popen(
        [sys.executable, "-m", *command, "-c", str(concurrency), "--log-level", "WARNING"],
        env={**os.environ, "PYTHONPATH": path},
        start_new_session=True,
    )


def one_run(book: redis.Redis, n: int, k: int) -> dict[str, float]:
    import floor_tasks

    out: dict[str, float] = {}
    # the floor, no-op: as many threads as Shoal's sync worker runs by default
    run = f"floor-noop-{k}"
    procs, _ = floor_processes(book, run, n, 16, 0.0)
    m = Measured(book, run, n, [psutil.Process(p.pid) for p in procs])
    out["floor tasks/s"], out["floor CPU ms/task"], _ = m.wait()
    for p in procs:
        p.wait()
    # Shoal, no-op: the queue filled first, then the worker started on it
    run = f"shoal-noop-{k}"
    for start in range(0, n, 1000):
        batch = [(run, i, 0.0, 0.0) for i in range(start, min(n, start + 1000))]
        floor_tasks.work.enqueue_many(batch)
    worker = shoal_worker(16)
    m = Measured(book, run, n, [psutil.Process(worker.pid)])
    out["shoal tasks/s"], out["shoal CPU ms/task"], _ = m.wait()
    stop(worker)
    # the floor, 600 x 50 ms: from the go to the last end
    run = f"floor-io-{k}"
    procs, t0 = floor_processes(book, run, 600, 50, 0.05)
    Measured(book, run, 600, []).wait()
    rows = record.parse_records(book.lrange(record.rec_key(run), 0, -1))
    out["floor drain s"] = max(r[3] for r in rows) - t0
    for p in procs:
        p.wait()
    # Shoal, 600 x 50 ms: warm workers, then one enqueue_many of 600
    worker = shoal_worker(50)
    warm = f"warm-{k}"
    floor_tasks.work.enqueue_many([(warm, i, 0.0, 0.01) for i in range(200)])
    Measured(book, warm, 200, []).wait()
    time.sleep(0.5)
    run = f"shoal-io-{k}"
    t0 = time.time()
    floor_tasks.work.enqueue_many([(run, i, t0, 0.05) for i in range(600)])
    Measured(book, run, 600, []).wait()
    rows = record.parse_records(book.lrange(record.rec_key(run), 0, -1))
    out["shoal drain s"] = max(r[3] for r in rows) - t0
    stop(worker)
    return out


def stop(worker: subprocess.Popen[bytes]) -> None:
    worker.terminate()
    try:
        worker.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(worker.pid, 9)
        worker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        count, threads, sleep, run = args.serve
        serve(int(count), int(threads), float(sleep), run)
        return
    from shoal.protocol.server import LocalRedis

    with LocalRedis() as server:
        os.environ["SHOAL_REDIS_URL"] = server.url
        os.environ["BENCH_BOOK_URL"] = server.url.rsplit("/", 1)[0] + "/1"
        book = redis.Redis.from_url(os.environ["BENCH_BOOK_URL"])
        runs = [one_run(book, args.tasks, k) for k in range(args.runs)]
    print(f"\nmedian of {args.runs} runs, {args.tasks} no-op tasks, load {os.getloadavg()[0]:.1f}")
    for name in runs[0]:
        values = [r[name] for r in runs]
        shown = ", ".join(f"{v:,.3f}" for v in values)
        print(f"| {name} | {statistics.median(values):,.3f} | ({shown}) |")


if __name__ == "__main__":
    main()
