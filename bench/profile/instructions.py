"""Instructions per no-op task of one worker process, counted with callgrind: repeatable on a
busy machine where tasks/s and CPU time are not. Compares runtime revisions and flow and task
control features (the throughput bench's ``--features`` rows, worker side only).

    .venv/bin/python bench/profile/instructions.py [--revs tree,d681d96] [--mode sync|async|both]
        [--features off,prio0,...] [--n 1000]

For every (revision, mode, feature): ``runtime/`` of the revision (``tree``: the working tree) is
copied out of the repo; a private ``redis-server`` (not traced) is filled with N, then 5 N, no-op
tasks by a plain process of that revision, and each time one in-process worker (``Worker(...,
burst=True)``, concurrency 16 for ``def`` tasks, 64 for ``async def``: the CLI's and the bench's)
drains them under ``valgrind --tool=callgrind`` (every thread counted, ``PYTHONHASHSEED=0``).
The difference over 4 N tasks is the worker's instructions per task: start-up, imports and the
burst's ending cancel out. Redis's own work (the Lua scripts) is not counted: this is the
worker's cost only.

``--side redis`` measures Redis's side of the same drains instead: the worker runs plainly and
``redis-server`` runs under callgrind, its counters zeroed after the prefill and dumped after
the drain; with ``INFO commandstats``, reset at the same moment, that gives per task (over the
same 4 N difference) the script calls, the commands Redis ran (in the scripts or not), and
Redis's instructions. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import redis

from shoal.protocol.server import LocalRedis, free_port

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
QUEUE = "instr"
NEVER_BINDS = "100000/s"  # as the throughput bench's features rows
FEATURES = (
    "off",
    "queue-rate",
    "task-rate",
    "prio0",
    "prio-mixed",
    "progress",
    "expires",
    "traced",
    "traced-10",
)
TRACED = {"traced": "1.0", "traced-10": "0.1"}
"""Tracing features: the worker exports over OTLP/HTTP to a receiver in this process (not
counted), ``parentbased_traceidratio`` at this ratio; the messages are roots (producer untraced)."""
CHUNK = 1000


# ---- inside the revision's interpreter (prefill, and the counted drain) ---------------------


def _app(feature: str, asynchronous: bool) -> tuple[Any, Any]:
    from shoal import App

    app = App()  # SHOAL_REDIS_URL set by the parent
    options: dict[str, Any] = {"rate_limit": NEVER_BINDS} if feature == "task-rate" else {}
    report: Any = None
    if feature == "progress":
        from shoal import progress as report
    if asynchronous:

        async def noop(i: int) -> None:
            if report is not None:
                report(1, 2)

    else:

        def noop(i: int) -> None:  # type: ignore[misc]
            if report is not None:
                report(1, 2)

    return app, app.task(queue=QUEUE, name="noop", **options)(noop)


def prefill(feature: str, asynchronous: bool, n: int) -> None:
    """Enqueue ``n`` tasks as the feature wants them; import what the drain will (so that
    both counted runs find compiled modules)."""
    import shoal.worker  # noqa: F401

    app, task = _app(feature, asynchronous)
    if feature == "queue-rate":
        app.configure_queue(QUEUE, rate_limit=NEVER_BINDS)
    sender = task  # (options a runtime before the features lacks: only when asked for)
    if feature == "prio0":
        sender = task.with_options(priority=0)
    elif feature == "expires":
        sender = task.with_options(expires=600)
    elif feature == "prio-mixed":
        last = task.with_options(priority=9)
        for i in range(n):
            (last if i % 2 else task).enqueue(i)
        return
    for start in range(0, n, CHUNK):
        sender.enqueue_many([(i,) for i in range(start, min(n, start + CHUNK))])


def drain(feature: str, asynchronous: bool, n: int) -> None:
    from shoal.worker import Worker

    app, _ = _app(feature, asynchronous)
    worker = Worker(app, [QUEUE], concurrency=64 if asynchronous else 16, burst=True)
    asyncio.run(worker.run())
    if worker.processed != n:
        raise SystemExit(f"drained {worker.processed} tasks, expected {n}")


# ---- the parent -----------------------------------------------------------------------------


def snapshot(rev: str, dest: Path) -> Path:
    """``runtime/`` of ``rev`` (``tree``: the working tree) copied under ``dest``."""
    if rev == "tree":
        shutil.copytree(REPO / "runtime", dest / "runtime", ignore=shutil.ignore_patterns("*.pyc"))
    else:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "runtime"], capture_output=True, check=True
        ).stdout
        dest.mkdir(parents=True, exist_ok=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "runtime"


def child(
    action: str, runtime: Path, url: str, feature: str, mode: str, n: int, out: str | None
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "OTEL_"))},
        "PYTHONPATH": str(runtime),
        "PYTHONHASHSEED": "0",
        "SHOAL_REDIS_URL": url,
    }
    if action == "drain" and feature in TRACED:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = _receiver()
        env["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        env["OTEL_TRACES_SAMPLER_ARG"] = TRACED[feature]
    cmd = [sys.executable, __file__, "--child", action, "--feature", feature, "--mode", mode]
    cmd += ["--n", str(n)]
    if out is not None:
        cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *cmd]
    done = subprocess.run(cmd, env=env, capture_output=True, check=False, timeout=1800)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise SystemExit(f"{action} {feature} {mode} n={n} failed: {' | '.join(tail)}")


_RECEIVER: list[str] = []


def _receiver() -> str:
    """The endpoint of an OTLP/HTTP receiver in this process, started on first use."""
    if not _RECEIVER:
        sys.path.insert(0, str(REPO / "bench" / "tracing"))
        from receiver import Receiver

        server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        _RECEIVER.append(f"http://127.0.0.1:{server.server_address[1]}")
    return _RECEIVER[0]


def flush(port: int) -> None:
    subprocess.run(["redis-cli", "-p", str(port), "FLUSHALL"], check=True, capture_output=True)


SCRIPTS = ("evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro")
UNCOUNTED = ("info", "config", "flushall", "client", "hello", "ping", "select", "script")
"""Not the drain's work: this script's own reads, and a connection's set-up."""


