"""Tracing overhead: no-op task throughput with tracing off, on (100 % and 10 % sampled, batch
OTLP/HTTP export to a local receiver), and without the tracing middleware at all, in the same run.

    python bench/tracing/run.py [--tasks 20000] [--runs 3]

Each configuration drains the same pre-filled queue with ``shoal worker --processes 2
--concurrency 64 --burst``; throughput is counted from the first to the last completion seen in
Redis (start-up excluded). The receiver counts the spans it got, so a configuration that dropped
spans shows it. Not part of the test suite."""

from __future__ import annotations

import argparse
import os
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

from shoal import App  # noqa: E402
from shoal.protocol.server import LocalRedis  # noqa: E402

QUEUE = "trace-bench"


def drain(url: str, tasks: int, env: dict[str, str]) -> float:
    pythonpath = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    producer = App(url)
    noop = producer.remote("noop", queue=QUEUE)
    producer.broker.redis.flushall()
    for start in range(0, tasks, 1000):
        noop.enqueue_many([(i,) for i in range(start, min(tasks, start + 1000))])
    worker = subprocess.Popen(
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
            "64",
            "--burst",
            "--log-level",
            "WARNING",
        ],
        env={**os.environ, "SHOAL_REDIS_URL": url, "PYTHONPATH": pythonpath, **env},
    )
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
    producer.close()
    if first is None or last is None:
        raise SystemExit(f"the worker did not drain the queue (env {env})")
    return (last[1] - first[1]) / (last[0] - first[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
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
    }
    results: dict[str, list[float]] = {name: [] for name in configs}
    spans: dict[str, list[int]] = {name: [] for name in configs}
    with LocalRedis() as redis_server:
        for _ in range(args.runs):
            for name, env in configs.items():  # interleaved, so drift hits all alike
                before = Receiver.spans
                results[name].append(drain(redis_server.url, args.tasks, env))
                spans[name].append(Receiver.spans - before)  # flushed before the worker exits
    base = statistics.median(results["no tracing middleware"])
    print(f"{args.tasks} no-op tasks, median of {args.runs} runs, {os.cpu_count()} cores")
    print(f"{'configuration':<28} {'tasks/s':>9} {'vs no middleware':>17}  spans per run")
    for name, rates in results.items():
        rate = statistics.median(rates)
        got = ", ".join(f"{n:,}" for n in spans[name])
        print(f"{name:<28} {rate:>9,.0f} {rate / base - 1:>+16.1%}  {got}")
    print(f"OTLP exports received: {Receiver.exports}")
    server.shutdown()


if __name__ == "__main__":
    main()
