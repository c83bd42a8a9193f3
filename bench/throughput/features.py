"""The features step (``run.py --features``): what each of issue 18's flow and task control
features costs when off and when on, in no-op drains of Shoal sync and async tasks.

Every row is a Shoal configuration (``peers/shoal_features.py``, ``BENCH_FEATURE``) with the
same worker set-up as the ``shoal-sync`` / ``shoal`` rows; one visit (:meth:`PeerRun.step_features`)
pre-fills N tasks with the configuration's enqueue, drains them with 2 worker processes and
checks that each ran exactly once and that the feature was really on (``feature_proof``). The
``off`` rows run twice: on the working tree (or ``--shoal-rev``) and on ``--baseline-rev``, the
runtime before the features, so that "off costs nothing" is a ratio within the same run.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from report import change, fmt, run_ratios
from specs import (
    PeerSpec,
    _shoal,
    _shoal_async_conc,
    _shoal_describe,
    _shoal_packages,
    _shoal_sync_conc,
)

BASELINE_REV = "d681d96"
"""The commit before the issue-18 work: the runtime without any of these features."""


@dataclass(frozen=True)
class Feature:
    name: str  # BENCH_FEATURE
    label: str  # the table's row
    work: str  # what the feature adds per message (the README's sentence)


FEATURES = [
    Feature("off", "off (plain `enqueue_many` + worker)", "nothing: the no-op row as it is"),
    Feature(
        "queue-rate",
        'queue rate limit, never binds (`configure_queue(q, rate_limit="100000/s")`)',
        "each fetch also reads the queue's config and clock and writes the clock",
    ),
    Feature(
        "task-rate",
        'task rate limit, never binds (`@app.task(rate_limit="100000/s")`)',
        "one `throttle.lua` round trip per message before it starts",
    ),
    Feature(
        "prio0",
        "every message `priority=0`",
        "the priority fetch path: a sorted set beside the waiting list, one message per loop",
    ),
    Feature(
        "prio-mixed",
        "half `priority=9`, half default, interleaved",
        "the mixed path: priority-9 tokens at the fetch end are rotated past",
    ),
    Feature(
        "progress",
        "`shoal.progress(1, 2)` in every run",
        "one report per run, written by the worker's loop (a SET with a TTL)",
    ),
    Feature(
        "expires",
        "every message `expires=600`",
        "an `expires_at` option in the envelope, checked when the message starts",
    ),
]
BY_NAME = {f.name: f for f in FEATURES}
BASE = "@base"


def _row(feature: str, sync: bool, baseline: bool = False) -> PeerSpec:
    kind = "sync" if sync else "async"
    module = f"shoal_features_{kind}"
    return PeerSpec(
        f"{kind}:{feature}{BASE if baseline else ''}",
        "shoal",
        module,
        _shoal_packages(),
        ["redis"],
        _shoal(f"{module}_peer", None if sync else 64),
        _shoal_sync_conc if sync else _shoal_async_conc,
        _shoal_describe(sync=sync),
        async_tasks=not sync,
        bulk=True,
        label=f"shoal {kind}, {feature}{' (baseline)' if baseline else ''}",
        feature=feature,
        baseline=baseline,
    )


def _rows() -> list[PeerSpec]:
    """Sync and async of each feature side by side; the baseline's ``off`` right after the
    tree's (the runs loop rotates the order, keeping neighbours close in time)."""
    rows: list[PeerSpec] = []
    for feature in FEATURES:
        for sync in (True, False):
            rows.append(_row(feature.name, sync))
            if feature.name == "off":
                rows.append(_row(feature.name, sync, baseline=True))
    return rows


FEATURE_SPECS: dict[str, PeerSpec] = {spec.name: spec for spec in _rows()}


# ---- proof that the feature was on ---------------------------------------------------------


