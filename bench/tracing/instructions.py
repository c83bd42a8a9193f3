"""Instructions per traced task, by step, counted with callgrind (repeatable on a busy machine,
unlike wall or CPU time).

    python bench/tracing/instructions.py [--n 2000] [STEP ...]

Each step runs in a fresh interpreter under ``valgrind --tool=callgrind`` twice, N times and 0
times; the difference over N is the step's cost (start-up and set-up cancel out). Every thread
is counted, so ``task`` includes the batch processor's encoding and the HTTP export. Not part of
the test suite."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STEPS = {
    "extract": "propagate.extract: the traceparent header into a parent context",
    "start": "tracer.start_span: sampler, ids, attributes (not current, not ended)",
    "attach": "the span made current and back (context attach + detach)",
    "end": "span.end(): the batch processor's on_end (the span queued)",
    "encode": "the exporter's encoding of the span into the OTLP protobuf request",
    "post": "the HTTP POST of the encoded request, per span (batches of 512)",
    "off": "the worker's hooks around a task with no tracer provider (tracing not active)",
    "task": "the worker's whole tracing path (the hooks around a task), export included",
    "task-10%": "the same with parentbased_traceidratio at 0.1 (root spans, no parent)",
    "task-unsampled": "the whole path, parentbased_always_on, a parent that was not sampled",
    "task-sdk": "the whole path with the app's own SDK provider (batch processor, OTLP/HTTP)",
}


def child(step: str, n: int, measured: bool) -> None:  # noqa: PLR0915
    """Set up, then run ``step`` on n spans; when not ``measured``, everything but the step."""
    import random
    import time
    from types import SimpleNamespace

    from opentelemetry import context, propagate, trace
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from shoal import App
    from shoal.message import Message, new_message_id
    from shoal.middleware.hooks import Hooks
    from shoal.middleware.tracing import Tracing
    from shoal.settings import Settings

    app = App("redis://127.0.0.1:1/0")
    task = app.task(queue="q", name="noop")(lambda i: None)
    if step == "task-sdk":  # as `opentelemetry-instrument shoal worker` or an app's own set-up
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        own = TracerProvider()
        own.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(own)
    mw = Tracing()
    mw.before_worker_boot(SimpleNamespace(settings=Settings.from_env()))
    hooks = Hooks([m for m in (mw,) if m.active_in_worker()])  # as the worker builds them
    provider = trace.get_tracer_provider()
    tracer = trace.get_tracer("bench")

    def message(i: int, parent: bool, flags: str = "01") -> Message:
        headers = {}
        if parent:
            tid, sid = random.getrandbits(128), random.getrandbits(64)
            headers["traceparent"] = f"00-{tid:032x}-{sid:016x}-{flags}"
        return Message(new_message_id(), "noop", "q", [i], {}, time.time(), 0, headers)

    def run_task(m: Message) -> None:  # the hooks a worker runs around a no-op task
        with hooks.context("process_context", task, m, "q"):
            hooks.emit("before_process", task, m)
            hooks.after_success(task, m, None)

    flush = getattr(provider, "force_flush", lambda: None)  # none when tracing is off
    for i in range(600):  # warm caches, lazily built state, the HTTP connection
        run_task(message(i, parent=True))
    flush()
    flags = "00" if step == "task-unsampled" else "01"
    msgs = [message(i, parent=step != "task-10%", flags=flags) for i in range(n)]
    attrs = {"messaging.system": "shoal", "messaging.destination.name": "q"}
    attrs |= {"messaging.message.id": new_message_id(), "shoal.task.name": "noop"}
    attrs |= {"shoal.attempt": 1}
    parents = [propagate.extract(m.headers) for m in msgs] if step != "extract" else []
    if step == "extract":
        for m in msgs:
            if measured:
                propagate.extract(m.headers)
    elif step.startswith("task") or step == "off":
        for m in msgs:
            if measured:
                run_task(m)
        flush()
    else:
        spans = []
        for parent in parents:
            if measured or step != "start":
                spans.append(tracer.start_span("process q", parent, attributes=attrs))
        if step == "attach":
            for s in spans:
                if measured:
                    context.detach(context.attach(trace.set_span_in_context(s)))
        elif step == "end":
            for s in spans:
                if measured:
                    s.end()  # the exporter never runs: its batch size and delay are huge
        elif step in {"encode", "post"}:
            readable = [s._readable_span() for s in spans]  # type: ignore[attr-defined]
            bodies = []
            for i in range(0, n, 512):
                if measured or step == "post":
                    bodies.append(encode_spans(readable[i : i + 512]).SerializePartialToString())
            if step == "post":
                exporter = OTLPSpanExporter()
                for body in bodies:
                    if measured:
                        exporter._client.export(body)  # type: ignore[attr-defined]
    sys.stdout.flush()
    os._exit(0)  # no shutdown flush: the two runs must differ by the step alone


def count(step: str, n: int, env: dict[str, str], measured: bool) -> int:
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            step,
            "--n",
            str(n),
            *(["--measured"] if measured else []),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    found = re.search(r"Collected : (\d+)", out)
    if found is None:
        raise SystemExit(out)
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("steps", nargs="*", default=list(STEPS))
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--measured", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.n, args.measured)
        return
    from receiver import Receiver

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{server.server_address[1]}"
    env["OTEL_BSP_MAX_QUEUE_SIZE"] = str(args.n + 1000)  # nothing dropped in a tight loop
    env["PYTHONHASHSEED"] = "0"  # the two runs of a step import and hash alike
    print(f"instructions per span, callgrind, n={args.n}")
    for step in args.steps:
        step_env = dict(env)
        if step == "end":  # queued only: never exported while counted
            step_env |= {"OTEL_BSP_SCHEDULE_DELAY": "600000"}
            step_env |= {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": str(args.n + 1000)}
        if step == "off":
            step_env.pop("OTEL_EXPORTER_OTLP_ENDPOINT")
        if step == "task-10%":
            step_env |= {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio"}
            step_env |= {"OTEL_TRACES_SAMPLER_ARG": "0.1"}
        total = count(step, args.n, step_env, measured=True)
        per = (total - count(step, args.n, step_env, measured=False)) / args.n
        print(f"{step:<10} {per:>12,.0f}  {STEPS[step]}")
    server.shutdown()


if __name__ == "__main__":
    main()
