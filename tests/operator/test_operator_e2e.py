"""The real shoal operator (kopf) against the API emulator over HTTP, with a real Redis.

Each scenario applies resources as ``kubectl apply`` would and polls for the outcome."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from kube_emulator import DEPLOYMENTS, PODS, QUEUES, SECRETS, WORKERS, Kube
from pods import worker_pod

from shoal import App
from shoal.protocol.server import LocalRedis, free_port
from shoal.scheduler import stored

WaitFor = Callable[..., Any]


@pytest.fixture(autouse=True)
def fast_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_OPERATOR_POLL", "0.2")
    monkeypatch.setenv("SHOAL_OPERATOR_RETRY_DELAY", "0.5")
    monkeypatch.setenv("SHOAL_OPERATOR_OTLP_ENDPOINT", "http://jaeger:4318")


def queue(name: str, url: str, prefix: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {"redis": {"url": url, "keyPrefix": prefix}, **spec},
    }


def worker(name: str, queues: list[str], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": name},
        "spec": {
            "image": "example/tasks:1",
            "module": "tasks",
            "queues": queues,
            "concurrency": 8,
            "replicas": 2,
            **spec,
        },
    }


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = deployment["spec"]["template"]["spec"]["containers"][0]
    return result


def env(deployment: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(deployment)["env"]}


def test_queue_and_worker_become_a_configured_deployment(
    kube: Kube, running: None, redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    # Given a Queue with defaults, holding real messages in Redis
    app = App(redis_url, key_prefix=key_prefix)
    app.remote("tasks.send", queue="emails").enqueue_many([(i,) for i in range(7)])
    kube.create(
        QUEUES,
        queue("emails", redis_url, key_prefix, defaults={"maxRetries": 4, "timeoutSeconds": 45}),
    )

    # Then its status shows the real figures and its defaults are where workers read them
    q = wait_for(
        lambda: (o := kube.get(QUEUES, "emails")).get("status", {}).get("waiting") == 7 and o,
        message="Queue status with 7 waiting",
    )
    assert q["status"]["inFlight"] == 0 and q["status"]["dead"] == 0
    assert condition(q, "RedisReachable")["status"] == "True"  # type: ignore[index]
    wait_for(lambda: condition(kube.get(QUEUES, "emails"), "Ready"), message="Ready condition")
    assert app.queue_defaults("emails") == {"max_retries": 4, "timeout": 45.0}

    # When a Worker consumes it
    created = kube.create(WORKERS, worker("tasks", ["emails"]))

    # Then one owned Deployment runs `shoal worker` wired to the queue
    d = wait_for(lambda: kube.get_or_none(DEPLOYMENTS, "tasks"), message="the Deployment")
    assert d["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
    assert d["spec"]["replicas"] == 2
    c = container(d)
    assert c["args"][:4] == ["worker", "tasks", "--queues", "emails"]
    e = env(d)
    assert e["SHOAL_REDIS_URL"] == redis_url and e["SHOAL_KEY_PREFIX"] == key_prefix
    assert e["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert e["SHOAL_SHUTDOWN_GRACE"] == "45"
    assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    w = wait_for(
        lambda: (o := kube.get(WORKERS, "tasks")).get("status", {}).get("selector") and o,
        message="Worker status",
    )
    assert w["status"]["selector"] == "shoal.dev/worker=tasks"
    assert w["status"]["desiredReplicas"] == 2


def test_edits_roll_the_deployment_drift_is_undone_delete_cascades(
    kube: Kube, running: None, redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    kube.create(QUEUES, queue("emails", redis_url, key_prefix))
    kube.create(WORKERS, worker("tasks", ["emails"]))
    wait_for(lambda: kube.get_or_none(DEPLOYMENTS, "tasks"), message="the Deployment")

    # When the Worker is edited, the Deployment follows
    kube.patch(WORKERS, "tasks", {"spec": {"concurrency": 64, "replicas": 3}})
    wait_for(
        lambda: (
            "64" in container(kube.get(DEPLOYMENTS, "tasks"))["args"]
            and kube.get(DEPLOYMENTS, "tasks")["spec"]["replicas"] == 3
        ),
        message="concurrency 64 and 3 replicas in the Deployment",
    )

    # When someone edits the Deployment by hand, the operator puts the Worker's spec back
    before = kube.get(DEPLOYMENTS, "tasks")["metadata"]["uid"]
    kube.patch(
        DEPLOYMENTS,
        "tasks",
        [
            {
                "op": "replace",
                "path": "/spec/template/spec/containers/0/image",
                "value": "evil:latest",
            }
        ],
        patch_type="json",
    )
    wait_for(
        lambda: container(kube.get(DEPLOYMENTS, "tasks"))["image"] == "example/tasks:1",
        message="the drifted image corrected",
    )
    assert kube.get(DEPLOYMENTS, "tasks")["metadata"]["uid"] == before  # patched, not recreated

    # When the Worker is deleted, its Deployment goes with it
    kube.delete(WORKERS, "tasks")
    wait_for(lambda: not kube.exists(DEPLOYMENTS, "tasks"), message="the Deployment deleted")


def test_worker_before_its_queue_waits_then_recovers(
    kube: Kube, running: None, redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    kube.create(WORKERS, worker("tasks", ["later"]))
    ready = wait_for(
        lambda: condition(kube.get(WORKERS, "tasks"), "Ready"), message="a Ready condition"
    )
    assert ready["status"] == "False" and ready["reason"] == "QueueNotFound"
    assert "Queue default/later does not exist" in ready["message"]
    assert not kube.exists(DEPLOYMENTS, "tasks")

    kube.create(QUEUES, queue("later", redis_url, key_prefix))
    wait_for(
        lambda: kube.get_or_none(DEPLOYMENTS, "tasks"),
        message="the Deployment, once the Queue exists",
    )


def test_queues_on_different_redis_are_refused_with_a_condition(
    kube: Kube, running: None, redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    kube.create(QUEUES, queue("a", redis_url, key_prefix))
    kube.create(QUEUES, queue("b", redis_url, key_prefix + "other"))
    kube.create(WORKERS, worker("tasks", ["a", "b"]))
    ready = wait_for(
        lambda: condition(kube.get(WORKERS, "tasks"), "Ready"), message="a Ready condition"
    )
    assert ready["reason"] == "QueuesOnDifferentRedis"
    assert not kube.exists(DEPLOYMENTS, "tasks")


def test_redis_secret_is_referenced_and_missing_secret_is_reported(
    kube: Kube, running: None, redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    spec = {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": "jobs"},
        "spec": {
            "redis": {"urlSecretRef": {"name": "redis", "key": "url"}, "keyPrefix": key_prefix}
        },
    }
    kube.create(QUEUES, spec)
    kube.create(WORKERS, worker("tasks", ["jobs"]))
    ready = wait_for(
        lambda: condition(kube.get(WORKERS, "tasks"), "Ready"), message="a Ready condition"
    )
    assert ready["reason"] == "SecretNotFound"

    kube.create(
        SECRETS,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "redis"},
            "data": {"url": base64.b64encode(redis_url.encode()).decode()},
        },
    )
    d = wait_for(lambda: kube.get_or_none(DEPLOYMENTS, "tasks"), message="the Deployment")
    assert env(d)["SHOAL_REDIS_URL"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    q = wait_for(
        lambda: (o := kube.get(QUEUES, "jobs")).get("status", {}).get("lastMeasured") and o,
        message="the Queue measured through the Secret's URL",
    )
    assert q["status"]["waiting"] == 0


def test_redis_down_is_reported_and_replicas_are_held(
    kube: Kube, running: None, key_prefix: str, wait_for: WaitFor
) -> None:
    # Given a queue whose Redis dies after the Worker scaled to 3
    server = LocalRedis(free_port()).start()
    kube.create(QUEUES, queue("emails", server.url, key_prefix))
    kube.create(
        WORKERS,
        worker(
            "tasks",
            ["emails"],
            autoscaling={
                "enabled": True,
                "minReplicas": 0,
                "maxReplicas": 5,
                "targetPerReplica": 10,
                "pollSeconds": 0.2,
                "scaleToZeroAfterSeconds": 0,
                "scaleDownStabilizationSeconds": 0,
            },
        ),
    )
    App(server.url, key_prefix=key_prefix).remote("t", queue="emails").enqueue_many(
        [(i,) for i in range(30)]
    )
    wait_for(
        lambda: (kube.get_or_none(DEPLOYMENTS, "tasks") or {}).get("spec", {}).get("replicas") == 3,
        message="3 replicas for 30 waiting",
    )
    server.stop()

    # Then the Queue says Redis is unreachable, and the Worker keeps its 3 replicas
    reachable = wait_for(
        lambda: (
            (c := condition(kube.get(QUEUES, "emails"), "RedisReachable"))
            and c["status"] == "False"
            and c
        ),
        message="RedisReachable=False",
    )
    assert reachable["reason"] == "RedisUnreachable"
    wait_for(
        lambda: "holding 3" in kube.get(WORKERS, "tasks")["status"].get("lastScaleReason", ""),
        message="the autoscaler holding",
    )
    assert kube.get(DEPLOYMENTS, "tasks")["spec"]["replicas"] == 3


def test_autoscaler_wakes_from_zero_then_scales_in_idle_pods_first(
    kube: Kube, running: None, redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    app = App(redis_url, key_prefix=key_prefix)
    kube.create(QUEUES, queue("emails", redis_url, key_prefix))
    kube.create(
        WORKERS,
        worker(
            "tasks",
            ["emails"],
            autoscaling={
                "enabled": True,
                "minReplicas": 0,
                "maxReplicas": 10,
                "targetPerReplica": 10,
                "pollSeconds": 0.2,
                "scaleToZeroAfterSeconds": 3600,
                "scaleDownStabilizationSeconds": 0,
            },
        ),
    )
    d = wait_for(lambda: kube.get_or_none(DEPLOYMENTS, "tasks"), message="the Deployment")
    assert d["spec"]["replicas"] == 0

    # When a burst of 45 tasks lands on a fleet at zero: 5 replicas within a poll or two
    app.remote("tasks.send", queue="emails").enqueue_many([(i,) for i in range(45)])
    wait_for(
        lambda: kube.get(DEPLOYMENTS, "tasks")["spec"]["replicas"] == 5,
        message="5 replicas for 45 waiting",
    )
    w = kube.get(WORKERS, "tasks")
    assert "45 waiting" in w["status"]["lastScaleReason"]

    # Given two of its pods: one busy (3 tasks in flight by its heartbeat), one idle
    for pod in ("tasks-busy", "tasks-idle"):
        kube.create(
            PODS,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": pod, "labels": {"shoal.dev/worker": "tasks"}},
                "spec": {"containers": [{"name": "worker", "image": "x"}]},
            },
        )
    registry = app.broker.redis
    for pod, in_flight in (("tasks-busy", 3), ("tasks-idle", 0)):
        registry.set(
            f"{key_prefix}:worker:{pod}-1",
            orjson.dumps(
                {"id": f"{pod}-1", "host": pod, "in_flight": in_flight, "queues": ["emails"]}
            ),
        )
        registry.zadd(f"{key_prefix}:workers", {f"{pod}-1": 1})

    # When the backlog is gone: scale in, idle pods marked cheapest to delete
    app.broker.redis.delete(app.broker.keys("emails").waiting)
    wait_for(
        lambda: kube.get(DEPLOYMENTS, "tasks")["spec"]["replicas"] == 1, message="scaled in to 1"
    )
    cost = "controller.kubernetes.io/pod-deletion-cost"
    annotations = {
        p: kube.get(PODS, p)["metadata"].get("annotations", {}).get(cost)
        for p in ("tasks-busy", "tasks-idle")
    }
    assert annotations == {"tasks-busy": "3", "tasks-idle": "0"}


def test_queue_schedules_land_in_redis_and_an_invalid_one_is_a_condition(
    kube: Kube, running: None, redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    # Given a Queue with a valid schedule and one whose cron does not parse
    app = App(redis_url, key_prefix=key_prefix)
    schedules_key = app.broker.keys("reports").schedules
    app.broker.redis.hset(schedules_key, "from-code", b'{"source":"code"}')
    nightly = {"name": "nightly", "cron": "0 3 * * *", "task": "tasks.report", "args": [7]}
    broken = {"name": "broken", "cron": "61 * * * *", "task": "tasks.report"}
    kube.create(QUEUES, queue("reports", redis_url, key_prefix, schedules=[nightly, broken]))

    # Then the valid one is where workers read it, and the invalid one is reported by name
    valid = wait_for(
        lambda: (
            (c := condition(kube.get(QUEUES, "reports"), "SchedulesValid"))
            and c["status"] == "False"
            and c
        ),
        message="SchedulesValid=False",
    )
    assert "'broken'" in valid["message"] and "not a cron expression" in valid["message"]
    stored = orjson.loads(app.broker.redis.hget(schedules_key, "nightly"))  # type: ignore[arg-type]
    assert stored["source"] == "queue" and stored["args"] == [7] and stored["missed"] == "skip"
    q = wait_for(
        lambda: (o := kube.get(QUEUES, "reports")).get("status", {}).get("schedules") and o,
        message="the schedules' next runs in status",
    )
    assert {s["name"] for s in q["status"]["schedules"]} >= {"nightly"}
    assert condition(q, "Ready")["status"] == "True"  # type: ignore[index]

    # When the spec is fixed: the condition clears, and a removed schedule leaves Redis while
    # the code schedule stays
    kube.patch(QUEUES, "reports", {"spec": {"schedules": [{**broken, "cron": "1 * * * *"}]}})
    wait_for(
        lambda: (
            (c := condition(kube.get(QUEUES, "reports"), "SchedulesValid"))
            and c["status"] == "True"
        ),
        message="SchedulesValid=True",
    )
    assert sorted(app.broker.redis.hkeys(schedules_key)) == [b"broken", b"from-code"]  # type: ignore[arg-type]

    # When Redis loses them (a restart without persistence), the operator writes them again
    app.broker.redis.delete(schedules_key)
    wait_for(
        lambda: app.broker.redis.hexists(schedules_key, "broken"),
        message="the Queue's schedules written again",
    )

    # When the Queue is deleted, its schedules leave Redis with it (no worker ticks them on)
    kube.delete(QUEUES, "reports")
    wait_for(
        lambda: not app.broker.redis.hexists(schedules_key, "broken"),
        message="the deleted Queue's schedules removed",
    )
    app.close()


SCHEDULED_TASKS = """
from shoal import App