def redis_work(client: redis.Redis) -> tuple[int, int]:
    """Since the last reset: script calls, and commands (those the scripts ran, which Redis
    counts in their own rows, and the worker's own)."""
    calls = commands = 0
    for key, row in client.info("commandstats").items():
        name = key.removeprefix("cmdstat_").split("|")[0]
        if name in SCRIPTS:
            calls += int(row["calls"])
        elif name not in UNCOUNTED:
            commands += int(row["calls"])
    return calls, commands


def callgrind_totals(out: Path) -> int:
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(), re.M)
    if found is None:
        raise SystemExit(f"no totals in {out}")
    return int(found.group(1))


def count(runtime: Path, port: int, feature: str, mode: str, n: int, tmp: Path) -> tuple[int]:
    """Instructions of one worker draining ``n`` pre-filled tasks."""
    url = f"redis://127.0.0.1:{port}/0"
    flush(port)
    child("prefill", runtime, url, feature, mode, n, None)
    out = tmp / f"callgrind-{feature}-{mode}-{n}.out"
    child("drain", runtime, url, feature, mode, n, str(out))
    return (callgrind_totals(out),)


def callgrind_control(command: str, pid: int) -> None:
    """``-z``: zero the counters of process ``pid``; ``-d``: dump them."""
    subprocess.run(["callgrind_control", command, str(pid)], check=True, capture_output=True)


