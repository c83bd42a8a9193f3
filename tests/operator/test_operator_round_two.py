"""The autoscaler's cluster half, round two, through the API emulator over real HTTP with a real
Redis: the operator keeps the waiting list truthful for KEDA, measures pod start-up from the
pods' readiness timestamps, and exports a span per decision to an OTLP receiver."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_emulator import DEPLOYMENTS, PODS, QUEUES, WORKERS, Kube
from pods import stop

from otlp_receiver import OTLPReceiver
from shoal import App

WaitFor = Callable[..., Any]

AUTOSCALING = {
    "enabled": True,
    "minReplicas": 0,
    "maxReplicas": 4,
    "targetPerReplica": 10,
    "pollSeconds": 0.2,
    "scaleToZeroAfterSeconds": 3600,
    "scaleDownStabilizationSeconds": 0,
}


@pytest.fixture(autouse=True)
def fast_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_OPERATOR_POLL", "0.2")
    monkeypatch.setenv("SHOAL_OPERATOR_RETRY_DELAY", "0.5")


def queue(name: str, url: str, prefix: str) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {"redis": {"url": url, "keyPrefix": prefix}},
    }


def worker(name: str, queues: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": name},
        "spec": {"image": "example/tasks:1", "module": "tasks", "queues": queues, **spec},
    }


def test_with_no_worker_the_operator_promotes_what_is_due_so_keda_reads_it(
    kube: Kube, running: None, redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    # Given a Queue holding only a delayed message (no Worker, no pod anywhere)
    app = App(redis_url, key_prefix=key_prefix)
    app.remote("tasks.send", queue="emails").with_options(delay=0.5).enqueue(1)
    waiting_key = app.broker.keys("emails").waiting
    assert app.broker.redis.llen(waiting_key) == 0
    kube.create(QUEUES, queue("emails", redis_url, key_prefix))

    # Then once it is due, the operator's poll moves it to waiting: LLEN, what KEDA's redis
    # scaler reads, says 1, and so does the Queue's status
    wait_for(lambda: app.broker.redis.llen(waiting_key) == 1, message="LLEN of waiting = 1")
    q = wait_for(
        lambda: (o := kube.get(QUEUES, "emails")).get("status", {}).get("waiting") == 1 and o,
        message="Queue status: 1 waiting",
    )
    assert q["status"]["delayed"] == 0
    app.close()


def _pod(name: str, worker_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"shoal.dev/worker": worker_name}},
        "spec": {"containers": [{"name": "worker", "image": "x"}]},
    }


def _ready_after(kube: Kube, name: str, seconds: float) -> None:
    """What the kubelet reports: the pod's Ready condition turned True ``seconds`` after its
    creation (the emulator stamped creationTimestamp)."""
    created = dt.datetime.fromisoformat(
        kube.get(PODS, name)["metadata"]["creationTimestamp"].replace("Z", "+00:00")
    )
    ready = (created + dt.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [{"type": "Ready", "status": "True", "lastTransitionTime": ready}]
    kube.patch(PODS, name, {"status": {"conditions": conditions}}, subresource="status")


def test_pod_start_up_is_measured_from_readiness_and_shown_in_status(
    kube: Kube, running: None, redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    # Given an autoscaled Worker whose pods became ready 4 s and 6 s after creation, and one
    # still starting
    kube.create(QUEUES, queue("emails", redis_url, key_prefix))
    kube.create(WORKERS, worker("tasks", ["emails"], autoscaling=AUTOSCALING))
    wait_for(lambda: kube.get_or_none(DEPLOYMENTS, "tasks"), message="the Deployment")
    for name in ("tasks-a", "tasks-b", "tasks-c"):
        kube.create(PODS, _pod(name, "tasks"))
    _ready_after(kube, "tasks-a", 4)
    _ready_after(kube, "tasks-b", 6)

    # When the Deployment reports them ready
    kube.patch(DEPLOYMENTS, "tasks", {"status": {"readyReplicas": 2}}, subresource="status")

    # Then the Worker's status shows the median start-up, 5 s
    w = wait_for(
        lambda: (o := kube.get(WORKERS, "tasks")).get("status", {}).get("startupSeconds") and o,
        message="status.startupSeconds",
    )
    assert w["status"]["startupSeconds"] == 5.0

    # And a readiness flap of a pod already measured is not a start: when the third pod is
    # ready after 20 s, the median of 4, 6 and 20 is 6
    _ready_after(kube, "tasks-a", 300)
    _ready_after(kube, "tasks-c", 20)
    kube.patch(DEPLOYMENTS, "tasks", {"status": {"readyReplicas": 3}}, subresource="status")
    wait_for(
        lambda: kube.get(WORKERS, "tasks")["status"].get("startupSeconds") == 6.0,
        message="startupSeconds 6 (the flap ignored)",
    )


@contextlib.contextmanager
def operator_process(kube: Kube, tmp_path: Path, otlp_url: str) -> Iterator[Path]:
    """``kopf run -m shoal_operator`` in a process of its own (a tracer provider is installed
    once per process), with the standard OTEL_* variables; stopped by its PID."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SHOAL_"))}
    env.update(
        KUBECONFIG=str(kube.kubeconfig),
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_url,
        OTEL_BSP_SCHEDULE_DELAY="100",
        SHOAL_OPERATOR_POLL="0.2",
    )
    env.pop("KUBERNETES_SERVICE_HOST", None)
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        kopf_run = ["kopf", "run", "--standalone", "--all-namespaces", "-m", "shoal_operator"]
        proc = subprocess.Popen(
            [sys.executable, "-m", *kopf_run],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            yield log
        finally:
            stop(proc)


def test_each_decision_is_a_span_exported_over_otlp(
    kube: Kube, redis_url: str, key_prefix: str, wait_for: WaitFor, tmp_path: Path
) -> None:
    # Given the operator exporting to an OTLP receiver, and 25 tasks waiting
    App(redis_url, key_prefix=key_prefix).remote("t", queue="emails").enqueue_many(
        [(i,) for i in range(25)]
    )
    with OTLPReceiver() as otlp, operator_process(kube, tmp_path, otlp.url) as log:
        # When an autoscaled Worker consumes the queue
        kube.create(QUEUES, queue("emails", redis_url, key_prefix))
        kube.create(WORKERS, worker("tasks", ["emails"], autoscaling=AUTOSCALING))

        # Then its decisions arrive as spans of service shoal-operator, with their attributes
        def scaled_span() -> Any:
            spans = otlp.named("autoscale tasks")
            return next((s for s in spans if s.attributes["shoal.autoscale.desired"] == 3), None)

        span = wait_for(scaled_span, timeout=20, message=f"a decision span ({log})")
        assert span.service == "shoal-operator"
        assert span.attributes["shoal.worker"] == "tasks"
        assert span.attributes["shoal.autoscale.waiting"] == 25
        assert "25 waiting" in span.attributes["shoal.autoscale.reason"]
