"""The results as tables: the console one (rich), the tracing-cost footer, and the Markdown that
goes into README.md. Nothing here measures; it only reads the aggregated results."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from scenarios import Settings
from specs import PeerSpec


@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    fmt: str
    higher_is_better: bool


def metrics(settings: Settings) -> list[Metric]:
    return [
        Metric("noop_rate", "no-op tasks/s", ",.0f", True),
        Metric("enqueue_rate", "enqueue/s", ",.0f", True),
        Metric("bulk_rate", "bulk enq/s", ",.0f", True),
        Metric("lat_p50_ms", "lat p50 ms", ".1f", False),
        Metric("lat_p99_ms", "lat p99 ms", ".1f", False),
        Metric(
            "io_drain_s",
            f"{settings.io_tasks}\u00d7{1000 * settings.io_sleep:.0f} ms drain s",
            ".2f",
            False,
        ),
        Metric("cpu_ms_per_task", "CPU ms/task", ".2f", False),
        Metric("queue_cpu_ms_per_task", "CPU ms/task minus body", ".2f", False),
        Metric("peak_rss_mb", "peak RSS MB", ".0f", False),
    ]


# The tracing footer: what tracing costs, relative to the untraced twin of the same run.
COST_METRICS = ["noop_rate", "enqueue_rate", "bulk_rate", "cpu_ms_per_task", "lat_p99_ms"]


def fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def short(text: str, limit: int = 160) -> str:
    """Errors can be long tracebacks: the table shows their end, the JSON has them whole."""
    text = " ".join(text.split())
    return text if len(text) <= limit else "…" + text[-limit:]


def change(ratio: float | None) -> str:
    """A ratio as a signed percentage: 0.35 -> "-65 %" (with a minus sign, as in the README)."""
    if ratio is None:
        return "n/a"
    pct = 100 * (ratio - 1)
    sign = "+" if pct >= 0.5 else ("\u2212" if pct <= -0.5 else "±")
    return f"{sign}{abs(pct):.0f} %"


def run_ratios(traced: list[dict[str, Any]], twin: list[dict[str, Any]], key: str) -> float | None:
    """Median over runs of traced / untraced, each run against the same run of its twin (they
    ran minutes apart, not a whole bench apart)."""
    ratios = [
        a[key] / b[key]
        for a, b in zip(traced, twin, strict=False)
        if a.get(key) is not None and b.get(key)
    ]
    return statistics.median(ratios) if ratios else None


def tracing_costs(
    peers: dict[str, dict[str, Any]], specs: dict[str, PeerSpec]
) -> dict[str, dict[str, Any]]:
    """Per traced row measured with its twin: the ratio of each cost metric to the twin's and the
    spans received (summed over runs). Stored in the JSON and shown under the table."""
    out: dict[str, dict[str, Any]] = {}
    for name, entry in peers.items():
        spec = specs[name]
        if spec.twin is None or "runs" not in entry:
            continue
        twin = peers.get(spec.twin, {})
        ratios = {
            key: run_ratios(entry["runs"], twin["runs"], key) if "runs" in twin else None
            for key in COST_METRICS
        }
        got = [r["tracing"] for r in entry["runs"] if "tracing" in r]
        spans = {k: sum(g[k] for g in got) for k in ("exports", "spans", "producer", "consumer")}
        executed = sum(g["executed"] for g in got)
        out[name] = {
            "twin": spec.twin if "runs" in twin else None,
            "sampled": spec.tracing,
            "ratios": ratios,
            **spans,
            "consumer_per_task": spans["consumer"] / executed if executed else None,
        }
    return out


def render(
    peers: dict[str, dict[str, Any]], settings: Settings, runs: int, specs: dict[str, PeerSpec]
) -> Table:
    table = Table(
        title=f"Task queues on one Redis, 2 worker processes each "
        f"(median of {runs} run{'s' if runs > 1 else ''})"
    )
    table.add_column("peer", justify="left")
    for metric in metrics(settings):
        table.add_column(metric.header, justify="right")
    for header in ("lost", "dup"):
        table.add_column(header, justify="right")
    table.add_column("errors", justify="left")
    for name, entry in peers.items():
        if "error" in entry:
            table.add_row(name, *["-"] * 10, f"[red]{short(entry['error'])}")
            continue
        agg = entry["median"]
        bad = agg["lost"] or agg["duplicated"]
        table.add_row(
            name,
            *[fmt(agg[m.key], m.fmt) for m in metrics(settings)],
            f"[red]{agg['lost']}" if bad else str(agg["lost"]),
            f"[red]{agg['duplicated']}" if bad else str(agg["duplicated"]),
            "[red]" + short("; ".join(agg["errors"])) if agg["errors"] else "",
        )
    versions = [
        f"{name} {' '.join(f'{d}={v}' for d, v in entry['versions'].items())}"
        for name, entry in peers.items()
        if "versions" in entry and specs[name].twin is None
    ]
    table.caption = "; ".join(versions)
    return table


def render_costs(costs: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Tracing on: change against the same row untraced, same runs")
    for header in ("traced row", "vs", "no-op tasks/s", "enqueue/s", "bulk enq/s", "CPU/task"):
        table.add_column(header, justify="left" if header in ("traced row", "vs") else "right")
    for header in ("lat p99", "OTLP exports", "spans (producer / consumer)", "consumer/task"):
        table.add_column(header, justify="right")
    for name, cost in costs.items():
        table.add_row(name, cost["twin"] or "[red]twin not run", *_cost_cells(cost))
    return table


def _cost_cells(cost: dict[str, Any]) -> list[str]:
    exports = cost["exports"]
    return [
        *[change(cost["ratios"][key]) for key in COST_METRICS],
        f"{exports:,}" if exports else "[red]0",
        f"{cost['spans']:,} ({cost['producer']:,} / {cost['consumer']:,})",
        fmt(cost["consumer_per_task"], ".2f"),
    ]


def _best(rows: dict[str, dict[str, Any]], metric: Metric) -> float | None:
    values = [row[metric.key] for row in rows.values() if row.get(metric.key) is not None]
    if not values:
        return None
    return max(values) if metric.higher_is_better else min(values)


def markdown(
    peers: dict[str, dict[str, Any]],
    settings: Settings,
    specs: dict[str, PeerSpec],
    costs: dict[str, dict[str, Any]],
) -> str:
    """The README's tables: every row (bold: the best of the untraced rows in each column), then
    the tracing rows' change against their untraced twins."""
    done = {n: e["median"] for n, e in peers.items() if "median" in e}
    ms = metrics(settings)
    best = {m.key: _best({n: r for n, r in done.items() if specs[n].twin is None}, m) for m in ms}
    lines = [
        "| peer | " + " | ".join(m.header for m in ms) + " | lost | dup |",
        "| --- |" + " ---: |" * (len(ms) + 2),
    ]
    for name, agg in done.items():
        label = specs[name].title(peers[name].get("versions", {}))
        traced = specs[name].twin is not None
        cells = []
        for m in ms:
            text = fmt(agg[m.key], m.fmt)
            bold = not traced and agg[m.key] is not None and agg[m.key] == best[m.key]
            cells.append(f"**{text}**" if bold else text)
        faults = [f"**{agg[k]}**" if agg[k] else "0" for k in ("lost", "duplicated")]
        name_cell = f"**{label}**" if label.startswith("shoal") and not traced else label
        if agg["errors"]:  # the figures of a failed step are missing: say so where it shows
            failed = sorted({e.split(":", 1)[0] for e in agg["errors"]})
            name_cell += f" (failed: {', '.join(failed)}; see the JSON)"
        lines.append(f"| {name_cell} | " + " | ".join([*cells, *faults]) + " |")
    if costs:
        lines += ["", *markdown_costs(costs, peers, specs)]
    return "\n".join(lines)


def markdown_costs(
    costs: dict[str, dict[str, Any]],
    peers: dict[str, dict[str, Any]],
    specs: dict[str, PeerSpec],
) -> list[str]:
    lines = [
        "| tracing on | sampled | no-op tasks/s | enqueue/s | bulk enq/s | CPU ms/task "
        "| lat p99 | spans received (producer / consumer) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, cost in costs.items():
        label = specs[name].title(peers[name].get("versions", {}))
        cells = [change(cost["ratios"][key]) for key in COST_METRICS]
        spans = f"{cost['spans']:,} ({cost['producer']:,} / {cost['consumer']:,})"
        sampled = f"{100 * cost['sampled']:.0f} %"
        lines.append(f"| {label} | {sampled} | " + " | ".join([*cells, spans]) + " |")
    lines.append("")
    lines.append(
        "Each figure: the traced row against the same set-up untraced, run for run (median of "
        "the per-run ratios). \u221240 % on a rate is 40 % fewer per second; +40 % on CPU or "
        "latency is 40 % more."
    )
    return lines