app = App()


@app.task(queue="reports", name="woken.report")
def report() -> None:
    pass
"""


def test_a_worker_at_zero_is_woken_before_its_schedule_is_due_and_the_tick_runs(
    kube: Kube,
    running: None,
    redis_url: str,
    key_prefix: str,
    wait_for: WaitFor,
    tmp_path: Path,
) -> None:
    # Given a Worker scaled to zero (nothing waiting) whose schedules wake it 6 s ahead
    app = App(redis_url, key_prefix=key_prefix)
    kube.create(QUEUES, queue("reports", redis_url, key_prefix))
    kube.create(
        WORKERS,
        worker(
            "reporter",
            ["reports"],
            autoscaling={
                "enabled": True,
                "minReplicas": 0,
                "maxReplicas": 3,
                "pollSeconds": 0.2,
                "scaleToZeroAfterSeconds": 0,
                "scaleDownStabilizationSeconds": 0,
                "scheduleLeadSeconds": 6,
            },
        ),
    )
    wait_for(
        lambda: (
            "idle" in kube.get(WORKERS, "reporter").get("status", {}).get("lastScaleReason", "")
        ),
        message="the autoscaler idle at zero",
    )
    assert kube.get(DEPLOYMENTS, "reporter")["spec"]["replicas"] == 0

    # When the Queue gets a (daily) schedule due 10 s from now, on Redis's clock
    due_ms = (app.broker.time_ms() // 1000 + 10) * 1000
    due = datetime.fromtimestamp(due_ms / 1000, UTC)
    cron = f"{due.minute} {due.hour} * * * {due.second}"
    spec = {"name": "daily-report", "cron": cron, "task": "woken.report"}
    kube.patch(QUEUES, "reports", {"spec": {"schedules": [spec]}})

    # Then the Worker is scaled to 1 before the tick is due, saying why
    wait_for(
        lambda: kube.get(DEPLOYMENTS, "reporter")["spec"]["replicas"] == 1,
        timeout=15,
        message="1 replica for the coming tick",
    )
    assert app.broker.time_ms() < due_ms  # woken ahead of the tick
    reason = kube.get(WORKERS, "reporter")["status"]["lastScaleReason"]
    assert "daily-report" in reason  # the policy says why (its wording is its own)

    # When its pod runs, the tick runs (claimed by that worker, its task finished)
    def last_run() -> str | None:
        (row,) = stored(app.broker, "reports")
        done = row.last is not None and row.last.tick_ms == due_ms
        return row.outcome if done and row.outcome.startswith("finished") else None

    with worker_pod(tmp_path, redis_url, key_prefix, "woken_tasks", SCHEDULED_TASKS, "reports"):
        outcome = wait_for(last_run, timeout=30, message="the tick run and finished")
        assert "missed" not in outcome and "skipped" not in outcome

        # Then, the tick claimed and nothing else to do, the fleet goes back to zero
        wait_for(
            lambda: kube.get(DEPLOYMENTS, "reporter")["spec"]["replicas"] == 0,
            message="back to zero once the tick was claimed",
        )
    app.close()