def count_redis(runtime: Path, feature: str, mode: str, n: int, tmp: Path) -> tuple[int, ...]:
    """Script calls, commands and instructions of a ``redis-server`` (under callgrind, started
    for this count) while one plain worker drains ``n`` pre-filled tasks."""
    port = free_port()
    out = tmp / f"callgrind-redis-{feature}-{mode}-{n}.out"
    redis_cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    server = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *redis_cmd],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        for _ in range(300):  # valgrind starts it slowly
            with contextlib.suppress(redis.ConnectionError):
                if client.ping():
                    break
            time.sleep(0.1)
        url = f"redis://127.0.0.1:{port}/0"
        child("prefill", runtime, url, feature, mode, n, None)
        client.config_resetstat()
        callgrind_control("-z", server.pid)
        child("drain", runtime, url, feature, mode, n, None)
        callgrind_control("-d", server.pid)
        calls, commands = redis_work(client)
    finally:
        client.close()
        server.terminate()
        server.wait(60)
    (dump,) = tmp.glob(f"{out.name}.*")  # the dump asked for; the one at exit is the path itself
    return calls, commands, callgrind_totals(dump)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--revs", default="tree,d681d96", help="'tree' or git revisions")
    parser.add_argument("--mode", choices=("sync", "async", "both"), default="both")
    parser.add_argument(
        "--features",
        default="off",
        help=f"comma-separated, of {','.join(FEATURES)}; features other than off run on the "
        "first revision only",
    )
    parser.add_argument("--n", type=int, default=1000, help="tasks of the small drain (5x: big)")
    parser.add_argument(
        "--keep", type=Path, help="keep callgrind's output files here (for callgrind_annotate)"
    )
    parser.add_argument(
        "--side",
        choices=("worker", "redis"),
        default="worker",
        help="worker: its instructions (callgrind); redis: Redis's commands and instructions",
    )
    parser.add_argument("--child", choices=("prefill", "drain"), help=argparse.SUPPRESS)
    parser.add_argument("--feature", default="off", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asynchronous = args.mode == "async"
        (prefill if args.child == "prefill" else drain)(args.feature, asynchronous, args.n)
        return
    features = args.features.split(",")
    unknown = set(features) - set(FEATURES)
    if unknown:
        parser.error(f"unknown features: {', '.join(sorted(unknown))}")
    revs = args.revs.split(",")
    modes = ("sync", "async") if args.mode == "both" else (args.mode,)
    server = LocalRedis().start()  # the runtime's own: loopback, no persistence
    port = server.port
    rows: list[tuple[str, str, str, str]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="shoal-instr-") as tmp_name:
            tmp = Path(tmp_name)
            for r, rev in enumerate(revs):
                runtime = snapshot(rev, tmp / f"rev{r}")
                for feature in features if r == 0 else ["off"]:
                    for mode in modes:
                        small, big = (
                            count_redis(runtime, feature, mode, k * args.n, tmp)
                            if args.side == "redis"
                            else count(runtime, port, feature, mode, k * args.n, tmp)
                            for k in (1, 5)
                        )
                        if args.keep is not None:
                            args.keep.mkdir(parents=True, exist_ok=True)
                            for out in tmp.glob(f"callgrind-{feature}-{mode}-*.out"):
                                out.rename(args.keep / f"{rev}-{out.name}")
                        per = [(b - a) / (4 * args.n) for a, b in zip(small, big, strict=True)]
                        shown = (
                            f"{per[0]:.3f} | {per[1]:.2f} | {per[2] / 1000:.1f}k"
                            if args.side == "redis"
                            else f"{per[0] / 1000:.1f}k"
                        )
                        rows.append((rev, feature, mode, shown))
                        print(f"{rev} {feature} {mode}: {shown}", flush=True)
    finally:
        server.stop()
    header = (
        "script calls | commands | Redis's instructions" if args.side == "redis" else "instructions"
    )
    print(f"\n| revision | feature | tasks | {header} per task |")
    print("| --- | --- | --- |" + " ---: |" * (3 if args.side == "redis" else 1))
    for rev, feature, mode, shown in rows:
        print(f"| {rev} | {feature} | {mode} | {shown} |")


if __name__ == "__main__":
    main()
