"""The Grafana dashboard (charts/shoal/dashboards/shoal.json): every query names only metrics and
labels Shoal exports, and the chart ships it as a ConfigMap for the Grafana sidecar.

What Shoal exports is read from a real ``shoal worker --metrics-port`` scraped over HTTP after it
ran tasks to each verdict (ok, failed, retried, dead): a family only appears in the multiprocess
exposition once a sample was written, so the worker is made to write every one. The operator's
families are read from its registry, exposed as its ``/metrics`` serves them, after one call of
each recording function its handlers use (tests/operator/test_operator_metrics.py scrapes the
running operator); a family of the registry that none of them fills fails the test. The PromQL is
read by a small extractor (selectors, ``by``/``on`` label lists, range brackets, strings); it is
tested on its own, and the check is shown to fail on a dashboard naming a metric that does not
exist.
"""

from __future__ import annotations

import ast
import copy
import json
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from test_chart import CHART, KUBERNETES_VERSION, NAMESPACE, RELEASE, find, helm, render

from crd_schema import ROOT
from helpers import wait_for
from shoal import App
from shoal.protocol.server import free_port
from shoal_operator import metrics as operator_metrics
from shoal_operator.errors import MissingReference

DASHBOARD = CHART / "dashboards" / "shoal.json"

TARGET_LABELS = frozenset({"namespace", "pod", "container", "endpoint", "job", "instance"})
"""Labels Prometheus adds to every scraped series (a PodMonitor's target labels), not Shoal's."""

_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
    | {"and", "or", "unless", "offset", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_NAME = re.compile(r"(?<![\w.$:])[A-Za-z_:][\w:]*+(?!\s*\()")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([A-Za-z_]\w*)\s*\)\s*$")


