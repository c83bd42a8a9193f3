"""Writes the shipped arrival traces (``time,count``: tasks arriving in that second).

    python bench/autoscale/traces/make_traces.py      # rewrites the CSVs next to this file

Deterministic: Poisson counts from a seeded RNG, so the files only change if this does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw by inversion (means here stay below ~100, so the loop is short)."""
    if mean <= 0:
        return 0
    threshold, count, product = math.exp(-mean), 0, rng.random()
    while product > threshold and count < 10 * mean + 50:
        count += 1
        product *= rng.random()
    return count


def burst_from_idle(t: int) -> float:
    """Idle, then a batch of 600 tasks at t = 75 s and 20 tasks/s for 5 min, then idle again
    (40 min in all: both policies get time to scale back to zero)."""
    if t == 75:
        return 600.0
    return 20.0 if 75 < t <= 375 else 0.0


def diurnal_ramp(t: int) -> float:
    """A compressed day: 1 task/s, rising smoothly to 40 tasks/s at 30 min, back to 1 at 60."""
    return 1.0 + 39.0 * math.sin(math.pi * t / 3600) ** 2


def periodic_bursts(t: int) -> float:
    """A cron-like producer: every 5 min (from t = 45 s), 400 tasks over 10 s, on top of a
    0.5 task/s background trickle; 60 min."""
    phase = (t - 45) % 300
    return 0.5 + (40.0 if t >= 45 and phase < 10 else 0.0)


TRACES: dict[str, tuple[int, Callable[[int], float], bool]] = {
    # name: (seconds, rate or count per second, whether counts are Poisson draws)
    "burst_from_idle": (2400, burst_from_idle, False),
    "diurnal_ramp": (3600, diurnal_ramp, True),
    "periodic_bursts": (3600, periodic_bursts, True),
}


def main() -> None:
    for seed, (name, (seconds, rate, noisy)) in enumerate(TRACES.items()):
        rng = random.Random(seed)
        lines = ["time,count"]
        for t in range(seconds):
            mean = rate(t)
            lines.append(f"{t},{poisson(rng, mean) if noisy else round(mean)}")
        path = HERE / f"{name}.csv"
        path.write_text("\n".join(lines) + "\n")
        total = sum(int(line.split(",")[1]) for line in lines[1:])
        print(f"{path.name}: {seconds} s, {total} tasks")


if __name__ == "__main__":
    main()
