"""One-at-a-time enqueue cost: Shoal's ``task.enqueue()`` against the floors beneath it.

Starts a private redis-server on a free loopback port (or uses ``--redis-url``) and times, in one
run and side by side:

- ``lpush``: a bare redis-py ``LPUSH`` loop (what huey's enqueue is: one command, one reply);
- ``evalsha``: a bare redis-py ``EVALSHA`` of Shoal's enqueue script with the same keys and a
  prebuilt envelope (the round trip, the script's own work and redis-py's cost: the floor);
- ``enqueue``: ``task.enqueue(run, i, t, 0.0)`` through a default ``App()`` (Tracing and Retries
  middleware present, no tracer provider, no signing);
- ``no_mw``: the same with ``App(middleware=[])`` (what the default Tracing costs when off);
- ``signed``: the same as ``enqueue`` with ``signing_keys`` set;
- ``traced``: the same as ``enqueue`` with ``Tracing(tracer_provider=...)``: an OpenTelemetry SDK
  provider as an application sets one up (``BatchSpanProcessor``, the OTLP/HTTP exporter) sending
  to a sink in this process that reads each request and answers 200 (its thread counts too);
- ``async_evalsha`` / ``async_send``: the asyncio floor, and ``Producer.send_async`` (the
  worker's enqueue of workflow steps and schedule ticks) through an ``AsyncBroker``;
- ``many``: ``task.enqueue_many`` in batches of ``--batch`` (messages/s).

Shoal's per-call Python overhead is its µs/call minus the EVALSHA floor's.

``--cprofile PHASE`` profiles one phase's loop and prints the top functions. ``--callgrind``
runs each phase under ``valgrind --tool=callgrind`` twice (``--callgrind-n`` and twice as many
calls, against one shared redis-server that is not traced, ``PYTHONHASHSEED=0``) and reports
the client's instructions per call as the difference over ``--callgrind-n`` calls: start-up,
imports and the first call's script load cancel out, and the count is repeatable on a busy
machine where wall-clock times are not (the kernel's and Redis's work is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis
import redis.asyncio as aioredis

from shoal import App
from shoal.message import Message, new_message_id
from shoal.middleware import Retries, Tracing
from shoal.protocol import AsyncBroker
from shoal.protocol.scripts import enqueue_call, script_source
from shoal.protocol.server import LocalRedis

PHASES = (
    "lpush",
    "evalsha",
    "enqueue",
    "no_mw",
    "signed",
    "traced",
    "async_evalsha",
    "async_send",
    "many",
)
FLOORS = {"enqueue": "evalsha", "no_mw": "evalsha", "signed": "evalsha", "traced": "evalsha"}
FLOORS["async_send"] = "async_evalsha"


def _app(url: str, prefix: str, **settings: Any) -> tuple[App, Any]:
    app = App(redis_url=url, key_prefix=prefix, **settings)

    @app.task(queue="bench", name="work")
    async def work(run: str, i: int, t_enq: float, sleep: float) -> None: ...

    return app, work


class _Sink(BaseHTTPRequestHandler):
    """An OTLP/HTTP endpoint that reads each request and answers 200."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _sdk_provider() -> Any:
    """An SDK tracer provider exporting over OTLP/HTTP to a :class:`_Sink` in this process."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    sink = ThreadingHTTPServer(("127.0.0.1", 0), _Sink)
    threading.Thread(target=sink.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{sink.server_address[1]}/v1/traces"
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


def _envelope(i: int) -> bytes:
    m = Message(new_message_id(), "work", "bench", ["run-1", i, time.time(), 0.0], {}, 1.0)
    return m.encode()


def _floor_args(app: App) -> tuple[list[str], list[Any]]:
    """The enqueue script's keys and the arguments before the messages, as the runtime builds
    them (no guard, the default priority)."""
    _, keys, head = enqueue_call(app.broker.keys("bench"), [])
    return keys, head


def run_phase(phase: str, url: str, n: int, batch: int, prefix: str) -> float:
    """Run ``n`` calls (messages for ``many``) of ``phase``; returns the elapsed seconds."""
    body = _envelope(0)
    if phase == "lpush":
        r = redis.Redis.from_url(url)
        key = f"{prefix}:lpush"
        r.lpush(key, body)
        start = time.perf_counter()
        for _ in range(n):
            r.lpush(key, body)
        elapsed = time.perf_counter() - start
        r.close()
        return elapsed
    if phase == "evalsha":
        app, _ = _app(url, prefix)
        keys, head = _floor_args(app)
        r = redis.Redis.from_url(url)
        sha = r.script_load(script_source("enqueue"))
        ids = [f"{i:032x}" for i in range(n + 1)]
        r.evalsha(sha, len(keys), *keys, *head, ids[n], 0, body, "")
        start = time.perf_counter()
        for i in range(n):
            r.evalsha(sha, len(keys), *keys, *head, ids[i], 0, body, "")
        elapsed = time.perf_counter() - start
        r.close()
        app.close()
        return elapsed
    if phase in ("enqueue", "no_mw", "signed", "traced"):
        return _run_enqueue(phase, url, n, prefix)
    if phase == "many":
        app, work = _app(url, prefix)
        work.enqueue_many([("warm", -1, time.time(), 0.0)])
        start = time.perf_counter()
        for lo in range(0, n, batch):
            t = time.time()
            work.enqueue_many([("run-1", i, t, 0.0) for i in range(lo, min(n, lo + batch))])
        elapsed = time.perf_counter() - start
        app.close()
        return elapsed
    if phase in ("async_evalsha", "async_send"):
        return asyncio.run(_run_async(phase, url, n, prefix))
    raise SystemExit(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")


def _run_enqueue(phase: str, url: str, n: int, prefix: str) -> float:
    """``task.enqueue()`` one at a time, as ``phase`` sets the App up."""
    extra: dict[str, Any] = {}
    if phase == "signed":
        extra["signing_keys"] = ("k" * 32,)
    if phase == "no_mw":
        extra["middleware"] = []
    provider = _sdk_provider() if phase == "traced" else None
    if provider is not None:
        extra["middleware"] = [Tracing(tracer_provider=provider), Retries()]
    app, work = _app(url, prefix, **extra)
    enqueue = work.enqueue
    enqueue("warm", -1, time.time(), 0.0)
    start = time.perf_counter()
    for i in range(n):
        enqueue("run-1", i, time.time(), 0.0)
    if provider is not None:
        provider.force_flush()  # the spans' export is part of the cost
    elapsed = time.perf_counter() - start
    if provider is not None:
        provider.shutdown()
    app.close()
    return elapsed


async def _run_async(phase: str, url: str, n: int, prefix: str) -> float:
    app, work = _app(url, prefix)
    if phase == "async_evalsha":
        keys, head = _floor_args(app)
        body = _envelope(0)
        ar = aioredis.Redis.from_url(url)
        sha = await ar.script_load(script_source("enqueue"))
        ids = [f"{i:032x}" for i in range(n + 1)]
        await ar.evalsha(sha, len(keys), *keys, *head, ids[n], 0, body, "")
        start = time.perf_counter()
        for i in range(n):
            await ar.evalsha(sha, len(keys), *keys, *head, ids[i], 0, body, "")
        elapsed = time.perf_counter() - start
        await ar.aclose()
    else:
        broker = AsyncBroker(app.settings)
        producer = app.producer
        send = producer.send_async
        queue, name = work.queue, work.name

        def message(i: int) -> Message:
            return Message(new_message_id(), name, queue, ["run-1", i, time.time(), 0.0], {}, 0.0)

        await send(broker, work, [message(-1)], None)  # type: ignore[arg-type]
        start = time.perf_counter()
        for i in range(n):
            await send(broker, work, [message(i)], None)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - start
        await broker.close()
    app.close()
    return elapsed


def _callgrind(phase: str, url: str, n: int, batch: int) -> float:
    """Instructions per call of ``phase``: the difference between ``2n`` and ``n`` calls."""
    counts = []
    for calls in (n, 2 * n):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "callgrind.out")
            command = [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--redis-url",
                url,
                "--phases",
                phase,
                "--n",
                str(calls),
                "--batch",
                str(batch),
                "--quiet",
            ]
            env = {**os.environ, "PYTHONHASHSEED": "0"}  # the same start-up in both runs
            subprocess.run(command, check=True, capture_output=True, env=env)
            with open(out) as f:
                summary = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
            assert summary, "no totals in callgrind's output"
            counts.append(int(summary.group(1)))
    return (counts[1] - counts[0]) / n


def _profile(phase: str, url: str, n: int, batch: int, prefix: str, top: int) -> None:
    profiler = cProfile.Profile()
    profiler.enable()
    run_phase(phase, url, n, batch, prefix)
    profiler.disable()
    stats = pstats.Stats(profiler)
    stats.sort_stats("tottime").print_stats(top)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="calls per phase")
    parser.add_argument("--batch", type=int, default=1000, help="enqueue_many batch size")
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--redis-url", help="use this Redis instead of starting one")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per phase (best kept)")
    parser.add_argument("--cprofile", metavar="PHASE", help="profile one phase, print top 30")
    parser.add_argument("--callgrind", action="store_true", help="instructions/call per phase")
    parser.add_argument("--callgrind-n", type=int, default=1000, help="calls per callgrind run")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    server = None if args.redis_url else LocalRedis().start()
    url = args.redis_url or server.url  # type: ignore[union-attr]
    try:
        _main(args, phases, url)
    finally:
        if server is not None:
            server.stop()


def _main(args: argparse.Namespace, phases: list[str], url: str) -> None:
    prefix = f"bench-{os.getpid()}"
    if args.quiet:  # a callgrind child: run once, print nothing
        for phase in phases:
            run_phase(phase, url, args.n, args.batch, prefix)
        return
    if args.cprofile:
        _profile(args.cprofile, url, args.n, args.batch, prefix, 30)
        return
    if args.callgrind:
        for phase in phases:
            per_call = _callgrind(phase, url, args.callgrind_n, args.batch)
            print(f"{phase:<14} {per_call:11,.0f} instructions/call", flush=True)
        return
    best: dict[str, float] = {}
    for r in range(args.repeat):
        for phase in phases:  # interleaved, so a noisy spell hits every phase alike
            took = run_phase(phase, url, args.n, args.batch, f"{prefix}-{r}")
            best[phase] = min(best.get(phase, took), took)
            redis.Redis.from_url(url).flushdb()
    _report(phases, best, args.n)


def _report(phases: list[str], best: dict[str, float], n: int) -> None:
    print(f"{'phase':<14} {'calls/s':>10} {'µs/call':>9} {'over floor µs':>14}")
    us: Callable[[str], float] = lambda p: best[p] / n * 1e6  # noqa: E731
    for phase in phases:
        floor = FLOORS.get(phase)
        over = f"{us(phase) - us(floor):14.1f}" if floor in best else ""
        print(f"{phase:<14} {n / best[phase]:10,.0f} {us(phase):9.1f} {over}")
    print(f"(best of the runs, {n:,} calls each; 'many' counts messages)")


if __name__ == "__main__":
    main()
