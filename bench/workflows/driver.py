"""Runs one scenario in a peer's venv and prints its duration (seconds, JSON) on stdout:
``python driver.py shoal|celery chord|chain|group N``. Time runs from the call that enqueues the
workflow until its final result is in the producer's hands."""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def shoal(scenario: str, n: int) -> Any:
    from shoal import chain, chord, group
    from wf_shoal import inc, total

    if scenario == "chord":
        return chord([inc.s(i) for i in range(n)], total.s()).enqueue().result(timeout=600)
    if scenario == "group":
        return group([inc.s(i) for i in range(n)]).enqueue().result(timeout=600)
    return chain(inc.s(0), *[inc.s() for _ in range(n - 1)]).enqueue().result(timeout=600)


def celery(scenario: str, n: int) -> Any:
    from celery import chain, chord, group

    from wf_celery import inc, total

    if scenario == "chord":
        return chord([inc.s(i) for i in range(n)])(total.s()).get(timeout=600)
    if scenario == "group":
        return group([inc.s(i) for i in range(n)]).apply_async().get(timeout=600)
    return chain(inc.s(0), *[inc.s() for _ in range(n - 1)]).apply_async().get(timeout=600)


def main() -> None:
    peer, scenario, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    run = shoal if peer == "shoal" else celery
    started = time.perf_counter()
    result = run(scenario, n)
    elapsed = time.perf_counter() - started
    expected = {"chord": n * (n + 1) // 2, "group": list(range(1, n + 1)), "chain": n}[scenario]
    if result != expected:
        raise SystemExit(f"{peer} {scenario}: wrong result {str(result)[:80]}")
    print(json.dumps(elapsed))


if __name__ == "__main__":
    main()
