"""One visit: the measurements of one run on one freshly started topology.

In order (the topology is fresh, the side-channel Redis flushed):

1. ``enqueue``: ``--tasks`` sync no-op tasks enqueued one at a time by one producer thread
   (``task.enqueue()``), workers stopped -> ``enqueue_rate``; then 2 x ``--tasks`` async and
   ``--tasks`` sync ones through ``task.enqueue_many`` in batches of 1,000 -> ``bulk_rate``.
   Each queue now holds 2 x ``--tasks``: a drain long enough for the second worker process's
   start (some 50 ms after the first) not to count.
2. ``async``: ``shoal worker tasks:app --queues async --processes 2 --concurrency 64`` drains
   the async queue -> ``noop_async_rate`` (first task start to last task end).
3. ``sync``: the same with ``--queues sync --concurrency 16`` (the default) drains the sync
   queue -> ``noop_sync_rate``.
4. ``latency``: those workers, now idle and waiting, get a warm-up trickle, then one producer
   enqueues at a steady ``--rate`` for ``--latency-s`` -> ``lat_p50_ms``, ``lat_p99_ms`` of
   (task start - enqueue time), both ``time.time()`` on this machine.

Every drained run is checked to have run exactly once (side-channel counts), and every queue
to be left empty with as many completions as enqueues (``app.measure()``, Shoal's own view).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import redis

import record
from common import Sampler, Workers, percentile
from setups import KEY_PREFIX, Setup
from shoal import App, ShoalError
from topologies import Topology

HERE = Path(__file__).resolve().parent
THROUGHPUT = HERE.parent / "throughput"
LAUNCHER = "import sys; from shoal.cli import main; sys.argv[0] = 'shoal'; sys.exit(main())"
"""How the ``shoal`` console script starts (``shoal.cli:main``), without depending on PATH."""

CONCURRENCY = {"sync": 16, "async": 64}
"""Per worker process: the default 16 threads for sync tasks; 64 coroutines for async ones, as
in the throughput bench."""

Record = tuple[int, float, float, float, int]
"""One task execution: index, enqueue time, start, end, worker pid (``record.py``)."""


class StepError(Exception):
    """Raised when a step cannot finish: a worker died, a deadline passed, a check failed."""


@dataclass(frozen=True)
class Knobs:
    """The sizes of a visit, from the command line."""

    tasks: int = 10_000
    rate: float = 200.0
    latency_s: float = 5.0
    batch: int = 1000
    deadline_s: float = 120.0
    """Longest wait for workers to finish one step."""
    settle_s: float = 1.0
    """Quiet period after the last expected task: late duplicates show up in it."""


@dataclass
class Visit:
    """The steps of one run on one topology; results and exactly-once checks accumulate."""

    setup: Setup
    topology: Topology
    book_url: str
    knobs: Knobs
    log_prefix: Path
    result: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)

    # ---- plumbing -------------------------------------------------------------------------

    @cached_property
    def book(self) -> redis.Redis:
        return redis.Redis.from_url(self.book_url)

    @cached_property
    def app(self) -> App:
        """Shoal's view of the topology, for ``measure()`` (as the same user the workers are)."""
        return App(self.topology.url, key_prefix=KEY_PREFIX, **self.topology.settings)

    def env(self) -> dict[str, str]:
        """What a deployment would set: the topology's ``SHOAL_*`` variables, nothing else."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "PYTHONPATH"))}
        env |= {
            "SHOAL_REDIS_URL": self.topology.url,
            "SHOAL_KEY_PREFIX": KEY_PREFIX,
            **self.topology.env,
            **self.setup.extra_env,
            "BENCH_BOOK_URL": self.book_url,
            "PYTHONPATH": os.pathsep.join([str(HERE), str(THROUGHPUT)]),
            "PYTHONUNBUFFERED": "1",
        }
        return env

    def produce(self, kind: str, action: str, run: str, *extra: str) -> dict[str, Any]:
        """Run ``producer.py`` for one action; its JSON, or StepError with its stderr's tail."""
        argv = [sys.executable, str(HERE / "producer.py"), kind, action, "--run", run, *extra]
        try:
            out = subprocess.run(
                argv,
                env=self.env(),
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=self.knobs.deadline_s + 60,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise StepError(f"producer {kind} {action} timed out") from None
        if out.returncode != 0:
            raise StepError(f"producer {kind} {action} failed: {out.stderr.strip()[-600:]}")
        data: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
        if data.get("error"):
            raise StepError(f"producer {kind} {action}: {data['error']}")
        return data

    def start_workers(self, kind: str) -> Workers:
        """``shoal worker tasks:app --queues KIND --processes 2``, in its own process group."""
        argv = [
            sys.executable, "-c", LAUNCHER, "worker", "tasks:app", "--queues", kind,
            "--processes", "2", "--concurrency", str(CONCURRENCY[kind]),
        ]  # fmt: skip
        prefix = self.log_prefix.with_name(f"{self.log_prefix.name}-{kind}")
        return Workers.start([argv], self.env(), HERE, prefix)

    def executions(self, runs: list[str]) -> int:
        return sum(int(self.book.hlen(record.exec_key(run))) for run in runs)

    def wait_done(self, runs: dict[str, int], workers: Workers) -> None:
        """Wait until every task of ``runs`` (run -> count) ran, then for a quiet period."""
        expected = sum(runs.values())
        deadline = time.monotonic() + self.knobs.deadline_s
        while (done := self.executions(list(runs))) < expected:
            if (why := workers.dead()) is not None:
                raise StepError(why)
            if time.monotonic() > deadline:
                raise StepError(f"{done}/{expected} tasks ran in {self.knobs.deadline_s:.0f} s")
            time.sleep(0.02)
        records = [record.rec_key(run) for run in runs]
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < self.knobs.settle_s:
            now = sum(int(self.book.llen(key)) for key in records)
            if now != last:
                last, quiet_since = now, time.monotonic()
            time.sleep(0.1)

    def verify(self, run: str, n: int) -> list[Record]:
        """Count lost and duplicated tasks of ``run`` (into :attr:`checks`); its records."""
        counts = {int(k): int(v) for k, v in self.book.hgetall(record.exec_key(run)).items()}
        self.checks[run] = {
            "expected": n,
            "lost": sum(1 for i in range(n) if i not in counts),
            "duplicated": sum(1 for c in counts.values() if c > 1),
            "unexpected": sum(1 for i in counts if not 0 <= i < n),
        }
        return record.parse_records(self.book.lrange(record.rec_key(run), 0, -1))

    def check_queue(self, queue: str) -> None:
        """Shoal's own books must balance: nothing waiting, in flight, delayed or dead, and as
        many completions as enqueues. A mismatch is a finding, reported as the step's error."""
        stats = self.app.measure(queue)
        self.result[f"{queue}_queue"] = {
            "enqueued": stats.enqueued,
            "completed": stats.completed,
            "retried": stats.retried,
            "dead": stats.dead_total,
        }
        left = (stats.waiting, stats.in_flight, stats.delayed, stats.dead)
        if any(left) or stats.completed != stats.enqueued:
            raise StepError(
                f"queue {queue}: waiting/in flight/delayed/dead {left}, "
                f"{stats.completed} completed of {stats.enqueued} enqueued"
            )

    def drain(self, kind: str, runs: dict[str, int], workers: Workers) -> float:
        """Wait for ``runs`` to be drained and checked; tasks/s, first start to last end."""
        with Sampler([p.pid for p in workers.procs]) as sampler:
            try:
                self.wait_done(runs, workers)
            finally:
                records = [r for run, n in runs.items() for r in self.verify(run, n)]
        self.check_queue(kind)
        ends = sorted(r[3] for r in records)
        if len(ends) > 10:  # CPU of the worker trees from 10 % done to the end
            k = len(ends) // 10
            cpu_a, cpu_b = sampler.cpu_at(ends[k]), sampler.cpu_at(ends[-1])
            if cpu_a is not None and cpu_b is not None:
                self.result[f"cpu_ms_per_{kind}_task"] = 1000 * (cpu_b - cpu_a) / (len(ends) - k)
        return len(records) / (ends[-1] - min(r[2] for r in records))

    # ---- steps ----------------------------------------------------------------------------

    def drains(self) -> dict[str, dict[str, int]]:
        """What each queue holds after :meth:`step_enqueue`: queue -> {run: tasks}."""
        n = self.knobs.tasks
        return {"async": {"bulk-async": 2 * n}, "sync": {"single": n, "bulk-sync": n}}

    def step_enqueue(self) -> None:
        n = self.knobs.tasks
        single = self.produce("sync", "single", "single", "--n", str(n))
        self.result["enqueue_rate"] = n / single["elapsed"]
        elapsed, count = 0.0, 0
        for kind, run in (("async", "bulk-async"), ("sync", "bulk-sync")):
            size = self.drains()[kind][run]
            args = ("--n", str(size), "--batch", str(self.knobs.batch))
            elapsed += self.produce(kind, "bulk", run, *args)["elapsed"]
            count += size
        self.result["bulk_rate"] = count / elapsed

    def step_async(self) -> None:
        workers = self.start_workers("async")
        try:
            self.result["noop_async_rate"] = self.drain("async", self.drains()["async"], workers)
        finally:
            workers.stop()

    def step_sync_and_latency(self) -> None:
        workers = self.start_workers("sync")
        try:
            self.result["noop_sync_rate"] = self.drain("sync", self.drains()["sync"], workers)
            self.latency(workers)
        finally:
            workers.stop()

    def latency(self, workers: Workers) -> None:
        """Steady enqueues to idle, waiting workers; the delay until each task starts."""
        self.produce("sync", "warm", "warm", "--min-pids", "2")
        n = round(self.knobs.rate * self.knobs.latency_s)
        paced = self.produce(
            "sync", "paced", "paced", "--n", str(n), "--rate", str(self.knobs.rate)
        )
        self.wait_done({"paced": n}, workers)
        records = self.verify("paced", n)
        self.check_queue("sync")
        lat = [1000 * (r[2] - r[1]) for r in records]
        self.result["lat_p50_ms"] = percentile(lat, 50)
        self.result["lat_p99_ms"] = percentile(lat, 99)
        self.result["lat_achieved_rate"] = paced["achieved_rate"]

    def execute(self) -> dict[str, Any]:
        """Run the steps; a failing step is recorded and ends the visit (the next ones need
        its queue drained). Returns the results with checks and errors."""
        self.book.flushall()
        steps = {
            "enqueue": self.step_enqueue,
            "async": self.step_async,
            "sync+latency": self.step_sync_and_latency,
        }
        try:
            for name, step in steps.items():
                try:
                    step()
                except (StepError, ShoalError, redis.RedisError, OSError, ValueError) as exc:
                    self.errors[name] = f"{type(exc).__name__}: {exc}"
                    break
        finally:
            self.app.close()
            self.book.close()
        self.result["lost"] = sum(c["lost"] for c in self.checks.values())
        self.result["duplicated"] = sum(c["duplicated"] for c in self.checks.values())
        self.result["checks"] = self.checks
        self.result["errors"] = self.errors
        return self.result
