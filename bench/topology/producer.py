"""The producer of one step, a process of its own with the workers' environment.

    python producer.py {sync,async} {single,bulk,paced,warm} --run RUN [--n N] [--rate R] ...

It runs the throughput bench's driver actions (``bench/throughput/driver.py``: one at a time,
batches, a steady rate, a warm-up trickle) with :class:`tasks.Producer`, and prints their JSON.
A process of its own so that ``App()`` reads the topology's ``SHOAL_*`` variables as a user's
producer would, and the orchestrator's own connections never share its CPU time slice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

import driver
from tasks import TASKS, Producer


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=sorted(TASKS))
    parser.add_argument("action", choices=sorted(driver.ACTIONS))
    parser.add_argument("--run", required=True)
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--min-pids", type=int, default=2)
    parser.add_argument("--max-wait", type=float, default=30.0)
    args = parser.parse_args(argv)
    args.sleep = 0.0  # the driver's actions pass it on; no-op tasks ignore it
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    producer = Producer(args.kind)
    try:
        result = asyncio.run(driver.ACTIONS[args.action](producer, args))
    finally:
        producer.close()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
