"""The operator measures how many tasks a schedule's run adds to its queue and warms that many
replicas' worth before the next tick: through the API emulator over real HTTP, a real Redis and
a real `shoal worker` ticking the schedule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kube_emulator import DEPLOYMENTS, QUEUES, WORKERS, Kube
from pods import worker_pod

WaitFor = Callable[..., Any]

FAN_OUT = """
from shoal import App

app = App()


@app.task(queue="batches", name="sizes.part")
def part(i: int) -> None:
    pass


@app.task(queue="batches", name="sizes.fan")
def fan() -> None:
    for i in range(8):
        part.enqueue(i)
"""


@pytest.fixture(autouse=True)
def fast_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_OPERATOR_POLL", "0.2")
    monkeypatch.setenv("SHOAL_OPERATOR_RETRY_DELAY", "0.5")


def test_a_schedules_run_is_counted_and_sizes_the_next_warm_up(
    kube: Kube,
    running: None,
    redis_url: str,
    key_prefix: str,
    wait_for: WaitFor,
    tmp_path: Path,
) -> None:
    # Given a Queue whose schedule fires every 10 s a task that enqueues 8 more (9 in all), a
    # worker ticking it, and an autoscaled Worker warming 6 s ahead, 3 tasks per replica
    schedule = {"name": "fan", "cron": "* * * * * */10", "task": "sizes.fan"}
    kube.create(
        QUEUES,
        {
            "apiVersion": "shoal.dev/v1alpha1",
            "kind": "Queue",
            "metadata": {"name": "batches"},
            "spec": {
                "redis": {"url": redis_url, "keyPrefix": key_prefix},
                "schedules": [schedule],
            },
        },
    )
    autoscaling = {
        "enabled": True,
        "minReplicas": 0,
        "maxReplicas": 5,
        "targetPerReplica": 3,
        "pollSeconds": 0.2,
        "scaleDownStabilizationSeconds": 0,
        "scheduleLeadSeconds": 6,
    }
    kube.create(
        WORKERS,
        {
            "apiVersion": "shoal.dev/v1alpha1",
            "kind": "Worker",
            "metadata": {"name": "fanner"},
            "spec": {
                "image": "example/tasks:1",
                "module": "fan_tasks",
                "queues": ["batches"],
                "autoscaling": autoscaling,
            },
        },
    )
    wait_for(lambda: kube.get_or_none(DEPLOYMENTS, "fanner"), message="the Deployment")

    # When a tick has run (claimed, its 9 tasks done) and the next one comes near
    def reason() -> str:
        return str(kube.get(WORKERS, "fanner").get("status", {}).get("lastScaleReason", ""))

    with worker_pod(tmp_path, redis_url, key_prefix, "fan_tasks", FAN_OUT, "batches"):
        wait_for(lambda: "9 tasks last run" in reason(), timeout=40, message="a run measured")

    # Then the warm-up says what the last run produced and is sized from it: 9 / 3 = 3
    assert "warming for schedule fan" in reason()
    assert kube.get(WORKERS, "fanner")["status"]["desiredReplicas"] == 3