def expected_proof(feature: str, n: int) -> dict[str, Any]:
    """What Redis shows after a visit of ``feature`` with ``n`` tasks (see scenarios)."""
    return {
        "ready_before_drain": {"prio0": n, "prio-mixed": n // 2}.get(feature, 0),
        "expires_in_sample": feature == "expires",
        "queue_rate_config": feature == "queue-rate",
        "queue_clock": feature == "queue-rate",
        "task_clock": feature == "task-rate",
        "progress_reports": n if feature == "progress" else 0,
    }


# ---- the report ----------------------------------------------------------------------------

COLUMNS = [
    ("noop_rate", "tasks/s", ",.0f"),
    ("cpu_ms_per_task", "CPU ms/task", ".3f"),
    ("redis_cpu_ms_per_task", "Redis CPU ms/task", ".3f"),
]


def spread(runs: list[dict[str, Any]], key: str) -> float | None:
    """½ (max - min) / median of one row's runs: a ratio closer to 1 than this is noise."""
    values = [r[key] for r in runs if r.get(key) is not None]
    if len(values) < 2:
        return None
    return (max(values) - min(values)) / 2 / statistics.median(values)


def summary(peers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per feature and kind: medians, the median per-run ratio to ``off`` of the same kind and
    run, each row's spread; and ``off`` against the baseline revision, per run."""
    rows: dict[str, Any] = {}
    for name, entry in peers.items():
        if "runs" not in entry:
            continue
        kind, feature = name.split(":", 1)
        twin = peers.get(f"{kind}:off", {}).get("runs", [])
        rows[name] = {
            "kind": kind,
            "feature": feature,
            "median": {k: entry["median"].get(k) for k, _, _ in COLUMNS},
            "vs_off": {k: run_ratios(entry["runs"], twin, k) for k, _, _ in COLUMNS},
            "spread": {k: spread(entry["runs"], k) for k, _, _ in COLUMNS},
            "lost": entry["median"]["lost"],
            "duplicated": entry["median"]["duplicated"],
            "errors": entry["median"]["errors"],
        }
    baseline: dict[str, Any] = {}
    for kind in ("sync", "async"):
        ours = peers.get(f"{kind}:off", {}).get("runs")
        base = peers.get(f"{kind}:off{BASE}", {}).get("runs")
        if not ours or not base:
            continue
        for key, _, _ in COLUMNS:
            ratios = [
                a[key] / b[key]
                for a, b in zip(ours, base, strict=False)
                if a.get(key) is not None and b.get(key)
            ]
            if ratios:
                baseline[f"{kind}:{key}"] = {
                    "median": statistics.median(ratios),
                    "min": min(ratios),
                    "max": max(ratios),
                    "per_run": ratios,
                }
    spreads = {
        f"{kind}:{key}": _median([r["spread"][key] for r in rows.values() if r["kind"] == kind])
        for kind in ("sync", "async")
        for key, _, _ in COLUMNS
    }
    return {"rows": rows, "baseline": baseline, "spread": spreads}


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _cells(rows: dict[str, Any], kind: str, feature: str) -> list[str]:
    row = rows.get(f"{kind}:{feature}")
    if row is None:
        return ["-"] * len(COLUMNS)
    out = []
    for key, _, spec in COLUMNS:
        text = fmt(row["median"][key], spec)
        if feature != "off" and not feature.endswith(BASE) and row["vs_off"][key] is not None:
            text += f" ({change(row['vs_off'][key])})"
        out.append(text)
    return out


def _faults(rows: dict[str, Any], feature: str) -> str:
    got = [rows[f"{k}:{feature}"] for k in ("sync", "async") if f"{k}:{feature}" in rows]
    lost = sum(r["lost"] for r in got)
    dup = sum(r["duplicated"] for r in got)
    errors = [e for r in got for e in r["errors"]]
    text = f"{lost} / {dup}"
    return text + (f" (errors: {'; '.join(errors)})" if errors else "")


def _table_rows(data: dict[str, Any], baseline_rev: str) -> list[tuple[str, list[str], str]]:
    rows = data["rows"]
    out = []
    for feature in FEATURES:
        cells = [*_cells(rows, "sync", feature.name), *_cells(rows, "async", feature.name)]
        out.append((feature.label, cells, _faults(rows, feature.name)))
        if feature.name == "off" and any(k.endswith(BASE) for k in rows):
            base = f"off{BASE}"
            cells = [*_cells(rows, "sync", base), *_cells(rows, "async", base)]
            out.append((f"off, runtime at `{baseline_rev}` (before)", cells, _faults(rows, base)))
    return out


def headers() -> list[str]:
    return [f"{kind} {title}" for kind in ("sync", "async") for _, title, _ in COLUMNS]


def render(data: dict[str, Any], runs: int, baseline_rev: str) -> Table:
    table = Table(
        title=f"Flow and task control, cost off and on: no-op drains, 2 worker processes "
        f"(median of {runs}; (±x %) against off in the same runs)"
    )
    table.add_column("configuration", justify="left")
    for header in headers():
        table.add_column(header, justify="right")
    table.add_column("lost / dup", justify="left")
    for label, cells, faults in _table_rows(data, baseline_rev):
        table.add_row(label, *cells, faults)
    table.caption = baseline_line(data, baseline_rev)
    return table


def baseline_line(data: dict[str, Any], baseline_rev: str) -> str:
    parts = []
    for key, value in data["baseline"].items():
        kind, metric = key.split(":")
        title = dict((k, t) for k, t, _ in COLUMNS)[metric]
        noise = data["spread"].get(key)
        parts.append(
            f"{kind} {title} {value['median']:.3f}x (runs {value['min']:.3f}-{value['max']:.3f}"
            f"{f'; spread ±{100 * noise:.0f} %' if noise is not None else ''})"
        )
    if not parts:
        return ""
    return f"off, this runtime ÷ `{baseline_rev}`, per run: " + ", ".join(parts)


def markdown(data: dict[str, Any], runs: int, baseline_rev: str) -> str:
    lines = [
        "| configuration | " + " | ".join(headers()) + " | lost / dup |",
        "| --- |" + " ---: |" * len(headers()) + " --- |",
    ]
    for label, cells, faults in _table_rows(data, baseline_rev):
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {faults} |")
    spreads = [data["spread"].get(f"{k}:{key}") for k in ("sync", "async") for key, _, _ in COLUMNS]
    spread_cells = [fmt(None if v is None else 100 * v, ".0f").replace("n/a", "-") for v in spreads]
    lines.append(
        "| *run-to-run spread (± half the range)* | "
        + " | ".join(f"±{c} %" if c != "-" else c for c in spread_cells)
        + " | |"
    )
    lines += ["", f"Median of {runs} runs. {baseline_line(data, baseline_rev)}"]
    return "\n".join(lines)
