"""The scenarios, run for one peer at a time against the shared private redis-server.

Per peer and run, in order (Redis is flushed and every worker process killed between steps):

A. enqueue N no-op tasks one at a time (workers stopped) -> ``enqueue_rate``; then start the
   workers and let them drain -> ``noop_rate`` (first task start to last task end, from the
   tasks' own records), ``cpu_ms_per_task`` (worker trees' CPU from 10 % done to 100 % done),
   exactly-once check.
B. enqueue N no-op tasks with the peer's batch API -> ``bulk_rate``; drain and check again.
C. warm workers, enqueue at a steady ``--rate`` for ``--latency-seconds`` from one producer ->
   ``lat_p50_ms``/``lat_p99_ms`` of (task start - enqueue time); exactly-once check.
D. warm I/O-configured workers, enqueue a burst of 600 tasks that sleep 50 ms -> ``io_drain_s``
   (first enqueue to last task end); exactly-once check.
E. call the task body alone (its bookkeeping round trip) N times in one process of the peer's
   venv -> ``body_cpu_ms``; for sync bodies ``queue_cpu_ms_per_task`` is ``cpu_ms_per_task``
   minus it: what the queue itself costs per task, the body every peer runs taken out (an async
   body awaited one at a time costs more than the same body among many: no figure for those).
F. (features rows only, instead of A-E) pre-fill N tasks with the row's feature
   (``BENCH_FEATURE``, see :mod:`features`), drain them -> ``noop_rate``, ``cpu_ms_per_task``,
   ``redis_cpu_ms_per_task`` (the redis-server's CPU over the drain); exactly-once check;
   ``feature_proof``: what Redis shows that the feature was on.

Peak RSS is the largest sum of RSS over the worker process trees seen in A, C and D.

A traced row (``spec.tracing``) runs the same steps with the ``OTEL_*`` variables pointing the
producer and the workers at the harness's OTLP receiver; its workers are stopped with SIGTERM
(then SIGKILL after a grace period) so that they flush their last spans, and the spans received
are counted after the run (``result["tracing"]``). No export at all is an error of the row.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import redis

import record
from common import Sampler, Workers, percentile
from otlp import Receiver
from specs import VENVS, PeerSpec

HERE = Path(__file__).resolve().parent
TRACED_STOP_GRACE = 20.0  # seconds a traced row's workers get to flush their spans on SIGTERM


class ScenarioError(Exception):
    pass


@dataclass
class Settings:
    tasks: int = 20_000
    latency_rate: float = 200.0
    latency_seconds: float = 5.0
    io_tasks: int = 600
    io_sleep: float = 0.05
    batch: int = 1000
    deadline: float = 120.0  # per wait for workers to finish a step
    settle: float = 1.0  # quiet period after the last expected task, to catch duplicates


@dataclass
class Check:
    """Exactly-once accounting of one step."""

    expected: int
    lost: int = 0
    duplicated: int = 0  # tasks executed more than once
    extra_executions: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "expected": self.expected,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "extra_executions": self.extra_executions,
        }


@dataclass
class PeerRun:
    spec: PeerSpec
    port: int
    settings: Settings
    log_dir: Path
    run_id: str
    result: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, Check] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    rss_peaks: list[int] = field(default_factory=list)
    receiver: Receiver | None = None  # the OTLP/HTTP receiver, for a traced row
    executed: int = 0  # task executions seen (warm-ups included), for spans per task

    # ---- plumbing -------------------------------------------------------------------------

    @cached_property
    def book(self) -> redis.Redis:
        return redis.Redis(port=self.port, db=1)

    @property
    def bin(self) -> Path:
        return VENVS / self.spec.venv / "bin"

    def env(self, mode: str) -> dict[str, str]:
        broker = f"redis://127.0.0.1:{self.port}/0"
        pythonpath = [str(HERE), *map(str, self.spec.extra_pythonpath)]
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PYTHON", "VIRTUAL_ENV", "OTEL_", "BENCH_"))
        }
        env.update(self.tracing_env())
        if self.spec.feature is not None:
            env["BENCH_FEATURE"] = self.spec.feature
        env.update(
            BENCH_BROKER_URL=broker,
            BENCH_BOOK_URL=f"redis://127.0.0.1:{self.port}/1",
            BENCH_CONCURRENCY=str(self.spec.concurrency(mode)),
            SHOAL_REDIS_URL=broker,
            PYTHONPATH=os.pathsep.join(pythonpath),
            PYTHONUNBUFFERED="1",
            PYTHONPYCACHEPREFIX=str(VENVS / "_pycache"),  # keep the repo free of __pycache__
            PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        return env

    def tracing_env(self) -> dict[str, str]:
        """What turns tracing on, for the producer and the workers alike: the standard variables
        (Shoal's workers read nothing else) plus ``BENCH_TRACING`` for the bench's own set-up
        of producers and Celery workers (:mod:`otel_sdk`)."""
        fraction = self.spec.tracing
        if fraction is None:
            return {}
        if self.receiver is None:
            raise ScenarioError("a traced row needs the OTLP receiver")
        env = {
            "BENCH_TRACING": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": f"bench-{self.spec.name}",
        }
        if fraction >= 1.0:
            env["OTEL_TRACES_SAMPLER"] = "parentbased_always_on"
        else:
            env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
            env["OTEL_TRACES_SAMPLER_ARG"] = repr(fraction)
        return env

    def stop(self, workers: Workers) -> None:
        workers.stop(grace=TRACED_STOP_GRACE if self.spec.tracing is not None else 0.0)

    def flush(self) -> None:
        self.book.flushall()  # both databases: the peers' (0) and the bookkeeping (1)

    def driver(self, action: str, run: str, *extra: str, timeout: float | None = None) -> dict:
        cmd = [
            str(self.bin / "python"),
            str(HERE / "driver.py"),
            self.spec.module,
            action,
            "--run",
            run,
            *extra,
        ]
        try:
            out = subprocess.run(
                cmd,
                env=self.env("noop"),
                cwd=HERE,
                capture_output=True,
                timeout=timeout or self.settings.deadline + 60,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ScenarioError(f"producer ({action}) timed out after {exc.timeout:.0f}s") from None
        if out.returncode != 0:
            err = out.stderr.decode(errors="replace").strip().splitlines()
            raise ScenarioError(f"producer ({action}) failed: {' | '.join(err[-3:])}")
        data: dict = json.loads(out.stdout.decode().strip().splitlines()[-1])
        if data.get("error"):
            raise ScenarioError(f"producer ({action}): {data['error']}")
        return data

    def start_workers(self, mode: str, step: str) -> Workers:
        token = f"{self.run_id}-{step}"
        broker = f"redis://127.0.0.1:{self.port}/0"
        cmds = [
            [arg.replace("{broker}", broker).replace("{token}", token) for arg in cmd]
            for cmd in self.spec.commands(self.bin, mode)
        ]
        return Workers.start(
            cmds, self.env(mode), HERE, self.log_dir / f"{self.spec.name}-{self.run_id}-{step}"
        )

    def wait_done(self, run: str, n: int, workers: Workers) -> None:
        """Wait until ``n`` distinct tasks of ``run`` executed, then for a quiet period."""
        book = self.book
        deadline = time.monotonic() + self.settings.deadline
        while book.hlen(record.exec_key(run)) < n:
            if (why := workers.dead()) is not None:
                raise ScenarioError(why)
            if time.monotonic() > deadline:
                done = book.hlen(record.exec_key(run))
                raise ScenarioError(
                    f"timeout: {done}/{n} tasks done after {self.settings.deadline:.0f}s"
                )
            time.sleep(0.02)
        # Quiet period: the number of executions must stop changing (late duplicates show here).
        last, quiet_since = book.llen(record.rec_key(run)), time.monotonic()
        hard_stop = quiet_since + max(5.0, 5 * self.settings.settle)
        while time.monotonic() - quiet_since < self.settings.settle:
            if time.monotonic() > hard_stop:
                break
            time.sleep(0.1)
            now = book.llen(record.rec_key(run))
            if now != last:
                last, quiet_since = now, time.monotonic()

    def wait_and_verify(self, step: str, run: str, n: int, workers: Workers) -> None:
        """:meth:`wait_done`, but account for lost/duplicated tasks even when it fails."""
        try:
            self.wait_done(run, n, workers)
        except ScenarioError:
            self.verify(step, run, n)
            raise

    def verify(self, step: str, run: str, n: int) -> list[tuple[int, float, float, float, int]]:
        book = self.book
        counts = {int(k): int(v) for k, v in book.hgetall(record.exec_key(run)).items()}
        check = Check(expected=n)
        check.lost = sum(1 for i in range(n) if i not in counts)
        check.duplicated = sum(1 for c in counts.values() if c > 1)
        check.extra_executions = sum(c - 1 for c in counts.values() if c > 1)
        self.checks[step] = check
        self.executed += sum(counts.values())
        return record.parse_records(book.lrange(record.rec_key(run), 0, -1))

    def warm(self, step: str) -> None:
        warmed = self.driver(
            "warm", f"{self.run_id}-{step}-warm", "--min-pids", "2", "--max-wait", "30", timeout=90
        )
        self.executed += int(warmed.get("n", 0))

    # ---- steps ----------------------------------------------------------------------------

    def noop_count(self) -> int:
        return max(100, int(self.settings.tasks * self.spec.scale))

    def drain_noop(self, step: str, run: str, n: int) -> dict[str, Any]:
        """Start no-op workers on a pre-filled queue; measure rate and CPU; check exactly-once."""
        workers = self.start_workers("noop", step)
        try:
            with Sampler([p.pid for p in workers.procs]) as sampler:
                try:
                    self.wait_and_verify(step, run, n, workers)
                finally:
                    self.rss_peaks.append(sampler.peak_rss())
        finally:
            self.stop(workers)
        records = self.verify(step, run, n)
        starts = [r[2] for r in records]
        ends = sorted(r[3] for r in records)
        out: dict[str, Any] = {
            "rate": n / (ends[-1] - min(starts)),
            "worker_procs": sampler.max_procs(),
        }
        k = len(ends) // 10
        cpu_a, cpu_b = sampler.cpu_at(ends[k]), sampler.cpu_at(ends[-1])
        if cpu_a is not None and cpu_b is not None and len(ends) - 1 > k:
            out["cpu_ms_per_task"] = 1000 * (cpu_b - cpu_a) / (len(ends) - 1 - k)
        return out

    def step_single_and_noop(self) -> None:
        n = self.noop_count()
        run = f"{self.run_id}-A"
        self.flush()
        enq = self.driver("single", run, "--n", str(n))
        self.result["enqueue_rate"] = n / enq["elapsed"]
        self.result["enqueue_api"] = enq.get("api")
        drained = self.drain_noop("A", run, n)
        self.result["noop_rate"] = drained["rate"]
        self.result["noop_tasks"] = n
        self.result["worker_procs"] = drained["worker_procs"]  # processes in the worker trees
        if "cpu_ms_per_task" in drained:
            self.result["cpu_ms_per_task"] = drained["cpu_ms_per_task"]

    def step_bulk(self) -> None:
        if not self.spec.bulk:
            self.result["bulk_rate"] = None
            return
        n = self.noop_count()
        run = f"{self.run_id}-B"
        self.flush()
        enq = self.driver("bulk", run, "--n", str(n), "--batch", str(self.settings.batch))
        self.result["bulk_rate"] = n / enq["elapsed"]
        self.result["noop_rate_after_bulk"] = self.drain_noop("B", run, n)["rate"]

    def step_latency(self) -> None:
        s = self.settings
        n = int(s.latency_rate * s.latency_seconds)
        run = f"{self.run_id}-C"
        self.flush()
        workers = self.start_workers("noop", "C")
        try:
            with Sampler([p.pid for p in workers.procs], interval=0.1) as sampler:
                try:
                    self.warm("C")
                    paced = self.driver("paced", run, "--n", str(n), "--rate", str(s.latency_rate))
                    self.wait_and_verify("C", run, n, workers)
                finally:
                    self.rss_peaks.append(sampler.peak_rss())
        finally:
            self.stop(workers)
        records = self.verify("C", run, n)
        lat = [1000 * (r[2] - r[1]) for r in records]
        self.result["lat_p50_ms"] = percentile(lat, 50)
        self.result["lat_p99_ms"] = percentile(lat, 99)
        self.result["lat_achieved_rate"] = paced["achieved_rate"]

    def step_io(self) -> None:
        s = self.settings
        run = f"{self.run_id}-D"
        self.flush()
        workers = self.start_workers("io", "D")
        try:
            with Sampler([p.pid for p in workers.procs], interval=0.1) as sampler:
                try:
                    self.warm("D")
                    action = ["bulk", "--batch", str(s.io_tasks)] if self.spec.bulk else ["single"]
                    self.driver(
                        action[0],
                        run,
                        "--n",
                        str(s.io_tasks),
                        "--sleep",
                        str(s.io_sleep),
                        *action[1:],
                    )
                    self.wait_and_verify("D", run, s.io_tasks, workers)
                finally:
                    self.rss_peaks.append(sampler.peak_rss())
        finally:
            self.stop(workers)
        records = self.verify("D", run, s.io_tasks)
        self.result["io_drain_s"] = max(r[3] for r in records) - min(r[1] for r in records)

    def step_features(self) -> None:
        n = self.noop_count()
        run = f"{self.run_id}-F"
        self.flush()
        enq = self.driver("bulk", run, "--n", str(n), "--batch", str(self.settings.batch))
        self.result["bulk_rate"] = n / enq["elapsed"]
        proof = self.feature_proof(before_drain=True)
        redis_cpu = self.redis_cpu_s()
        drained = self.drain_noop("F", run, n)
        # Redis's own CPU (the Lua scripts: fetch.lua's clock and priority paths, throttle.lua)
        # from the workers' start to the end of the quiet period; the bookkeeping round trips
        # and the harness's polling are the same in every row.
        self.result["redis_cpu_ms_per_task"] = 1000 * (self.redis_cpu_s() - redis_cpu) / n
        self.result["noop_rate"] = drained["rate"]
        self.result["noop_tasks"] = n
        self.result["worker_procs"] = drained["worker_procs"]
        if "cpu_ms_per_task" in drained:
            self.result["cpu_ms_per_task"] = drained["cpu_ms_per_task"]
        proof.update(self.feature_proof(before_drain=False))
        self.result["feature_proof"] = proof
        from features import expected_proof

        assert self.spec.feature is not None
        wanted = expected_proof(self.spec.feature, n)
        wrong = {k: (proof[k], v) for k, v in wanted.items() if proof[k] != v}
        if wrong:
            self.errors["feature"] = "not as configured: " + ", ".join(
                f"{k}={got!r} (expected {want!r})" for k, (got, want) in wrong.items()
            )

    def redis_cpu_s(self) -> float:
        """CPU seconds the redis-server has used (user + system), from ``INFO cpu``."""
        info = self.book.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def feature_proof(self, before_drain: bool) -> dict[str, Any]:
        """What Redis (db 0, Shoal's default key prefix) shows of the row's feature: before the
        drain the prioritized messages and a sample of envelopes, after it the rate clocks, the
        queue's config and the progress reports."""
        r = redis.Redis(port=self.port, db=0)
        base = "shoal:{bench}:"
        if before_drain:
            sample = r.hrandfield(base + "messages", 20, withvalues=True) or []
            bodies = sample[1::2]
            return {
                "ready_before_drain": r.zcard(base + "ready"),
                "expires_in_sample": bool(bodies) and all(b"expires_at" in b for b in bodies),
            }
        return {
            "queue_rate_config": r.hget(base + "config", "rate_limit") is not None,
            "queue_clock": r.hexists(base + "rate", "queue"),
            "task_clock": r.hexists(base + "rate", "task:work"),
            "progress_reports": sum(1 for _ in r.scan_iter(base + "progress:*", count=1000)),
        }

    def count_spans(self, receiver: Receiver) -> None:
        """What reached the receiver during this run; a traced row that exported nothing, or
        traced only one side, did not measure what it claims to."""
        got: dict[str, Any] = receiver.take()
        got["executed"] = self.executed
        got["consumer_per_task"] = got["consumer"] / self.executed if self.executed else None
        self.result["tracing"] = got
        if got["exports"] == 0:
            self.errors["tracing"] = "no OTLP export received: tracing was not on"
        elif not got["producer"] or not got["consumer"]:
            self.errors["tracing"] = (
                f"spans from one side only (producer {got['producer']}, consumer {got['consumer']})"
            )

    def step_body(self) -> None:
        run = f"{self.run_id}-E"
        self.flush()
        extra = ["--async-body"] if self.spec.async_tasks else []
        measured = self.driver("body", run, "--n", str(min(self.noop_count(), 5000)), *extra)
        self.result["body_cpu_ms"] = measured["cpu_ms_per_call"]
        cpu = self.result.get("cpu_ms_per_task")
        # An async body awaited one at a time pays an event-loop wake-up per call that a worker
        # running many at once shares out: subtracting it would understate the queue's cost.
        if cpu is not None and not self.spec.async_tasks:
            self.result["queue_cpu_ms_per_task"] = cpu - measured["cpu_ms_per_call"]

    def execute(self) -> dict[str, Any]:
        steps = [
            ("A", self.step_single_and_noop),
            ("B", self.step_bulk),
            ("C", self.step_latency),
            ("D", self.step_io),
            ("E", self.step_body),
        ]
        if self.spec.feature is not None:
            steps = [("F", self.step_features)]
        for name, step in steps:
            try:
                step()
            except ScenarioError as exc:
                self.errors[name] = str(exc)
            except (redis.RedisError, OSError, ValueError, KeyError, json.JSONDecodeError) as exc:
                self.errors[name] = f"{type(exc).__name__}: {exc}"
            if (
                name == "A"
                and "A" in self.errors
                and self.book.hlen(record.exec_key(f"{self.run_id}-A")) == 0
            ):
                self.errors["B-D"] = "skipped: no task ran in step A"
                break
        self.result["peak_rss_mb"] = max(self.rss_peaks) / 2**20 if self.rss_peaks else None
        if self.receiver is not None and self.spec.tracing is not None:
            self.count_spans(self.receiver)
        self.result["lost"] = sum(c.lost for c in self.checks.values())
        self.result["duplicated"] = sum(c.duplicated for c in self.checks.values())
        self.result["checks"] = {k: c.as_dict() for k, c in self.checks.items()}
        self.result["errors"] = self.errors
        return self.result
