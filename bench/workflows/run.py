"""Workflows: Shoal against Celery (the canvas everyone knows) on one private Redis, same run.

    python bench/workflows/run.py [--runs 3] [--members 1000] [--steps 100]

Run it with the project's venv (``.venv/bin/python``): Shoal comes from there; Celery 5 gets a
venv of its own under ``bench/.venv-peers/celery`` (the throughput bench's, created on first
use). Each peer runs two worker processes (the reference machine has 2 cores): ``shoal worker
--processes 2 --concurrency 64`` (async tasks) and ``celery worker --pool prefork
--concurrency 2``; Celery uses Redis as its result backend, which a chord needs. Scenarios, each
timed from the enqueueing call to the final result in the producer's hands (median of the runs,
after one small warm-up):

* chord: ``--members`` no-op members, then a callback summing their results;
* group: ``--members`` no-op members, results gathered in order;
* chain: ``--steps`` no-op steps, each result fed to the next.
Not part of the test suite."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from shoal.protocol.server import LocalRedis

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE.parent / "throughput"))
from run import ensure_venv  # noqa: E402  (the throughput bench's venv maker)

CELERY_VENV = REPO / "bench" / ".venv-peers" / "celery"
CELERY_PACKAGES = ["celery[redis]==5.7.0", "redis", "hiredis"]


def peer_python(peer: str) -> str:
    return sys.executable if peer == "shoal" else str(CELERY_VENV / "bin" / "python")


def start_workers(peer: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    if peer == "shoal":
        argv = [sys.executable, "-m", "shoal", "worker", "wf_shoal", "--processes", "2",
                "--concurrency", "64", "--log-level", "WARNING"]  # fmt: skip
    else:
        argv = [str(CELERY_VENV / "bin" / "celery"), "-A", "wf_celery", "worker", "--pool",
                "prefork", "--concurrency", "2", "--loglevel", "WARNING", "-Q", "wf"]  # fmt: skip
    out = log.open("wb")
    return subprocess.Popen(argv, env=env, cwd=HERE, stdout=out, stderr=subprocess.STDOUT)


def timed(peer: str, scenario: str, n: int, env: dict[str, str]) -> float:
    out = subprocess.run(
        [peer_python(peer), str(HERE / "driver.py"), peer, scenario, str(n)],
        env=env, cwd=HERE, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"{peer} {scenario} failed:\n{out.stderr[-3000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--members", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    ensure_venv(CELERY_VENV, CELERY_PACKAGES)
    sizes = {"chord": args.members, "group": args.members, "chain": args.steps}
    results: dict[str, dict[str, float]] = {}
    with LocalRedis() as redis_server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
        env |= {"SHOAL_REDIS_URL": redis_server.url, "BENCH_REDIS_URL": redis_server.url,
                "PYTHONPATH": str(HERE)}  # fmt: skip
        logs = REPO / "bench" / "results" / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for peer in ("shoal", "celery"):
            workers = start_workers(peer, env, logs / f"workflows-{peer}.log")
            try:
                timed(peer, "chord", 10, env)  # warm-up: workers up, connections open
                for scenario, n in sizes.items():
                    runs = [timed(peer, scenario, n, env) for _ in range(args.runs)]
                    results.setdefault(scenario, {})[peer] = statistics.median(runs)
                    print(f"{peer:>6} {scenario:<5} n={n:<5} runs={[round(r, 3) for r in runs]}")
            finally:
                workers.terminate()
                workers.wait(60)
            time.sleep(1)
    print()
    print("| scenario | size | Shoal | Celery | Shoal speed-up |")
    print("| --- | --- | --- | --- | --- |")
    for scenario, by_peer in results.items():
        s, c = by_peer["shoal"], by_peer["celery"]
        print(f"| {scenario} | {sizes[scenario]} | {s:.2f} s | {c:.2f} s | {c / s:.1f}x |")


if __name__ == "__main__":
    main()
