"""Shoal vs Celery, RQ, Dramatiq, huey, arq, saq and taskiq on one private Redis.

    python bench/throughput/run.py [--peers shoal,celery,...] [--runs 3] [--quick] [--out F]

Any python3 >= 3.11 can start it: it creates ``bench/.venv-peers/_harness`` (rich, psutil, redis)
and re-executes itself there, then creates one venv per peer on first use (``pip install``).
See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE.parent / ".venv-peers"
HARNESS = VENVS / "_harness"
HARNESS_PACKAGES = ["rich>=13", "psutil>=5.9", "redis>=5", "hiredis"]


def ensure_venv(path: Path, packages: list[str], log: Path | None = None) -> None:
    """Create ``path`` and pip-install ``packages`` unless it already holds exactly them."""
    marker = path / ".bench-packages"
    wanted = "\n".join(sorted(packages))
    if marker.exists() and marker.read_text() == wanted:
        return
    if not (path / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True, clear=True).create(path)
    cmd = [
        str(path / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        *packages,
    ]
    print(
        f"installing into {path.relative_to(HERE.parent.parent)}: {' '.join(packages)}",
        file=sys.stderr,
        flush=True,
    )
    if log is None:
        subprocess.run(cmd, check=True)
    else:
        with log.open("w") as out:
            subprocess.run(cmd, check=True, stdout=out, stderr=subprocess.STDOUT)
    marker.write_text(wanted)


def bootstrap() -> None:
    """Re-execute inside the harness venv (created on first run)."""
    if Path(sys.prefix).resolve() == HARNESS.resolve():
        return
    VENVS.mkdir(parents=True, exist_ok=True)
    ensure_venv(HARNESS, HARNESS_PACKAGES)
    python = HARNESS / "bin" / "python"
    os.execv(python, [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def parse_args(
    argv: list[str], peer_names: list[str], feature_names: list[str], baseline_rev: str
) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--peers",
        help=f"comma-separated subset of: {','.join(peer_names)} (default: all); with "
        f"--features, of: {','.join(feature_names)}",
    )
    parser.add_argument(
        "--features",
        action="store_true",
        help="instead of the peers: what each flow and task control feature costs off and "
        "on (Shoal sync and async no-op drains, the off rows also at --baseline-rev)",
    )
    parser.add_argument(
        "--baseline-rev",
        default=baseline_rev,
        help="with --features: the git revision whose runtime the off rows are compared with "
        f"(default {baseline_rev}, before the features)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per peer; medians reported")
    parser.add_argument("--quick", action="store_true", help="small counts, for a smoke test")
    parser.add_argument(
        "--tasks",
        type=int,
        help="no-op tasks per step (default 20000, quick "
        "2000), multiplied by each peer's scale (RQ is slow)",
    )
    parser.add_argument(
        "--out", type=Path, help="JSON results file (default bench/results/throughput-<time>.json)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=120.0,
        help="seconds to wait for workers to finish one step",
    )
    parser.add_argument(
        "--shoal-rev",
        help="measure Shoal as committed at this git revision "
        "(e.g. HEAD) instead of the working tree's runtime/",
    )
    args = parser.parse_args(argv)
    names = feature_names if args.features else peer_names
    args.peers = args.peers or ",".join(names)
    unknown = set(args.peers.split(",")) - set(names)
    if unknown:
        parser.error(f"unknown peers: {', '.join(sorted(unknown))}")
    return args


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    bootstrap()
    # SIGTERM, and SIGINT even when started in the background (where it is inherited ignored),
    # unwind normally: every worker process group and the redis-server get killed on the way.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    sys.path.insert(0, str(HERE))
    from features import BASELINE_REV, FEATURE_SPECS  # after bootstrap(): the harness venv
    from harness import run_bench
    from specs import SPECS

    args = parse_args(sys.argv[1:], list(SPECS), list(FEATURE_SPECS), BASELINE_REV)
    return run_bench(args, ensure_venv)


if __name__ == "__main__":
    sys.exit(main())
