"""``python -m bench.autoscale --trace FILE --policy shoal|keda`` prints one JSON object;
``python -m bench.autoscale --all`` runs every shipped trace with both policies, prints the
markdown table, writes RESULTS.md and one PNG per trace in results/."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .keda import KedaConfig, KedaHpa
from .shoal_policy import ShoalController, equivalent_policy
from .simulator import Controller, Result, Workload, load_trace, simulate

HERE = Path(__file__).resolve().parent


def make_controller(name: str, workload: Workload, args: argparse.Namespace) -> Controller:
    if name == "shoal":
        return ShoalController(equivalent_policy(workload, args.target_wait))
    return KedaHpa(KedaConfig(max_replicas=workload.max_replicas), seed=args.seed)


def run(trace: Path, policy: str, workload: Workload, args: argparse.Namespace) -> Result:
    controller = make_controller(policy, workload, args)
    result = simulate(load_trace(trace), controller, workload)
    if args.explain and isinstance(controller, ShoalController):
        for t, replicas, reason in controller.reasons:
            print(f"{t:8.1f}s → {replicas:3d}  {reason}", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscale", description=__doc__)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--trace", type=Path, help="CSV time,count (tasks arriving that second)")
    mode.add_argument("--all", action="store_true", help="every trace in --traces, both policies")
    parser.add_argument("--policy", choices=["shoal", "keda"], default="shoal")
    parser.add_argument("--traces", type=Path, default=HERE / "traces")
    parser.add_argument("--service", type=float, default=1.0, help="seconds per task (1)")
    parser.add_argument("--concurrency", type=int, default=4, help="tasks per replica (4)")
    parser.add_argument("--startup", type=float, default=10.0, help="pod start-up, s (10)")
    parser.add_argument("--max-replicas", type=int, default=100, help="(100)")
    parser.add_argument("--seed", type=int, default=0, help="KEDA's random scale-in victims (0)")
    parser.add_argument(
        "--target-wait", type=float, default=None, help="Shoal's targetWaitSeconds (unset)"
    )
    parser.add_argument("--explain", action="store_true", help="Shoal's decisions on stderr")
    parser.add_argument("--no-plots", action="store_true", help="--all: skip the PNGs")
    parser.add_argument("--out", type=Path, default=HERE, help="--all: RESULTS.md, results/")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.max_replicas < 1 or args.service <= 0 or args.startup < 0:
        parser.error("--concurrency and --max-replicas must be ≥ 1, --service > 0, --startup ≥ 0")
    workload = Workload(args.service, args.concurrency, args.startup, args.max_replicas)
    if not args.all:
        print(json.dumps(run(args.trace, args.policy, workload, args).summary()))
        return 0
    from .report import write_all

    traces = sorted(args.traces.glob("*.csv"))
    if not traces:
        parser.error(f"no *.csv in {args.traces}")
    results = {t.stem: {p: run(t, p, workload, args) for p in ("shoal", "keda")} for t in traces}
    print(write_all(results, workload, args, plots=not args.no_plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
