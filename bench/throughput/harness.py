"""Orchestration (inside the harness venv): venvs, the redis-server, runs, table and JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

import features
import report
from common import median_or_none, redis_server
from features import FEATURE_SPECS
from otlp import Receiver
from scenarios import HERE, PeerRun, Settings
from specs import COMMON_PACKAGES, REPO, SPECS, VENVS, PeerSpec

RESULTS = REPO / "bench" / "results"
METRICS = [
    "noop_rate",
    "enqueue_rate",
    "bulk_rate",
    "lat_p50_ms",
    "lat_p99_ms",
    "io_drain_s",
    "cpu_ms_per_task",
    "queue_cpu_ms_per_task",
    "redis_cpu_ms_per_task",
    "body_cpu_ms",
    "peak_rss_mb",
]
console = Console()
if not console.is_terminal:
    console.width = 200  # a log file or pipe: do not squeeze the table into 80 columns


def settings_from(args: argparse.Namespace) -> Settings:
    if args.quick:
        return Settings(
            tasks=args.tasks or 2000, latency_seconds=2.0, deadline=args.deadline, settle=0.5
        )
    return Settings(tasks=args.tasks or 20_000, deadline=args.deadline)


def prepare(spec: PeerSpec, ensure_venv: Callable[..., None], log_dir: Path) -> dict[str, Any]:
    """Install the peer's venv if needed; return its versions, or an error."""
    try:
        ensure_venv(
            VENVS / spec.venv, [*spec.packages, *COMMON_PACKAGES], log_dir / f"pip-{spec.venv}.log"
        )
    except subprocess.CalledProcessError:
        return {"error": f"pip install failed (see {log_dir / f'pip-{spec.venv}.log'})"}
    python = VENVS / spec.venv / "bin" / "python"
    modules = [f"peers.{spec.module}_peer"]
    if spec.tracing is not None:  # what its traced producer and workers will import
        modules += ["opentelemetry.sdk.trace", "opentelemetry.exporter.otlp.proto.http"]
        if "opentelemetry-instrumentation-celery" in spec.dists:
            modules.append("opentelemetry.instrumentation.celery")
    probe = (
        "import importlib, importlib.metadata as m, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps({{d: m.version(d) for d in {spec.dists!r}}}))\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "OTEL_", "BENCH_"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), *map(str, spec.extra_pythonpath)])
    env["PYTHONPYCACHEPREFIX"] = str(VENVS / "_pycache")
    out = subprocess.run(
        [str(python), "-c", probe], env=env, cwd=HERE, capture_output=True, timeout=120, check=False
    )
    if out.returncode != 0:
        err = out.stderr.decode(errors="replace").strip().splitlines()
        return {"error": f"import failed: {err[-1] if err else out.returncode}"}
    versions: dict[str, str] = json.loads(out.stdout)
    return {"versions": versions}


def snapshot_shoal(rev: str | None, slot: str = "tree") -> tuple[Path, str]:
    """Copy ``runtime/`` (the working tree, or ``rev`` via ``git archive``) out of the repo, so
    that edits made while the bench runs cannot change what it measures; ``slot`` names the
    copy (the features step holds two: the tree's and the baseline's). Returns the directory
    to put on PYTHONPATH and a description of the source."""
    dest = VENVS / "_shoal_src" / slot
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    git = ["git", "-C", str(REPO)]
    if rev:
        archive = subprocess.run(
            [*git, "archive", rev, "runtime"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        sha = subprocess.run(
            [*git, "rev-parse", "--short", rev], capture_output=True, text=True, check=True
        ).stdout.strip()
        return dest / "runtime", f"git {rev} ({sha})"
    shutil.copytree(
        REPO / "runtime", dest / "runtime", ignore=shutil.ignore_patterns("__pycache__")
    )
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "runtime"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return dest / "runtime", f"working tree @ {head or 'no commit'}{' + edits' if dirty else ''}"


def shoal_sources(
    specs: dict[str, PeerSpec], args: argparse.Namespace
) -> dict[bool, tuple[Path, str]]:
    """Snapshot the runtime(s) the Shoal rows import (``--shoal-rev`` or the tree, and
    ``--baseline-rev`` for baseline rows) and point those rows at them, in place. Returns
    baseline? -> (the copy, its description)."""
    sources: dict[bool, tuple[Path, str]] = {}
    for name, spec in specs.items():
        if spec.venv != "shoal":
            continue
        if spec.baseline not in sources:
            rev = args.baseline_rev if spec.baseline else args.shoal_rev
            sources[spec.baseline] = snapshot_shoal(rev, "baseline" if spec.baseline else "tree")
        specs[name] = replace(spec, extra_pythonpath=[sources[spec.baseline][0]])
    return sources


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    agg: dict[str, Any] = {m: median_or_none([r.get(m) for r in runs]) for m in METRICS}
    agg["lost"] = sum(r.get("lost", 0) for r in runs)
    agg["duplicated"] = sum(r.get("duplicated", 0) for r in runs)
    errors: list[str] = []
    for r in runs:
        for step, err in r.get("errors", {}).items():
            text = f"{step}: {err}"
            if text not in errors:
                errors.append(text)
    agg["errors"] = errors or ([] if runs else ["no completed run"])
    return agg


def run_all(
    specs: dict[str, PeerSpec],
    runs: int,
    ready: list[str],
    peers: dict[str, dict[str, Any]],
    port: int,
    settings: Settings,
    log_dir: Path,
    receiver: Receiver | None,
    rotate: bool = False,
) -> None:
    for run in range(runs):
        # Interleave peers so that drift hits everyone alike; ``rotate`` (the features rows)
        # also starts each run one row later, so the same row is not always first.
        start = run % len(ready) if rotate and ready else 0
        for n in ready[start:] + ready[:start]:
            t0 = time.monotonic()
            with console.status(f"run {run + 1}/{runs}: {n}"):
                peer_run = PeerRun(specs[n], port, settings, log_dir, f"r{run}", receiver=receiver)
                result = peer_run.execute()
            peers[n]["runs"].append(result)
            note = "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
            spans = result.get("tracing")
            traced = f"spans={spans['spans']} exports={spans['exports']} " if spans else ""
            console.print(
                f"run {run + 1}/{runs} {n}: {time.monotonic() - t0:.0f}s "
                f"lost={result['lost']} dup={result['duplicated']} {traced}"
                f"{'[red]' + note if note else ''}"
            )


def run_bench(args: argparse.Namespace, ensure_venv: Callable[..., None]) -> int:
    settings = settings_from(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path: Path = args.out or RESULTS / f"throughput-{stamp}.json"
    names = args.peers.split(",")

    table = FEATURE_SPECS if args.features else SPECS
    specs = {name: table[name] for name in names}
    sources = shoal_sources(specs, args)
    peers: dict[str, dict[str, Any]] = {}
    for name in names:
        with console.status(f"preparing {name} venv"):
            peers[name] = prepare(specs[name], ensure_venv, log_dir)
        if specs[name].venv == "shoal" and "versions" in peers[name]:
            peers[name]["versions"]["shoal"] = sources[specs[name].baseline][1]
        if "error" in peers[name]:
            console.print(f"[red]{name}: {peers[name]['error']}")

    ready = [n for n in names if "error" not in peers[n]]
    for n in ready:
        peers[n]["runs"] = []
        spec = specs[n]
        peers[n]["workers"] = {"noop": spec.describe("noop"), "io": spec.describe("io")}
        peers[n]["noop_tasks"] = max(100, int(settings.tasks * spec.scale))
    interrupted = False
    traced = any(specs[n].tracing is not None for n in ready)
    try:
        with redis_server(log_dir) as port, contextlib.ExitStack() as stack:
            receiver = stack.enter_context(Receiver()) if traced else None
            console.print(f"redis-server on 127.0.0.1:{port}; logs in {log_dir}")
            if receiver is not None:
                console.print(f"OTLP/HTTP receiver for the traced rows: {receiver.endpoint}")
            run_all(
                specs, args.runs, ready, peers, port, settings, log_dir, receiver, args.features
            )
    except KeyboardInterrupt:
        interrupted = True
        console.print("[red]interrupted: reporting the runs completed so far")
    for n in ready:
        peers[n]["median"] = aggregate(peers[n]["runs"])
    if args.features:
        return report_features(args, peers, settings, out_path, stamp, interrupted)

    console.print(report.render(peers, settings, args.runs, specs))
    costs = report.tracing_costs(peers, specs)
    if costs:
        console.print(report.render_costs(costs))
    bad = [n for n in ready if peers[n]["median"]["lost"] or peers[n]["median"]["duplicated"]]
    if bad:
        console.print(f"[red]exactly-once check failed for: {', '.join(bad)}")
    table_md = report.markdown(peers, settings, specs, costs)
    console.print("\nMarkdown for README.md:\n", markup=False, highlight=False)
    print(table_md, flush=True)
    write_json(
        out_path,
        meta(args, settings, stamp, interrupted),
        {"peers": peers, "tracing_costs": costs, "markdown": table_md},
    )
    return 0


def report_features(
    args: argparse.Namespace,
    peers: dict[str, dict[str, Any]],
    settings: Settings,
    out_path: Path,
    stamp: str,
    interrupted: bool,
) -> int:
    """The features step's table, its Markdown and the JSON (see :mod:`features`)."""
    data = features.summary(peers)
    runs = min((len(e["runs"]) for e in peers.values() if "runs" in e), default=0)
    console.print(features.render(data, runs, args.baseline_rev))
    bad = [
        n
        for n, e in peers.items()
        if e.get("median", {}).get("lost") or e.get("median", {}).get("duplicated")
    ]
    if bad:
        console.print(f"[red]exactly-once check failed for: {', '.join(bad)}")
    table_md = features.markdown(data, runs, args.baseline_rev)
    console.print("\nMarkdown for bench/README.md:\n", markup=False, highlight=False)
    print(table_md, flush=True)
    info = meta(args, settings, stamp, interrupted)
    info["baseline_rev"] = args.baseline_rev
    write_json(out_path, info, {"peers": peers, "features": data, "markdown": table_md})
    return 0


def meta(
    args: argparse.Namespace, settings: Settings, stamp: str, interrupted: bool
) -> dict[str, Any]:
    return {
        "time": stamp,
        "interrupted": interrupted,
        "runs": args.runs,
        "quick": args.quick,
        "settings": vars(settings),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "redis": redis_version(),
        "loadavg_at_end": os.getloadavg(),
    }


def write_json(path: Path, info: dict[str, Any], body: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": info, **body}, indent=2, default=str))
    console.print(f"results: {path}")


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()
