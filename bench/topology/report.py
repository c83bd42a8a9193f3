"""Medians over runs, ratios to the single node, the Markdown table and the JSON file."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Metric:
    """One column: a result key, its header and how to print it."""

    key: str
    header: str
    fmt: str


METRICS = (
    Metric("noop_sync_rate", "no-op sync tasks/s", "{:,.0f}"),
    Metric("noop_async_rate", "no-op async tasks/s", "{:,.0f}"),
    Metric("enqueue_rate", "enqueue() /s", "{:,.0f}"),
    Metric("bulk_rate", "enqueue_many /s", "{:,.0f}"),
    Metric("lat_p50_ms", "latency p50 ms", "{:.2f}"),
    Metric("lat_p99_ms", "latency p99 ms", "{:.2f}"),
    Metric("cpu_ms_per_sync_task", "worker CPU ms/sync task", "{:.3f}"),
)
BASELINE = "single"


def medians(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Each metric's median over the runs that produced it (None when none did)."""
    out: dict[str, float | None] = {}
    for metric in METRICS:
        values = [r[metric.key] for r in runs if r.get(metric.key) is not None]
        out[metric.key] = statistics.median(values) if values else None
    return out


def noise(results: dict[str, list[dict[str, Any]]]) -> dict[str, float | None]:
    """Per metric, the typical run-to-run spread: over the set-ups, the median of
    (max - min) / median of their runs. Ratios closer to 1 than this are not findings."""
    out: dict[str, float | None] = {}
    for metric in METRICS:
        spreads = []
        for runs in results.values():
            values = [r[metric.key] for r in runs if r.get(metric.key) is not None]
            if len(values) > 1 and statistics.median(values):
                spreads.append((max(values) - min(values)) / statistics.median(values))
        out[metric.key] = statistics.median(spreads) if spreads else None
    return out


def ratios(table: dict[str, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Each median divided by the single node's: below 1 is slower for rates, faster for
    latencies and CPU."""
    base = table.get(BASELINE, {})
    out: dict[str, dict[str, float | None]] = {}
    for name, row in table.items():
        out[name] = {}
        for key, value in row.items():
            ref = base.get(key)
            out[name][key] = value / ref if value is not None and ref else None
    return out


def cell(metric: Metric, value: float | None, ratio: float | None, baseline: bool) -> str:
    if value is None:
        return "n/a"
    text = metric.fmt.format(value)
    return text if baseline or ratio is None else f"{text} ({ratio:.2f}x)"


def markdown(
    labels: dict[str, str],
    table: dict[str, dict[str, float | None]],
    faults: dict[str, str],
    spread: dict[str, float | None],
    runs: int,
) -> str:
    """The table: one row per set-up, each figure with its ratio to the single node's, and a
    last row with the run-to-run spread (:func:`noise`)."""
    rel = ratios(table)
    lines = [
        f"Median of {runs} run{'s' if runs != 1 else ''}; (x) = ratio to the single node.",
        "",
        "| topology | " + " | ".join(m.header for m in METRICS) + " | lost / dup |",
        "| --- |" + " ---: |" * len(METRICS) + " --- |",
    ]
    for name, row in table.items():
        cells = [cell(m, row[m.key], rel[name][m.key], name == BASELINE) for m in METRICS]
        lines.append(f"| {labels[name]} | " + " | ".join(cells) + f" | {faults[name]} |")
    cells = [half_range(spread[m.key]) for m in METRICS]
    lines.append("| *run-to-run spread (± half the range)* | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def half_range(spread: float | None) -> str:
    return "n/a" if spread is None else f"±{50 * spread:.0f} %"


def faults(runs: list[dict[str, Any]]) -> str:
    """Lost / duplicated tasks summed over the runs, and how many runs had an error."""
    lost = sum(r.get("lost", 0) for r in runs)
    dup = sum(r.get("duplicated", 0) for r in runs)
    errors = sum(1 for r in runs if r.get("errors"))
    return f"{lost} / {dup}" + (f", {errors} run(s) failed" if errors else "")


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
