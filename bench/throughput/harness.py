"""Orchestration (inside the harness venv): venvs, the redis-server, runs, table and JSON."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
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
    if spec.name == "shoal":
        versions["shoal"] = git_describe()
    return {"versions": versions}


def git_describe() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"working tree @ {out.stdout.strip() or 'no commit'}"


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
    agg["errors"] = errors
    return agg


def fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


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
            table.add_row(name, *["-"] * 10, f"[red]{entry['error']}")
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
            "[red]" + "; ".join(agg["errors"]) if agg["errors"] else "",
        )
    return table


def run_bench(args: argparse.Namespace, ensure_venv: Callable[..., None]) -> int:
    settings = settings_from(args)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = RESULTS / "logs" / stamp
    log_dir.mkdir(parents=True, exist_ok=True)
    out_path: Path = args.out or RESULTS / f"throughput-{stamp}.json"
    names = args.peers.split(",")

    peers: dict[str, dict[str, Any]] = {}
    for name in names:
        with console.status(f"preparing {name} venv"):
            peers[name] = prepare(SPECS[name], ensure_venv, log_dir)
        if "error" in peers[name]:
            console.print(f"[red]{name}: {peers[name]['error']}")

    ready = [n for n in names if "error" not in peers[n]]
    for n in ready:
        peers[n]["runs"] = []
        spec = SPECS[n]
        peers[n]["workers"] = {"noop": spec.describe("noop"), "io": spec.describe("io")}
        peers[n]["noop_tasks"] = max(100, int(settings.tasks * spec.scale))
    with redis_server(log_dir) as port:
        console.print(f"redis-server on 127.0.0.1:{port}; logs in {log_dir}")
        for run in range(args.runs):
            for n in ready:  # interleave peers so that drift hits everyone alike
                t0 = time.monotonic()
                with console.status(f"run {run + 1}/{args.runs}: {n}"):
                    result = PeerRun(SPECS[n], port, settings, log_dir, f"r{run}").execute()
                peers[n]["runs"].append(result)
                note = "; ".join(f"{k}: {v}" for k, v in result["errors"].items())
                console.print(
                    f"run {run + 1}/{args.runs} {n}: {time.monotonic() - t0:.0f}s "
                    f"lost={result['lost']} dup={result['duplicated']} "
                    f"{'[red]' + note if note else ''}"
                )
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
