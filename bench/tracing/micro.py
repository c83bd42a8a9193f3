"""CPU per traced task: the tracing middleware's worker path run N times in one process, with
the span export (batch processor, OTLP/HTTP protobuf, to a local receiver) included.

    python bench/tracing/micro.py [--spans 20000] [--sampler always_on] [--profile FILE]

Each configuration runs in a fresh interpreter (the global tracer provider is set once per
process), set up exactly as ``shoal worker`` does it: from ``OTEL_*`` variables through
``Tracing.before_worker_boot``. CPU is ``time.process_time`` (every thread, so the background
encoding counts), measured after a warm-up and after the last span was flushed. Not part of the
test suite."""

from __future__ import annotations

import argparse
import cProfile
import os
import random
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from receiver import Receiver  # noqa: E402

from shoal import App  # noqa: E402
from shoal.message import Message, new_message_id  # noqa: E402
from shoal.middleware.tracing import Tracing  # noqa: E402
from shoal.settings import Settings  # noqa: E402

QUEUE = "trace-bench"


def messages(n: int, sampled: float | None) -> list[Message]:
    """Messages as a producer leaves them: untraced (``sampled`` None, no headers, as in
    bench/tracing/run.py), or traced with that fraction flagged sampled in the traceparent."""
    out = []
    for i in range(n):
        headers = {}
        if sampled is not None:
            flags = "01" if random.random() < sampled else "00"
            trace_id, span_id = random.getrandbits(128), random.getrandbits(64)
            headers["traceparent"] = f"00-{trace_id:032x}-{span_id:016x}-{flags}"
        out.append(Message(new_message_id(), "noop", QUEUE, [i], {}, time.time(), 0, headers))
    return out


def run_path(mw: Tracing, task: Any, batch: list[Message]) -> None:
    """What the worker calls for one successful task (hooks.context + emit)."""
    for message in batch:
        with mw.process_context(task, message, QUEUE):
            mw.before_process(task, message)
            mw.after_process(task, message, result=None, exception=None)


def child(args: argparse.Namespace) -> None:
    app = App("redis://127.0.0.1:1/0")  # never connected: only the task object is used
    task = app.task(queue=QUEUE, name="noop")(lambda i: None)
    mw = Tracing()
    mw.before_worker_boot(SimpleNamespace(settings=Settings.from_env()))
    assert mw.active_in_worker() == (args.sampler != "off")
    sampled = None
    if args.parent == "traced":
        sampled = float(args.ratio) if "ratio" in args.sampler else 1.0
    warm, batch = messages(2000, sampled), messages(args.spans, sampled)
    run_path(mw, task, warm)
    flush(mw)
    profiler = cProfile.Profile() if args.profile else None
    cpu0, main0, wall0 = time.process_time(), time.thread_time(), time.perf_counter()
    if profiler:
        profiler.enable()
    run_path(mw, task, batch)
    main1 = time.thread_time()
    flush(mw)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    n = len(batch)
    print(
        f"{args.sampler:<26} {args.parent:<9} {cpu / n * 1e6:8.1f} µs CPU/task  "
        f"({(main1 - main0) / n * 1e6:6.1f} on the task's thread)  {wall / n * 1e6:8.1f} µs wall"
    )


def flush(mw: Tracing) -> None:
    owned = mw._owned
    if owned is not None:
        owned.provider.force_flush()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--spans", type=int, default=20_000)
    parser.add_argument("--sampler", action="append", help="off, or an OTEL_TRACES_SAMPLER")
    parser.add_argument("--ratio", default="0.1", help="OTEL_TRACES_SAMPLER_ARG for *ratio")
    parser.add_argument(
        "--parent",
        choices=["none", "traced"],
        default="none",
        help="messages from an untraced producer (no traceparent) or a traced one",
    )
    parser.add_argument("--profile", help="write a cProfile of the measured loop here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.sampler = args.sampler or ["off", "parentbased_always_on", "parentbased_traceidratio"]
    if args.child:
        args.sampler = args.sampler[0]
        child(args)
        return
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"{args.spans} traced tasks per configuration (receiver: {endpoint})")
    for sampler in args.sampler:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        if sampler != "off":
            env |= {
                "OTEL_BSP_MAX_QUEUE_SIZE": str(args.spans + 5000),  # a tight loop: drop nothing
                "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                "OTEL_TRACES_SAMPLER": sampler,
                "OTEL_TRACES_SAMPLER_ARG": args.ratio,
            }
        command = [sys.executable, __file__, "--child", "--spans", str(args.spans)]
        command += ["--sampler", sampler, "--parent", args.parent, "--ratio", args.ratio]
        if args.profile:
            command += ["--profile", f"{args.profile}.{sampler}"]
        subprocess.run(command, env=env, check=True)
    print(f"OTLP exports received: {Receiver.exports}, spans: {Receiver.spans}")
    server.shutdown()


if __name__ == "__main__":
    main()
