"""Tracing overhead: no-op task throughput with tracing off, on (100 % and 10 % sampled, batch
OTLP/HTTP export to a local receiver), and without the tracing middleware at all, in the same run.
At 10 %, the messages come from an untraced producer (each consumer span a root, sampled by
trace id) and, in the last row, from a producer tracing at 10 % too (90 % of the messages carry
a ``traceparent`` that is not sampled): what the README's throughput bench does.

    python bench/tracing/run.py [--tasks 20000] [--runs 3] [--sync]

Each configuration drains the same pre-filled queue with ``shoal worker --processes 2
--concurrency 64 --burst``; throughput is counted from the first to the last completion seen in
Redis (start-up excluded). The worker's CPU per task (its processes' user + system time, less
what the same worker spends starting and stopping on an empty queue, measured right after) is
far less disturbed by other jobs on a shared machine than tasks/s. The
receiver counts the spans it got, so a configuration that dropped spans shows it. Not part of
the test suite."""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from receiver import Receiver  # noqa: E402

from shoal import App, Retries  # noqa: E402
from shoal.middleware.tracing import Tracing  # noqa: E402
from shoal.protocol.server import LocalRedis  # noqa: E402

QUEUE = "trace-bench"
PRODUCER_TRACED = "BENCH_PRODUCER_TRACED"


def traced_producer(url: str) -> App:
    """A producer tracing at 10 % (``parentbased_traceidratio``, its spans not exported): each
    batch of 100 is one trace, sampled or not, and every message carries its ``traceparent``."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.sampling import ParentBasedTraceIdRatio

    provider = TracerProvider(sampler=ParentBasedTraceIdRatio(0.1))
    return App(url, middleware=[Retries(), Tracing(tracer_provider=provider)])


def _children_cpu_s() -> float:
    """CPU of every process this one waited for (the supervisor waits for its workers)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def start_worker(url: str, env: dict[str, str], sync: bool) -> subprocess.Popen[bytes]:
    pythonpath = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "shoal",
            "worker",
            "tasks:app",
            "-Q",
            QUEUE,
            "-p",
            "2",
            "-c",
            "16" if sync else "64",  # the CLI's default for def tasks; the bench's for async
            "--burst",
            "--log-level",
            "WARNING",
        ],
        env={**os.environ, "SHOAL_REDIS_URL": url, "PYTHONPATH": pythonpath, **env},
    )


def idle_cpu_s(url: str, env: dict[str, str], sync: bool) -> float:
    """The worker's CPU for start-up and shutdown alone: a burst on an empty queue."""
    app = App(url)
    app.broker.redis.flushall()
    app.close()
    env = {k: v for k, v in env.items() if k != PRODUCER_TRACED}
    before = _children_cpu_s()
    start_worker(url, env, sync).wait(60)
    return _children_cpu_s() - before


def drain(url: str, tasks: int, env: dict[str, str], sync: bool) -> tuple[float, float]:
    """Tasks per second, and the worker's CPU seconds (its processes, start-up included)."""
    env = dict(env)
    traced = env.pop(PRODUCER_TRACED, None)
    producer = traced_producer(url) if traced else App(url)
    noop = producer.remote("noop-sync" if sync else "noop", queue=QUEUE)
    producer.broker.redis.flushall()
    batch = 100 if traced else 1000
    for start in range(0, tasks, batch):
        noop.enqueue_many([(i,) for i in range(start, min(tasks, start + batch))])
    cpu_before = _children_cpu_s()
    worker = start_worker(url, env, sync)
    first = last = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        done = producer.measure(QUEUE).completed
        now = time.perf_counter()
        if done and first is None:
            first = (now, done)
        if done >= tasks:
            last = (now, done)
            break
        time.sleep(0.005)
    worker.wait(60)
    cpu_s = _children_cpu_s() - cpu_before
    producer.close()
    if first is None or last is None:
        raise SystemExit(f"the worker did not drain the queue (env {env})")
    return (last[1] - first[1]) / (last[0] - first[0]), cpu_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sync", action="store_true", help="a def task in slot threads")
    args = parser.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    configs = {
        "no tracing middleware": {"BENCH_WITHOUT_TRACING": "1"},
        "tracing off (no OTEL_*)": {},
        "tracing on (OTLP, 100 %)": {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
        },
        "tracing on (OTLP, 10 %)": {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
        },
        "10 %, producer traced too": {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.1",
            PRODUCER_TRACED: "1",
        },
    }
    results: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    spans: dict[str, list[int]] = {name: [] for name in configs}
    with LocalRedis() as redis_server:
        for _ in range(args.runs):
            for name, env in configs.items():  # interleaved, so drift hits all alike
                before = Receiver.spans
                rate, cpu_s = drain(redis_server.url, args.tasks, env, args.sync)
                idle_s = idle_cpu_s(redis_server.url, env, args.sync)
                results[name].append(rate)
                cpu[name].append((cpu_s - idle_s) / args.tasks * 1e6)
                spans[name].append(Receiver.spans - before)  # flushed before the worker exits
    base = statistics.median(results["no tracing middleware"])
    base_cpu = statistics.median(cpu["no tracing middleware"])
    kind = "def" if args.sync else "async def"
    print(f"{args.tasks} no-op {kind} tasks, median of {args.runs} runs, {os.cpu_count()} cores")
    print(
        f"{'configuration':<28} {'tasks/s':>9} {'vs no middleware':>17}"
        f" {'worker CPU µs/task':>19} {'vs':>7}  spans per run"
    )
    for name, rates in results.items():
        rate, per_task = statistics.median(rates), statistics.median(cpu[name])
        got = ", ".join(f"{n:,}" for n in spans[name])
        print(
            f"{name:<28} {rate:>9,.0f} {rate / base - 1:>+16.1%}"
            f" {per_task:>19,.1f} {per_task / base_cpu - 1:>+7.1%}  {got}"
        )
    print(f"OTLP exports received: {Receiver.exports}")
    server.shutdown()


if __name__ == "__main__":
    main()
