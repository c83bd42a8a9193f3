"""Orchestration (inside the harness venv): venvs, the redis-server, runs, table and JSON."""

from __future__ import annotations

import argparse
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
from rich.table import Table

from common import median_or_none, redis_server
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
    probe = (
        "import importlib, importlib.metadata as m, json, sys\n"
        f"importlib.import_module('peers.{spec.module}_peer')\n"
        f"print(json.dumps({{d: m.version(d) for d in {spec.dists!r}}}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
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


def snapshot_shoal(rev: str | None) -> tuple[Path, str]:
    """Copy ``runtime/`` (the working tree, or ``rev`` via ``git archive``) out of the repo, so
    that edits made while the bench runs cannot change what it measures. Returns the directory
    to put on PYTHONPATH and a description of the source."""
    dest = VENVS / "_shoal_src"
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


def fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def short(text: str, limit: int = 160) -> str:
    """Errors can be long tracebacks: the table shows their end, the JSON has them whole."""
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-limit:]


def render(peers: dict[str, dict[str, Any]], settings: Settings, runs: int) -> Table:
    table = Table(
        title=f"Task queues on one Redis, 2 worker processes each "
        f"(median of {runs} run{'s' if runs > 1 else ''})"
    )
    for name, justify in [
        ("peer", "left"),
        ("no-op tasks/s", "right"),
        ("enqueue/s", "right"),
        ("bulk enq/s", "right"),
        ("lat p50 ms", "right"),
        ("lat p99 ms", "right"),
        (f"{settings.io_tasks}x{1000 * settings.io_sleep:.0f}ms drain s", "right"),
        ("CPU ms/task", "right"),
        ("peak RSS MB", "right"),
        ("lost", "right"),
        ("dup", "right"),
        ("errors", "left"),
    ]:
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name, entry in peers.items():
        if "error" in entry:
            table.add_row(name, *["-"] * 10, f"[red]{short(entry['error'])}")
            continue
        agg = entry["median"]
        bad = agg["lost"] or agg["duplicated"]
        table.add_row(
            name,
            fmt(agg["noop_rate"], ",.0f"),
            fmt(agg["enqueue_rate"], ",.0f"),
            fmt(agg["bulk_rate"], ",.0f"),
            fmt(agg["lat_p50_ms"], ".1f"),
            fmt(agg["lat_p99_ms"], ".1f"),
            fmt(agg["io_drain_s"], ".2f"),
            fmt(agg["cpu_ms_per_task"], ".2f"),
            fmt(agg["peak_rss_mb"], ".0f"),
            f"[red]{agg['lost']}" if bad else str(agg["lost"]),
            f"[red]{agg['duplicated']}" if bad else str(agg["duplicated"]),
            "[red]" + short("; ".join(agg["errors"])) if agg["errors"] else "",
        )
    versions = [
        f"{name} {' '.join(f'{d}={v}' for d, v in entry['versions'].items())}"
        for name, entry in peers.items()
        if "versions" in entry
    ]
    table.caption = "; ".join(versions)
    return table


def run_all(
    specs: dict[str, PeerSpec],
    runs: int,
    ready: list[str],
    peers: dict[str, dict[str, Any]],
    port: int,
    settings: Settings,
    log_dir: Path,
) -> None:
    for run in range(runs):
        for n in ready:  # interleave peers so that drift hits everyone alike
            t0 = time.monotonic()
            with console.status(f"run {run + 1}/{runs}: {n}"):
                result = PeerRun(specs[n], port, settings, log_dir, f"r{run}").execute()
            peers[n]["runs"].append(result)
            note = "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
            console.print(
                f"run {run + 1}/{runs} {n}: {time.monotonic() - t0:.0f}s "
                f"lost={result['lost']} dup={result['duplicated']} "
                f"{'[red]' + note if note else ''}"
            )


def run_bench(args: argparse.Namespace, ensure_venv: Callable[..., None]) -> int:
    settings = settings_from(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path: Path = args.out or RESULTS / f"throughput-{stamp}.json"
    names = args.peers.split(",")

    specs = {name: SPECS[name] for name in names}
    shoal_source = None
    if "shoal" in specs:
        path, shoal_source = snapshot_shoal(args.shoal_rev)
        specs["shoal"] = replace(specs["shoal"], extra_pythonpath=[path])
    peers: dict[str, dict[str, Any]] = {}
    for name in names:
        with console.status(f"preparing {name} venv"):
            peers[name] = prepare(specs[name], ensure_venv, log_dir)
        if name == "shoal" and "versions" in peers[name]:
            peers[name]["versions"]["shoal"] = shoal_source
        if "error" in peers[name]:
            console.print(f"[red]{name}: {peers[name]['error']}")

    ready = [n for n in names if "error" not in peers[n]]
    for n in ready:
        peers[n]["runs"] = []
        spec = specs[n]
        peers[n]["workers"] = {"noop": spec.describe("noop"), "io": spec.describe("io")}
        peers[n]["noop_tasks"] = max(100, int(settings.tasks * spec.scale))
    interrupted = False
    try:
        with redis_server(log_dir) as port:
            console.print(f"redis-server on 127.0.0.1:{port}; logs in {log_dir}")
            run_all(specs, args.runs, ready, peers, port, settings, log_dir)
    except KeyboardInterrupt:
        interrupted = True
        console.print("[red]interrupted: reporting the runs completed so far")
    for n in ready:
        peers[n]["median"] = aggregate(peers[n]["runs"])

    console.print(render(peers, settings, args.runs))
    bad = [n for n in ready if peers[n]["median"]["lost"] or peers[n]["median"]["duplicated"]]
    if bad:
        console.print(f"[red]exactly-once check failed for: {', '.join(bad)}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(
        json.dumps(
            {
                "meta": {
                    "time": stamp,
                    "interrupted": interrupted,
                    "runs": args.runs,
                    "quick": args.quick,
                    "settings": vars(settings),
                    "cpus": os.cpu_count(),
                    "machine": platform.platform(),
                    "python": platform.python_version(),
                    "redis": redis_version(),
                },
                "peers": peers,
            },
            indent=2,
            default=str,
        )
    )
    console.print(f"results: {out_path}")
    return 0


def redis_version() -> str:
    out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()