# --- reading PromQL -----------------------------------------------------------------------------


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """(metric names, label names) an expression uses: metric names are the identifiers that
    are not functions, keywords or labels; label names come from matchers and label lists."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\[[^\]]*\]", "", text)  # range and subquery brackets ($__rate_interval)
    labels: set[str] = set()
    for match in _LABEL_LIST.finditer(text):
        labels |= {name.strip() for name in match[1].split(",") if name.strip()}
    text = _LABEL_LIST.sub(" ", text)
    metrics: set[str] = set()
    for match in _SELECTOR.finditer(text):
        labels |= set(_MATCHER.findall(match[2]))
        if match[1] and match[1] not in _KEYWORDS:
            metrics.add(match[1])
    text = _SELECTOR.sub(" ", text)
    metrics |= {n for n in _NAME.findall(text) if n.lower() not in _KEYWORDS}
    return metrics, labels


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target (rows' nested panels too) and template variable;
    a ``label_values(selector, label)`` variable yields its selector as ``label`` would be
    read, ``sum by (label) (selector)``."""

    def walk(panels: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
        for panel in panels:
            for target in panel.get("targets", []):
                yield f"panel {panel['title']!r} target {target['refId']}", target["expr"]
            yield from walk(panel.get("panels", []))

    yield from walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.match(text)
        assert match, f"variable {variable['name']}: only label_values(selector, label) is read"
        yield f"variable {variable['name']}", f"sum by ({match[2]}) ({match[1]})"


def problems(dashboard: dict[str, Any], exported: dict[str, set[str]]) -> list[str]:
    """What in the dashboard names a metric Shoal does not export, or a label its metrics do
    not carry; ``exported`` maps each sample name to its label names."""
    found: list[str] = []
    for where, expr in queries(dashboard):
        metrics, labels = promql_names(expr)
        if not metrics:
            found.append(f"{where} names no metric: {expr}")
        for metric in sorted(metrics - exported.keys()):
            found.append(f"{where} names {metric}, which Shoal does not export")
        known = TARGET_LABELS.union(*(exported.get(m, set()) for m in metrics))
        for label in sorted(labels - known):
            found.append(f"{where} uses label {label!r}, which none of {sorted(metrics)} has")
    return found


def test_promql_names_reads_selectors_functions_and_label_lists() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, queue) (rate(shoal_x_bucket{namespace=~"$ns",'
        ' queue="a{b}"}[$__rate_interval]))) / on (queue) group_left(task) '
        "sum without (pod) (shoal_y) or vector(1) > bool 0 and ignoring(job) up offset 5m"
    )
    metrics, labels = promql_names(expr)
    assert metrics == {"shoal_x_bucket", "shoal_y", "up"}
    assert labels == {"le", "queue", "namespace", "task", "pod", "job"}
    assert promql_names('{__name__="x", queue="q"}') == (set(), {"__name__", "queue"})
    assert promql_names("sum(rate(shoal_tasks_total[5m])) * 1e3") == ({"shoal_tasks_total"}, set())


# --- what Shoal exports -------------------------------------------------------------------------


def families(port: int) -> list[Metric]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return list(text_string_to_metric_families(response.read().decode()))


def samples_by_name(metric_families: list[Metric]) -> dict[str, set[str]]:
    exported: dict[str, set[str]] = {}
    for family in metric_families:
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported


def operator_exported() -> dict[str, set[str]]:
    """Sample names → label names of the operator's ``/metrics`` (its registry, exposed as the
    server does), after each recording function the handlers call ran once."""
    operator_metrics.reconciled("Queue")
    operator_metrics.reconciled("Worker", MissingReference("QueueNotFound", "no such Queue"))
    operator_metrics.decided("default", "dashboard", 0, 1, 0)
    operator_metrics.promoted("default", "dashboard", 1)
    with operator_metrics.measuring_redis():
        pass
    operator_metrics.API_LATENCY.labels("GET").observe(0.01)
    text = generate_latest(operator_metrics.REGISTRY).decode()
    parsed = list(text_string_to_metric_families(text))
    empty = sorted(f.name for f in parsed if not f.samples)
    assert empty == [], f"operator families no recording function filled: {empty}"
    return samples_by_name(parsed)


def outcomes_seen(metric_families: list[Metric]) -> set[str]:
    return {
        sample.labels["outcome"]
        for family in metric_families
        for sample in family.samples
        if sample.name == "shoal_tasks_total"
    }


@pytest.fixture
def exported(redis_url: str, key_prefix: str, tmp_path: Path) -> Iterator[dict[str, set[str]]]:
    """Sample names → label names of a real worker's ``/metrics`` (``shoal.demo:app``, the
    chart's sample Worker) after an ok, a failed-then-retried and a dead-lettered task."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env |= {"SHOAL_REDIS_URL": redis_url, "SHOAL_KEY_PREFIX": key_prefix}
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "shoal", "worker", "shoal.demo:app", "-Q", "demo"]
    command += ["--metrics-port", str(port), "--log-level", "WARNING"]
    with log.open("wb") as out:
        worker = subprocess.Popen(
            command,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        producer = App(redis_url, key_prefix=key_prefix)
        producer.remote("shoal.demo.checksum", queue="demo").enqueue(1)
        producer.remote("shoal.demo.flaky", queue="demo").enqueue(1)  # fails once, then ok
        producer.remote("shoal.demo.no_such_task", queue="demo").enqueue()  # dead-lettered
        verdicts = {"ok", "failed", "retried", "dead"}

        def scraped() -> dict[str, set[str]] | None:
            if worker.poll() is not None:
                pytest.fail(f"the worker exited: {log.read_text()}")
            try:  # one scrape decides and is kept: a later one may hold more than it
                metric_families = families(port)
            except OSError:  # not listening yet
                return None
            if not verdicts <= outcomes_seen(metric_families):
                return None
            return samples_by_name(metric_families)

        worker_exported = wait_for(
            scraped, timeout=30, message=f"every verdict in /metrics ({log})"
        )
        yield worker_exported | operator_exported()
        producer.close()
    finally:
        worker.terminate()
        worker.wait(30)


def documented_outcomes() -> set[str]:
    """The ``outcome`` values the Prometheus middleware writes: the string literals assigned to
    ``outcome`` or passed as the outcome label, read from its source."""
    source = ROOT / "runtime" / "shoal" / "middleware" / "prometheus.py"
    values: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "outcome" for t in node.targets
        ):
            values.add(ast.literal_eval(node.value))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "labels"
            and len(node.args) == 3
            and isinstance(node.args[2], ast.Constant)
        ):
            values.add(node.args[2].value)
    return values


def outcomes_used(dashboard: dict[str, Any]) -> set[str]:
    used: set[str] = set()
    for _, expr in queries(dashboard):
        for pattern in re.findall(r'outcome\s*=~?\s*"([^"]*)"', expr):
            used |= set(pattern.split("|"))
    return used


# --- the dashboard against what Shoal exports ---------------------------------------------------


def test_every_query_names_only_metrics_and_labels_shoal_exports(
    exported: dict[str, set[str]],
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert problems(dashboard, exported) == []

    # every family Shoal exports is on the dashboard
    used = set().union(*(promql_names(e)[0] for _, e in queries(dashboard)))
    families = {re.sub(r"_(total|bucket|sum|count|created)$", "", n) for n in exported}
    on_dashboard = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families - on_dashboard == set()

    # and the check fails on a metric or label that does not exist
    broken = copy.deepcopy(dashboard)
    target = next(p for p in broken["panels"] if p["type"] == "timeseries")["targets"][0]
    target["expr"] = target["expr"].replace("shoal_queue_waiting", "shoal_queue_pending")
    broken["templating"]["list"][1]["query"]["query"] = "label_values(shoal_redis_up, queue)"
    autoscaler = next(p for p in broken["panels"] if p["title"].startswith("Desired and current"))
    for target in autoscaler["targets"]:
        target["expr"] = target["expr"].replace("_desired_replicas", "_wanted_replicas")
    found = problems(broken, exported)
    assert any("names shoal_queue_pending, which Shoal does not export" in p for p in found)
    assert any("variable namespace uses label 'queue'" in p for p in found)
    assert any("names shoal_operator_worker_wanted_replicas, which" in p for p in found)


def test_outcomes_on_the_dashboard_are_those_the_middleware_writes() -> None:
    written = documented_outcomes()
    assert written == {"ok", "failed", "timed_out", "stopped", "retried", "dead"}
    used = outcomes_used(json.loads(DASHBOARD.read_text()))
    assert used and used <= written
    assert {"ok", "failed", "retried", "dead"} <= used


def test_every_query_is_filtered_by_the_namespace_and_queue_variables() -> None:
    """A selector of a worker's metric with a queue label carries both variables; those without
    one (WITHOUT_QUEUE_LABEL) the namespace one. The operator's metrics are scraped in the
    operator's namespace: those of a resource filter on ``resource_namespace`` (and ``queue``
    when they have it); operator-wide ones (reconciles, latencies) need no filter."""
    dashboard = json.loads(DASHBOARD.read_text())
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "namespace", "queue"]
    for where, expr in queries(dashboard):
        if where.startswith("variable"):
            continue
        for metric in promql_names(expr)[0]:
            selectors = re.findall(rf"\b{metric}\{{([^}}]*)\}}", expr)
            if metric.startswith("shoal_operator_"):
                if metric.startswith(OPERATOR_PER_RESOURCE):
                    assert selectors, f"{where}: {metric} unfiltered"
                for matchers in selectors:
                    if metric.startswith(OPERATOR_PER_RESOURCE):
                        assert 'resource_namespace=~"$namespace"' in matchers, where
                    if metric.startswith("shoal_operator_promoted"):
                        assert 'queue=~"$queue"' in matchers, f"{where}: {metric} not by queue"
                continue
            assert len(selectors) == len(re.findall(rf"\b{metric}\b", expr)), where
            for matchers in selectors:
                assert 'namespace=~"$namespace"' in matchers, f"{where}: {metric} unfiltered"
                if metric not in WITHOUT_QUEUE_LABEL:
                    assert 'queue=~"$queue"' in matchers, f"{where}: {metric} not by queue"


WITHOUT_QUEUE_LABEL = ("shoal_redis_up", "shoal_worker_recycles_total")
"""Worker metrics of a whole process or pod, not of a queue."""

OPERATOR_PER_RESOURCE = (
    "shoal_operator_worker_",
    "shoal_operator_autoscale_",
    "shoal_operator_promoted_",
)
"""The operator's families labelled by ``resource_namespace`` (see shoal_operator.metrics)."""


def test_panels_use_the_datasource_variable_and_have_unique_ids() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    titles = {p["title"] for p in panels if p["type"] == "row"}
    assert titles == {
        "Queues",
        "Throughput",
        "Wait and run time",
        "Failures, retries and dead letters",
        "Workers",
        "Autoscaler",
    }
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and panel.get("description"), panel["title"]


# --- the chart's ConfigMap ----------------------------------------------------------------------

ON = {"grafana": {"dashboards": {"enabled": True}}}


def dashboard_config_maps(values: dict[str, Any]) -> list[dict[str, Any]]:
    return find(render(values), "ConfigMap", f"{RELEASE}-grafana-dashboard")


def test_dashboard_config_map_is_off_by_default() -> None:
    assert dashboard_config_maps({}) == []
    assert dashboard_config_maps({"grafana": {"dashboards": {"enabled": False}}}) == []


def test_dashboard_config_map_carries_the_sidecar_label_and_the_dashboard_file() -> None:
    (config_map,) = dashboard_config_maps(ON)
    kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)
    assert config_map["metadata"]["namespace"] == NAMESPACE
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert "annotations" not in config_map["metadata"]
    assert list(config_map["data"]) == ["shoal.json"]
    assert json.loads(config_map["data"]["shoal.json"]) == json.loads(DASHBOARD.read_text())
    done = helm("lint", "--strict", str(CHART), values=ON)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboard_label_namespace_and_annotations_come_from_values() -> None:
    values = {
        "grafana": {
            "dashboards": {
                "enabled": True,
                "label": "grafana.example.com/dashboard",
                "labelValue": "shoal",
                "namespace": "monitoring",
                "annotations": {"grafana_folder": "Shoal"},
            }
        }
    }
    (config_map,) = dashboard_config_maps(values)
    metadata = config_map["metadata"]
    assert metadata["labels"]["grafana.example.com/dashboard"] == "shoal"
    assert "grafana_dashboard" not in metadata["labels"]
    assert metadata["namespace"] == "monitoring"
    assert metadata["annotations"] == {"grafana_folder": "Shoal"}
    kubernetes_validate.validate(config_map, KUBERNETES_VERSION, strict=True)


def test_label_value_from_helm_set_is_quoted() -> None:
    """``--set ...labelValue=1`` gives an integer: the schema takes it, the label is "1"."""
    done = helm(
        "template",
        RELEASE,
        str(CHART),
        "--set",
        "grafana.dashboards.enabled=true",
        "--set",
        "grafana.dashboards.labelValue=1",
    )
    assert done.returncode == 0, done.stderr
    assert '    grafana_dashboard: "1"\n' in done.stdout


@pytest.mark.parametrize(
    ("dashboards", "error"),
    [
        ({"enabled": "yes"}, "at '/grafana/dashboards/enabled'"),
        ({"label": "grafana dashboard"}, "at '/grafana/dashboards/label'"),
        ({"labelValue": "a b"}, "at '/grafana/dashboards/labelValue'"),
        ({"namespace": "Monitoring"}, "at '/grafana/dashboards/namespace'"),
        ({"folder": "Shoal"}, "additional properties 'folder' not allowed"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else "",
)
def test_values_schema_checks_the_dashboard_values(dashboards: dict[str, Any], error: str) -> None:
    done = helm("template", RELEASE, str(CHART), values={"grafana": {"dashboards": dashboards}})
    assert done.returncode != 0
    assert error in done.stderr
