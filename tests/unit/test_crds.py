"""The CRDs: their shape (subresources, printer columns), the example manifests they accept,
and the invalid specs they refuse (schema and CEL rules, evaluated offline)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from crd_schema import ROOT, load_crds, validate

CRDS = load_crds()
EXAMPLES = [d for d in yaml.safe_load_all((ROOT / "examples" / "queue.yaml").read_text()) if d]
ALL_EXAMPLES = [
    d
    for path in sorted((ROOT / "examples").glob("*.yaml"))
    for d in yaml.safe_load_all(path.read_text())
    if d and d["apiVersion"].startswith("shoal.dev/")  # (KEDA's ScaledObject: its own test)
]
KEDA_EXAMPLE = [
    d for d in yaml.safe_load_all((ROOT / "examples" / "keda-scaledobject.yaml").read_text()) if d
]


def version(kind: str) -> dict[str, Any]:
    (v,) = CRDS[kind]["spec"]["versions"]
    return v


def test_group_version_and_names() -> None:
    for kind, plural in (("Queue", "queues"), ("Worker", "workers")):
        crd = CRDS[kind]
        assert crd["metadata"]["name"] == f"{plural}.shoal.dev"
        assert crd["spec"]["scope"] == "Namespaced"
        assert crd["spec"]["names"]["shortNames"]
        assert version(kind)["name"] == "v1alpha1"
        assert version(kind)["subresources"]["status"] == {}


def test_worker_has_a_scale_subresource_for_kubectl_scale() -> None:
    assert version("Worker")["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_printer_columns_show_what_kubectl_get_needs() -> None:
    queue_cols = {c["name"] for c in version("Queue")["additionalPrinterColumns"]}
    assert {"Waiting", "In Flight", "Dead", "Age"} <= queue_cols
    worker_cols = {c["name"] for c in version("Worker")["additionalPrinterColumns"]}
    assert {"Ready", "Desired", "Queues", "Age"} <= worker_cols


@pytest.mark.parametrize("doc", ALL_EXAMPLES, ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_examples_are_accepted(doc: dict[str, Any]) -> None:
    assert validate(doc, CRDS) == []


def _worker(**spec: Any) -> dict[str, Any]:
    base = copy.deepcopy(next(d for d in EXAMPLES if d["kind"] == "Worker"))
    base["spec"].update(spec)
    return base


def _queue(**redis: Any) -> dict[str, Any]:
    base = copy.deepcopy(next(d for d in EXAMPLES if d["kind"] == "Queue"))
    base["spec"]["redis"] = redis
    return base


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (_worker(replicas=-1), "replicas"),
        (_worker(concurrency=0), "concurrency"),
        (_worker(queues=[]), "queues"),
        (_worker(module="not a module!"), "module"),
        (
            _worker(autoscaling={"enabled": True, "minReplicas": 5, "maxReplicas": 2}),
            "minReplicas must not exceed",
        ),
        (_worker(podTemplate={"spec": {}}), "podTemplate"),
        (_queue(url="redis://:secret@redis:6379/0"), "url"),
        (_queue(url="redis://r:6379/0", urlSecretRef={"name": "s"}), "exactly one"),
        (_queue(), "exactly one"),
        (_queue(url="http://redis:6379"), "url"),
    ],
    ids=[
        "negative-replicas",
        "zero-concurrency",
        "no-queues",
        "bad-module",
        "min>max",
        "unknown-field",
        "password-in-url",
        "url-and-secret",
        "no-url",
        "not-redis-scheme",
    ],
)
def test_invalid_specs_are_refused(doc: dict[str, Any], expected: str) -> None:
    errors = validate(doc, CRDS)
    assert errors, f"{doc['spec']} was accepted"
    assert any(expected in e for e in errors), errors


def test_queue_backoff_bounds_are_checked_by_cel() -> None:
    doc = _queue(url="redis://r:6379/0")
    doc["spec"]["defaults"] = {"minBackoffSeconds": 10, "maxBackoffSeconds": 1}
    assert any("minBackoffSeconds must not exceed" in e for e in validate(doc, CRDS))


def _with_schedules(*schedules: dict[str, Any]) -> dict[str, Any]:
    doc = _queue(url="redis://r:6379/0")
    doc["spec"]["schedules"] = list(schedules)
    return doc


def test_queue_schedules_are_a_map_list_keyed_by_name() -> None:
    schema = version("Queue")["schema"]["openAPIV3Schema"]["properties"]["spec"]
    schedules = schema["properties"]["schedules"]
    assert schedules["x-kubernetes-list-type"] == "map"
    assert schedules["x-kubernetes-list-map-keys"] == ["name"]
    assert set(schedules["items"]["required"]) == {"name", "cron", "task"}


def test_queue_schedules_accept_arguments_zones_and_policies() -> None:
    doc = _with_schedules(
        {
            "name": "nightly-report",
            "cron": "0 3 * * *",
            "task": "examples.tasks.report",
            "args": [1, "a", {"deep": [True, None]}],
            "kwargs": {"format": "pdf", "pages": {"max": 10}},
            "timezone": "Europe/Berlin",
            "missed": "runOnce",
            "suspend": False,
        },
        {"name": "tick", "cron": "* * * * * */10", "task": "t"},
    )
    assert validate(doc, CRDS) == []


@pytest.mark.parametrize(
    ("schedule", "expected"),
    [
        ({"name": "x", "task": "t"}, "spec.schedules[0].cron: Required value"),
        ({"name": "x", "cron": "* * * * *"}, "spec.schedules[0].task: Required value"),
        ({"name": "has space", "cron": "* * * * *", "task": "t"}, "does not match"),
        ({"name": "x", "cron": "* * * * *", "task": "t", "missed": "catchUp"}, "Unsupported value"),
        ({"name": "x", "cron": "* * * * *", "task": "t", "every": 5}, "every"),
    ],
    ids=["no-cron", "no-task", "bad-name", "bad-policy", "unknown-field"],
)
def test_invalid_queue_schedules_are_refused(schedule: dict[str, Any], expected: str) -> None:
    errors = validate(_with_schedules(schedule), CRDS)
    assert any(expected in e for e in errors), errors


def test_worker_schedule_lead_is_seconds_from_zero() -> None:
    def lead(seconds: int) -> dict[str, Any]:
        scaling = {"enabled": True, "minReplicas": 0, "maxReplicas": 3}
        return _worker(autoscaling={**scaling, "scheduleLeadSeconds": seconds})

    assert validate(lead(120), CRDS) == []
    assert any("-1 is less than the minimum of 0" in e for e in validate(lead(-1), CRDS))


# --- spec.redis: every form of production Redis ---------------------------------------------------

SENTINEL = {"hosts": ["sentinel-0.sentinel:26379", "10.0.0.7:26379"], "masterName": "mymaster"}
REF = {"name": "redis-auth"}


@pytest.mark.parametrize(
    "redis",
    [
        {"url": "redis+sentinel://s1:26379,s2:26379/mymaster/0"},
        {"url": "rediss+cluster://n1:6379,n2:6379", "tls": {}},
        {"url": "unix:///run/redis/redis.sock"},
        {"url": "rediss://r:6380/0", "tls": {"caSecretRef": REF, "verify": False}},
        {
            "sentinel": {**SENTINEL, "db": 3, "usernameSecretRef": REF, "passwordSecretRef": REF},
            "usernameSecretRef": REF,
            "passwordSecretRef": {"name": "redis-auth", "key": "pw"},
            "tls": {
                "caSecretRef": {"name": "ca", "key": "root.pem"},
                "certSecretRef": {"name": "client"},
                "keySecretRef": {"name": "client"},
            },
        },
        {"cluster": {"nodes": ["n0", "[fd00::1]:6379", "redis-cluster-1.redis:6379"]}},
        {"urlSecretRef": {"name": "redis"}, "tls": {"caSecretRef": REF}},  # CEL cannot see it
    ],
    ids=[
        "sentinel-url",
        "cluster-url-tls",
        "unix",
        "rediss-no-verify",
        "sentinel-acl-mtls",
        "cluster",
        "url-secret-tls",
    ],
)
def test_production_redis_forms_are_accepted(redis: dict[str, Any]) -> None:
    assert validate(_queue(**redis), CRDS) == []


@pytest.mark.parametrize(
    ("redis", "expected"),
    [
        (
            {"url": "redis://r:6379/0", "sentinel": SENTINEL},
            "set exactly one of redis.url, redis.urlSecretRef, redis.sentinel and redis.cluster",
        ),
        ({"sentinel": SENTINEL, "cluster": {"nodes": ["n:6379"]}}, "set exactly one"),
        (
            {"url": "redis://r:6379/0", "tls": {}},
            "redis.tls needs a TLS URL; use rediss:// (or rediss+sentinel://, rediss+cluster://)",
        ),
        ({"url": "unix:///run/redis.sock", "tls": {}}, "redis.tls needs a TLS URL"),
        (
            {"cluster": {"nodes": ["n:6379"]}, "tls": {"certSecretRef": REF}},
            "a client certificate needs redis.tls.certSecretRef and redis.tls.keySecretRef",
        ),
        ({"cluster": {"nodes": ["n:6379"]}, "tls": {"keySecretRef": REF}}, "set both, or neither"),
        ({"sentinel": {"hosts": ["s:26379"]}}, "sentinel.masterName: Required value"),
        ({"sentinel": {"hosts": [], "masterName": "m"}}, "should be non-empty"),
        ({"cluster": {"nodes": []}}, "should be non-empty"),
        ({"cluster": {"nodes": ["n:6379,m:6379"]}}, "does not match"),
        ({"cluster": {"nodes": ["redis://n:6379"]}}, "does not match"),
        ({"sentinel": {**SENTINEL, "masterName": "a/b"}}, "does not match"),
        ({"sentinel": {**SENTINEL, "db": -1}}, "less than the minimum of 0"),
        ({"url": "rediss+sentinel://u:pw@s1:26379/m/0", "tls": {}}, "does not match"),
        ({"url": "redis+foo://r:6379"}, "does not match"),
        ({"url": "rediss://r:6380", "tls": {"caFile": "/ca.crt"}}, "caFile"),
        ({"sentinel": {**SENTINEL, "usernameSecretRef": {}}}, "usernameSecretRef.name: Required"),
    ],
    ids=[
        "url-and-sentinel",
        "sentinel-and-cluster",
        "tls-with-redis-url",
        "tls-with-unix-url",
        "cert-without-key",
        "key-without-cert",
        "sentinel-without-master",
        "no-sentinels",
        "no-nodes",
        "comma-in-node",
        "scheme-in-node",
        "slash-in-master",
        "negative-db",
        "password-in-sentinel-url",
        "unknown-scheme",
        "unknown-tls-field",
        "secret-ref-without-name",
    ],
)
def test_invalid_production_redis_specs_are_refused(redis: dict[str, Any], expected: str) -> None:
    errors = validate(_queue(**redis), CRDS)
    assert any(expected in e for e in errors), errors


def test_the_keda_example_reads_shoals_waiting_list_and_scales_the_worker() -> None:
    """The ScaledObject's list is the key the runtime builds for the queue, on the Redis the
    Queue names, and it scales a Worker (its /scale subresource) whose own autoscaling is off."""
    from shoal.protocol.keys import queue_keys
    from shoal.settings import Settings

    (worker,) = [d for d in KEDA_EXAMPLE if d["kind"] == "Worker"]
    (scaled,) = [d for d in KEDA_EXAMPLE if d["kind"] == "ScaledObject"]
    assert validate(worker, CRDS) == []
    assert not worker["spec"].get("autoscaling", {}).get("enabled", False)
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("shoal.dev/v1alpha1", "Worker")
    assert target["name"] == worker["metadata"]["name"]
    assert "scale" in version("Worker")["subresources"]
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    (queue,) = worker["spec"]["queues"]
    waiting = queue_keys(Settings().key_prefix, queue).waiting
    assert trigger["metadata"]["listName"] == waiting
    (queue_doc,) = [d for d in EXAMPLES if d["kind"] == "Queue" and d["metadata"]["name"] == queue]
    url = queue_doc["spec"]["redis"]["url"]  # redis://host:port/db
    host_port, db = url.removeprefix("redis://").split("/")
    assert trigger["metadata"]["address"].replace(".default.svc", "") == host_port
    assert trigger["metadata"]["databaseIndex"] == db
