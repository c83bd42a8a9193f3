"""The operator's own /metrics and /readyz, scraped over HTTP from the real kopf operator
running against the API emulator, with a real Redis holding tasks.

The metric families live in one registry for the whole session (the operator module is
imported once), so figures are compared with what they were before the test."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import kmock
import pytest
from kube_emulator import DEPLOYMENTS, QUEUES, WORKERS, Kube, OperatorRunnerFactory
from prometheus_client.parser import text_string_to_metric_families

from shoal import App
from shoal.protocol.server import free_port
from shoal_operator.metrics import REGISTRY

WaitFor = Callable[..., Any]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def port(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setenv("SHOAL_OPERATOR_POLL", "0.2")
    monkeypatch.setenv("SHOAL_OPERATOR_RETRY_DELAY", "0.5")
    chosen = free_port()
    monkeypatch.setenv("SHOAL_OPERATOR_METRICS_PORT", str(chosen))
    return chosen


@pytest.fixture
def operator(operator_runner: OperatorRunnerFactory, port: int) -> Iterator[int]:
    with operator_runner("shoal_operator", watched=[QUEUES, WORKERS, DEPLOYMENTS]):
        yield port


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(port: int) -> Samples:
    status, text = get(port, "/metrics")
    assert status == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def before(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def manifest(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": spec,
    }


def test_metrics_count_reconciles_decisions_replicas_and_promotions(
    kube: Kube, operator: int, redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    queue_ok = before("shoal_operator_reconciles_total", kind="Queue", result="ok")
    worker_ok = before("shoal_operator_reconciles_total", kind="Worker", result="ok")
    missing = before("shoal_operator_reconcile_errors_total", kind="Worker", reason="QueueNotFound")
    promoted = before(
        "shoal_operator_promoted_messages_total", resource_namespace="default", queue="mails"
    )

    # Given the operator running, it is ready
    status, text = get(operator, "/readyz")
    assert (status, text) == (200, "ready\n")

    # and a Queue on a real Redis with 25 tasks waiting and one delayed a moment
    app = App(redis_url, key_prefix=key_prefix)
    app.remote("tasks.send", queue="mails").enqueue_many([(i,) for i in range(25)])
    app.remote("tasks.send", queue="mails").with_options(delay=0.3).enqueue(99)
    redis = {"url": redis_url, "keyPrefix": key_prefix}
    kube.create(QUEUES, manifest("Queue", "mails", {"redis": redis}))

    # When an autoscaled Worker consumes it, and another names a Queue that does not exist
    autoscaling = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 10,
        "targetPerReplica": 10,
        "pollSeconds": 0.2,
        "scaleToZeroAfterSeconds": 0,
        "scaleDownStabilizationSeconds": 0,
    }
    spec = {"image": "example/tasks:1", "module": "tasks", "queues": ["mails"]}
    kube.create(WORKERS, manifest("Worker", "mailer", {**spec, "autoscaling": autoscaling}))
    kube.create(WORKERS, manifest("Worker", "orphan", {**spec, "queues": ["nowhere"]}))
    wait_for(
        lambda: (
            (kube.get_or_none(DEPLOYMENTS, "mailer") or {}).get("spec", {}).get("replicas") == 3
        ),
        message="3 replicas for 26 waiting",
    )

    # Then /metrics, scraped over HTTP, counts what the operator did
    def scaled_up() -> Samples | None:
        samples = scrape(operator)
        labels = {"resource_namespace": "default", "worker": "mailer"}
        up = value(samples, "shoal_operator_autoscale_decisions_total", direction="up", **labels)
        desired = kube.get(WORKERS, "mailer").get("status", {}).get("desiredReplicas")
        gauge = value(samples, "shoal_operator_worker_desired_replicas", **labels)
        return samples if up >= 1 and desired == gauge == 3 else None

    samples = wait_for(scaled_up, message="a scale-up counted and desired replicas 3")
    labels = {"resource_namespace": "default", "worker": "mailer"}
    assert value(samples, "shoal_operator_worker_current_replicas", **labels) == 0  # no pods
    assert value(samples, "shoal_operator_reconciles_total", kind="Queue", result="ok") > queue_ok
    assert value(samples, "shoal_operator_reconciles_total", kind="Worker", result="ok") > worker_ok
    assert (
        value(
            samples, "shoal_operator_reconcile_errors_total", kind="Worker", reason="QueueNotFound"
        )
        > missing
    )
    assert value(samples, "shoal_operator_redis_measure_duration_seconds_count") > 0
    assert value(samples, "shoal_operator_api_request_duration_seconds_count", method="PATCH") > 0
    assert value(samples, "shoal_operator_api_request_duration_seconds_count", method="GET") > 0

    # the delayed message, once due, is moved to waiting by the Queue's tick: one promotion
    wait_for(
        lambda: (
            value(
                scrape(operator),
                "shoal_operator_promoted_messages_total",
                resource_namespace="default",
                queue="mails",
            )
            == promoted + 1
        ),
        message="one promoted message",
    )

    # When the queue drains, the autoscaler decides to go down, and the gauge follows
    app.broker.redis.delete(*app.broker.redis.keys(f"{key_prefix}:*mails*"))
    wait_for(
        lambda: kube.get(DEPLOYMENTS, "mailer")["spec"]["replicas"] == 0,
        message="scaled to zero after the queue drained",
    )
    samples = wait_for(
        lambda: (
            (s := scrape(operator))
            and value(s, "shoal_operator_worker_desired_replicas", **labels) == 0
            and s
        ),
        message="desired replicas gauge 0",
    )
    assert value(samples, "shoal_operator_autoscale_decisions_total", direction="down", **labels)
    # and, at zero with nothing waiting, the next decisions hold
    wait_for(
        lambda: value(
            scrape(operator), "shoal_operator_autoscale_decisions_total", direction="hold", **labels
        ),
        message="a hold decision counted",
    )

    # When the Worker is deleted, its series go
    kube.delete(WORKERS, "mailer")
    wait_for(
        lambda: (
            ("shoal_operator_worker_desired_replicas", frozenset(labels.items()))
            not in scrape(operator)
        ),
        message="the deleted Worker's gauges removed",
    )
    app.close()


def test_readiness_fails_while_the_api_does_not_answer(
    kube: Kube, operator: int, wait_for: WaitFor
) -> None:
    assert get(operator, "/readyz")[0] == 200
    # the operator's readiness read only (limit=1): kopf's own LIST and WATCH still work
    kube.emulator["get /apis/shoal.dev/v1alpha1/workers", kmock.params(limit="1")] << 503
    # the answer is kept a few seconds: wait until it is asked again
    _, text = wait_for(
        lambda: (r := get(operator, "/readyz"))[0] == 503 and r,
        message="/readyz 503 while the API fails",
    )
    assert "the Kubernetes API did not answer" in text
