"""The operator's pure parts: the worker Deployment, the Redis wiring, conditions, drift."""

from __future__ import annotations

import base64
from types import SimpleNamespace
from typing import Any

import pytest

from shoal.queue_defaults import from_queue_spec
from shoal_operator import conditions as cond
from shoal_operator import deployment as deploy
from shoal_operator.errors import MissingReference, SpecError
from shoal_operator.redis_target import RedisTarget
from shoal_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(otlp_endpoint="http://jaeger:4318")
SPEC: dict[str, Any] = {
    "image": "registry.local/tasks:1",
    "module": "examples.tasks",
    "queues": ["emails", "reports"],
    "concurrency": 32,
    "processes": 2,
    "env": [{"name": "SHOAL_LOG_FORMAT", "value": "json"}],
    "resources": {"limits": {"memory": "512Mi"}},
    "nodeSelector": {"pool": "workers"},
}


def refs(timeouts: tuple[float | None, ...] = (30, 120), **redis: Any) -> list[deploy.QueueRef]:
    target = RedisTarget.from_queue("q", {"redis": redis or {"url": "redis://r:6379/0"}})
    return [deploy.QueueRef(n, target, t) for n, t in zip(SPEC["queues"], timeouts, strict=True)]


def build(
    spec: dict[str, Any] = SPEC, queues: list[deploy.QueueRef] | None = None, replicas: int = 2
) -> dict[str, Any]:
    return deploy.build("tasks", "prod", spec, queues or refs(), SETTINGS, replicas)


def container(d: dict[str, Any]) -> dict[str, Any]:
    (c,) = d["spec"]["template"]["spec"]["containers"]
    return c


def env(d: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(d)["env"]}


