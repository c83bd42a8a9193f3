"""The harness itself: the emulator's API semantics, and a real kopf operator against it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kube_emulator import (
    CONFIGMAPS,
    DEPLOYMENTS,
    LEASES,
    QUEUES,
    WORKERS,
    Kube,
    KubeAPIError,
    OperatorRunnerFactory,
)

SMOKE_OPERATOR = Path(__file__).with_name("smoke_operator.py")
FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
WaitFor = Callable[..., Any]


def queue(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {"redisUrl": "redis://x"},
    }


def worker(name: str, replicas: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": name},
        "spec": {"queue": "emails", "replicas": replicas},
    }


# --- the emulator alone --------------------------------------------------------------------


def test_server_owned_fields_and_patches(kube: Kube) -> None:
    created = kube.create(WORKERS, worker("w"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert "status" not in kube.create(QUEUES, {**queue("q"), "status": {"phase": "Forged"}})

    status = kube.patch(
        WORKERS, "w", {"status": {"replicas": 1}, "spec": {"x": 1}}, subresource="status"
    )
    assert status["status"] == {"replicas": 1} and "x" not in status["spec"]
    assert status["metadata"]["generation"] == 1
    assert int(status["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])

    scaled = kube.patch(WORKERS, "w", {"spec": {"replicas": 5}}, subresource="scale")
    assert scaled["kind"] == "Scale" and scaled["spec"]["replicas"] == 5
    after = kube.get(WORKERS, "w")
    assert after["spec"]["replicas"] == 5 and after["metadata"]["generation"] == 2
    assert kube.patch(WORKERS, "w", {"spec": {"replicas": 5}}) == after  # a no-op write

    stale = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta["resourceVersion"]},
        {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
    ]
    with pytest.raises(KubeAPIError) as failed:
        kube.patch(WORKERS, "w", stale, patch_type="json")
    assert failed.value.status == 422
    with pytest.raises(KubeAPIError) as conflict:
        kube.patch(WORKERS, "w", {"metadata": {"resourceVersion": meta["resourceVersion"]}})
    assert conflict.value.status == 409


def test_finalizers_garbage_collection_and_selectors(kube: Kube) -> None:
    owner = kube.create(WORKERS, {**worker("w"), "metadata": {"name": "w", "finalizers": ["f"]}})
    ref = {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Worker",
        "name": "w",
        "uid": owner["metadata"]["uid"],
    }
    for name, tier in (("a", "x"), ("b", "y")):
        kube.create(
            DEPLOYMENTS,
            {
                "metadata": {"name": name, "labels": {"tier": tier}, "ownerReferences": [ref]},
                "spec": {},
            },
        )
    assert [d["metadata"]["name"] for d in kube.list(DEPLOYMENTS, label_selector="tier=x")] == ["a"]
    assert len(kube.list(DEPLOYMENTS, label_selector="tier in (x, y),!missing")) == 2

    terminating = kube.delete(WORKERS, "w")
    assert terminating["metadata"]["deletionTimestamp"]
    assert kube.exists(WORKERS, "w") and kube.exists(DEPLOYMENTS, "a")
    kube.patch(WORKERS, "w", {"metadata": {"finalizers": None}})
    assert not kube.exists(WORKERS, "w")
    assert kube.list(DEPLOYMENTS) == []


def test_kubernetes_client_is_pointed_at_the_emulator(kube: Kube) -> None:
    apps = kubernetes.client.AppsV1Api()
    body: dict[str, Any] = {
        "metadata": {"name": "d"},
        "spec": {
            "selector": {"matchLabels": {"app": "d"}},
            "template": {"spec": {"containers": [{"name": "a", "image": "1"}]}},
        },
    }
    apps.create_namespaced_deployment("default", body)  # type: ignore[arg-type]  # dicts work
    # The client's default for dict bodies is a strategic merge patch: lists merge by name.
    apps.patch_namespaced_deployment(
        "d",
        "default",
        {"spec": {"template": {"spec": {"containers": [{"name": "b", "image": "2"}]}}}},
    )
    apps.patch_namespaced_deployment_scale("d", "default", {"spec": {"replicas": 3}})
    got = kube.get(DEPLOYMENTS, "d")
    assert [c["name"] for c in got["spec"]["template"]["spec"]["containers"]] == ["a", "b"]
    assert got["spec"]["replicas"] == 3


# --- a real kopf operator ------------------------------------------------------------------


def test_operator_sets_status_and_owns_a_deployment(
    kube: Kube, operator_runner: OperatorRunnerFactory, wait_for: WaitFor
) -> None:
    with operator_runner(SMOKE_OPERATOR, watched=[QUEUES, WORKERS]):
        kube.create(QUEUES, queue("emails"))
        kube.create(WORKERS, worker("emails", replicas=2))

        wait_for(
            lambda: kube.get(QUEUES, "emails").get("status", {}).get("phase") == "Seen",
            message="Queue status.phase == Seen",
        )
        deployment = wait_for(
            lambda: kube.get_or_none(DEPLOYMENTS, "emails-worker"),
            message="the Worker's Deployment",
        )
        owner = kube.get(WORKERS, "emails")
        assert deployment["spec"]["replicas"] == 2
        assert [ref["uid"] for ref in deployment["metadata"]["ownerReferences"]] == [
            owner["metadata"]["uid"]
        ]
        wait_for(
            lambda: (
                kube.get(WORKERS, "emails").get("status", {}).get("worker_deployment")
                == {"deployment": "emails-worker"}
            ),
            message="the handler's result in the Worker's status",
        )

        kube.delete(WORKERS, "emails")
        wait_for(
            lambda: not kube.exists(DEPLOYMENTS, "emails-worker"),
            message="the Deployment garbage-collected with its Worker",
        )


def test_finalizer_round_trip(
    kube: Kube, operator_runner: OperatorRunnerFactory, wait_for: WaitFor
) -> None:
    with operator_runner(SMOKE_OPERATOR, namespaces=["default"], watched=[QUEUES]):
        kube.create(QUEUES, queue("jobs"))
        wait_for(
            lambda: FINALIZER in kube.get(QUEUES, "jobs")["metadata"].get("finalizers", []),
            message="kopf's finalizer added (there is a delete handler)",
        )

        deleting = kube.delete(QUEUES, "jobs")
        assert deleting["metadata"]["deletionTimestamp"]  # held by the finalizer meanwhile
        wait_for(
            lambda: not kube.exists(QUEUES, "jobs"),
            message="the finalizer removed after the delete handler, the Queue gone",
        )
        assert kube.get(CONFIGMAPS, "jobs-deleted")["data"] == {"queue": "jobs"}


def test_leases_are_served_with_optimistic_concurrency(kube: Kube) -> None:
    # Given a coordination.k8s.io/v1 Lease, as leader election writes it
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "op"},
        "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
    }
    created = kube.create(LEASES, body)
    assert created["metadata"]["namespace"] == "default"
    with pytest.raises(KubeAPIError) as exists:
        kube.create(LEASES, body)
    assert exists.value.status == 409

    # When two replace it from the same resourceVersion, then the second is refused (409)
    path = LEASES.url("default", "op")
    stale = kube.get(LEASES, "op")
    taken = kube.request("PUT", path, {**stale, "spec": {"holderIdentity": "b"}})
    assert taken["spec"]["holderIdentity"] == "b"
    assert int(taken["metadata"]["resourceVersion"]) > int(stale["metadata"]["resourceVersion"])
    with pytest.raises(KubeAPIError) as conflict:
        kube.request("PUT", path, {**stale, "spec": {"holderIdentity": "c"}})
    assert conflict.value.status == 409
    assert kube.get(LEASES, "op")["spec"]["holderIdentity"] == "b"

    # And the kubernetes client finds it through discovery-free typed calls too
    api = kubernetes.client.CoordinationV1Api()
    lease = api.read_namespaced_lease("op", "default")
    assert lease.spec.holder_identity == "b"
