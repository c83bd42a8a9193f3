"""Writes the shipped arrival traces (``time,count``: tasks arriving in that second; a scheduled
trace adds ``kind,schedule``: ``scheduled`` and the schedule's name for the tasks a schedule
produced).

    python bench/autoscale/traces/make_traces.py      # rewrites the CSVs next to this file

Deterministic: every trace draws from its own seeded RNG (seed = its place in ``TRACES``), so the
files only change if this does, and adding a trace leaves the others as they were.
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


def diurnal_noisy(rng: random.Random, seconds: int) -> list[float]:
    """A compressed day with two peaks (18/s at 20 min, 30/s at 45 min) over 2/s, and the rate
    itself noisy: a log-normal factor (sigma ~0.3) that drifts every 15 s, so the load wobbles
    by a third around the curve, not only by Poisson noise."""
    out, log_factor = [], 0.0
    for t in range(seconds):
        if t % 15 == 0:  # AR(1): each 15 s keeps 70 % of the drift and adds fresh noise
            log_factor = 0.7 * log_factor + rng.gauss(0.0, 0.3 * math.sqrt(1 - 0.49))
        curve = (
            2.0
            + 16.0 * math.exp(-(((t - 1200) / 420) ** 2))
            + 28.0 * math.exp(-(((t - 2700) / 480) ** 2))
        )
        out.append(curve * math.exp(log_factor))
    return out


def idle_bursts(rng: random.Random, seconds: int) -> list[float]:
    """Bursts separated by silence: every 6 to 12 min (drawn), 100 to 400 tasks (drawn) over
    20 s, nothing in between; every burst meets a fleet that could be at zero."""
    out = [0.0] * seconds
    t = 60
    while t + 20 <= seconds:
        size = rng.randint(100, 400)
        for s in range(t, t + 20):
            out[s] = size / 20
        t += rng.randint(360, 720)
    return out


def slow_leak(t: int) -> float:
    """One task every 20 s, all along (60 min): a trickle that never lets a fleet idle."""
    return 1.0 if t % 20 == 0 else 0.0


SCHEDULES = [
    # name, period (s), offset (s), mean tasks per run
    ("sync", 60, 30, 20),
    ("reports", 300, 0, 100),
    ("rollup", 1200, 420, 200),
]


def scheduled_batches(rng: random.Random, seconds: int) -> list[str]:
    """Schedules only (3 h): ``sync`` every minute at :30 (~20 tasks), ``reports`` every 5 min
    (~100), ``rollup`` every 20 min at 7 min past (~200); each run's size varies by up to 15 %
    (a run produces what its data says), all its tasks enqueued within its second. The first
    run of each schedule has no previous run to size a warm fleet from: 3 h keeps those three
    runs (~320 tasks) under 4 % of the tasks, as they are in a day of a real deployment."""
    lines = ["time,count,kind,schedule"]
    for t in range(seconds):
        for name, period, offset, mean in SCHEDULES:
            if t >= offset and (t - offset) % period == 0:
                count = round(mean * rng.uniform(0.85, 1.15))
                lines.append(f"{t},{count},scheduled,{name}")
    return lines


Rates = Callable[[random.Random, int], list[float]]


def per_second(rate: Callable[[int], float]) -> Rates:
    """A rate that depends on the second only (no draws of its own)."""
    return lambda _rng, seconds: [rate(t) for t in range(seconds)]


TRACES: dict[str, tuple[int, Rates, bool]] = {
    # name: (seconds, rate or count of each second, whether counts are Poisson draws)
    "burst_from_idle": (2400, per_second(burst_from_idle), False),
    "diurnal_ramp": (3600, per_second(diurnal_ramp), True),
    "periodic_bursts": (3600, per_second(periodic_bursts), True),
    "diurnal_noisy": (3600, diurnal_noisy, True),
    "idle_bursts": (3600, idle_bursts, True),
    "slow_leak": (3600, per_second(slow_leak), False),
}
SCHEDULED: dict[str, int] = {"scheduled_batches": 10_800}


def main() -> None:
    for seed, (name, (seconds, rate, noisy)) in enumerate(TRACES.items()):
        rng = random.Random(seed)
        lines = ["time,count"]
        for t, mean in enumerate(rate(rng, seconds)):
            lines.append(f"{t},{poisson(rng, mean) if noisy else round(mean)}")
        write(name, lines, seconds)
    for seed, (name, seconds) in enumerate(SCHEDULED.items(), start=len(TRACES)):
        write(name, scheduled_batches(random.Random(seed), seconds), seconds)


def write(name: str, lines: list[str], seconds: int) -> None:
    path = HERE / f"{name}.csv"
    path.write_text("\n".join(lines) + "\n")
    total = sum(int(line.split(",")[1]) for line in lines[1:])
    print(f"{path.name}: {seconds} s, {total} tasks")


if __name__ == "__main__":
    main()