def test_container_runs_shoal_worker_with_the_spec() -> None:
    c = container(build())
    assert c["image"] == "registry.local/tasks:1"
    assert c["args"] == [
        "worker",
        "examples.tasks",
        "--queues",
        "emails,reports",
        "--concurrency",
        "32",
        "--processes",
        "2",
        "--health-port",
        "8080",
        "--metrics-port",
        "9100",
    ]
    assert c["resources"] == {"limits": {"memory": "512Mi"}}
    assert build()["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "workers"}


def test_labels_selector_and_replicas() -> None:
    d = build(replicas=3)
    assert d["spec"]["replicas"] == 3
    assert d["spec"]["selector"] == {"matchLabels": {"shoal.dev/worker": "tasks"}}
    assert d["spec"]["template"]["metadata"]["labels"]["shoal.dev/worker"] == "tasks"
    assert deploy.selector("tasks") == "shoal.dev/worker=tasks"


def test_env_wires_redis_otel_and_user_env_last() -> None:
    e = env(build())
    assert e["SHOAL_REDIS_URL"] == "redis://r:6379/0"
    assert e["SHOAL_KEY_PREFIX"] == "shoal"
    assert e["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert e["OTEL_SERVICE_NAME"] == "tasks"
    assert container(build())["env"][-1] == {"name": "SHOAL_LOG_FORMAT", "value": "json"}


def test_secrets_are_referenced_never_copied() -> None:
    queues = refs(
        urlSecretRef={"name": "redis", "key": "url"}, passwordSecretRef={"name": "redis-auth"}
    )
    e = env(build(queues=queues))
    assert e["SHOAL_REDIS_URL"] == {"secretKeyRef": {"name": "redis", "key": "url"}}
    assert e["SHOAL_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "redis-auth", "key": "password"}}


def test_grace_period_follows_the_largest_timeout() -> None:
    d = build()
    assert env(d)["SHOAL_SHUTDOWN_GRACE"] == "120"
    assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120 + 5 + 10
    no_timeouts = build(queues=refs((None, None)))
    assert env(no_timeouts)["SHOAL_SHUTDOWN_GRACE"] == str(SETTINGS.default_timeout_s)
    explicit = build({**SPEC, "shutdownGraceSeconds": 45})
    assert explicit["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 60


def test_pod_meets_the_restricted_pod_security_standard() -> None:
    pod = build()["spec"]["template"]["spec"]
    c = container(build())
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_probes_point_at_the_worker_health_endpoint() -> None:
    c = container(build())
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {"name": "health", "containerPort": 8080} in c["ports"]


def test_redis_target_refuses_what_the_schema_cannot_see() -> None:
    with pytest.raises(SpecError, match="exactly one"):
        RedisTarget.from_queue("q", {"redis": {}})
    with pytest.raises(SpecError, match="password"):
        RedisTarget.from_queue("q", {"redis": {"url": "redis://user:pw@r:6379"}})


class FakeSecrets:
    def __init__(self, secrets: dict[str, dict[str, str]]) -> None:
        self.secrets = secrets

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        if name not in self.secrets:
            raise type("ApiException", (Exception,), {"status": 404})()
        data = {k: base64.b64encode(v.encode()).decode() for k, v in self.secrets[name].items()}
        return SimpleNamespace(data=data)


def test_resolve_reads_secrets_and_names_what_is_missing() -> None:
    target = RedisTarget.from_queue(
        "q",
        {
            "redis": {
                "urlSecretRef": {"name": "r", "key": "url"},
                "passwordSecretRef": {"name": "p", "key": "pw"},
            }
        },
    )
    api = FakeSecrets({"r": {"url": "redis://r:1/0"}, "p": {"pw": "hunter2"}})
    found = target.resolve(api, "ns")
    assert (found.url, found.password, found.username) == ("redis://r:1/0", "hunter2", None)
    with pytest.raises(MissingReference, match="Secret ns/r does not exist"):
        target.resolve(FakeSecrets({}), "ns")
    with pytest.raises(MissingReference, match="no key 'pw'"):
        target.resolve(FakeSecrets({"r": {"url": "redis://r:1/0"}, "p": {"other": "y"}}), "ns")


def test_condition_transition_time_moves_only_on_change() -> None:
    first = cond.set_condition(None, "Ready", True, "Ok", "fine", 1, now="t1")
    same = cond.set_condition(first, "Ready", True, "Ok", "still fine", 2, now="t2")
    flipped = cond.set_condition(same, "Ready", False, "Broken", "no", 3, now="t3")
    assert first[0]["lastTransitionTime"] == "t1"
    assert same[0]["lastTransitionTime"] == "t1" and same[0]["message"] == "still fine"
    assert flipped[0] == {
        "type": "Ready",
        "status": "False",
        "reason": "Broken",
        "message": "no",
        "lastTransitionTime": "t3",
        "observedGeneration": 3,
    }
    both = cond.set_condition(flipped, "RedisReachable", True, "Connected", "", now="t4")
    assert [c["type"] for c in both] == ["Ready", "RedisReachable"]


def test_drift_ignores_server_defaults_and_finds_edits() -> None:
    desired = build()["spec"]
    live: dict[str, Any] = {**desired, "revisionHistoryLimit": 10}
    live["template"] = {
        **desired["template"],
        "spec": {**desired["template"]["spec"], "dnsPolicy": "ClusterFirst"},
    }
    assert deploy.drift(desired, live) == []
    edited = {**live, "replicas": 9}
    assert deploy.drift(desired, edited) == [".replicas"]


def test_queue_spec_maps_to_runtime_defaults() -> None:
    spec = {
        "defaults": {"maxRetries": 5, "timeoutSeconds": 30, "minBackoffSeconds": 1},
        "deadLetter": {"maxEntries": 100, "maxAgeSeconds": 3600},
    }
    assert from_queue_spec(spec) == {
        "max_retries": 5,
        "timeout": 30,
        "min_backoff": 1,
        "dlq_max_entries": 100,
        "dlq_max_age": 3600,
    }


def test_recycling_limits_reach_the_pod_as_env_and_are_absent_when_unset() -> None:
    spec = {**SPEC, "maxTasksPerProcess": 1000, "maxMemoryPerProcessMiB": 200}
    e = env(build(spec))
    assert e["SHOAL_WORKER_MAX_TASKS_PER_PROCESS"] == "1000"
    assert e["SHOAL_WORKER_MAX_MEMORY_PER_PROCESS_MIB"] == "200"
    assert container(build(spec))["env"][-1] == {"name": "SHOAL_LOG_FORMAT", "value": "json"}
    assert not {n for n in env(build()) if n.startswith("SHOAL_WORKER_MAX_")}
    assert not {n for n in env(build({**SPEC, "maxTasksPerProcess": 0})) if "MAX_TASKS" in n}
