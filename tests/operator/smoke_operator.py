"""A throwaway kopf operator that exercises the harness (not Shoal's operator).

* Queue created → ``status.phase = "Seen"``.
* Worker created → a Deployment owned by the Worker (``kopf.adopt``), via the kubernetes client.
* Queue deleted → a delete handler runs, so kopf keeps a finalizer on every Queue meanwhile;
  it records the deletion in a ConfigMap the test can see.
"""

from __future__ import annotations

from typing import Any

import kopf
import kubernetes

GROUP, VERSION = "shoal.dev", "v1alpha1"


@kopf.on.create(GROUP, VERSION, "queues")
def queue_seen(patch: kopf.Patch, **_: Any) -> None:
    patch.status["phase"] = "Seen"


@kopf.on.delete(GROUP, VERSION, "queues")
def queue_gone(name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None  # Queues are namespaced
    config_map = kubernetes.client.V1ConfigMap(
        metadata=kubernetes.client.V1ObjectMeta(name=f"{name}-deleted"), data={"queue": name}
    )
    kubernetes.client.CoreV1Api().create_namespaced_config_map(namespace, config_map)


@kopf.on.create(GROUP, VERSION, "workers")
def worker_deployment(
    spec: kopf.Spec, name: str, namespace: str | None, **_: Any
) -> dict[str, str]:
    labels = {"app.kubernetes.io/name": "shoal-worker", "shoal.dev/worker": name}
    deployment: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-worker", "labels": labels},
        "spec": {
            "replicas": spec.get("replicas", 1),
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "worker", "image": "shoal:test"}]},
            },
        },
    }
    kopf.adopt(deployment)  # ownerReferences → the Worker; the namespace too
    # The client takes plain dicts too (its type hints say V1Deployment).
    kubernetes.client.AppsV1Api().create_namespaced_deployment(
        namespace,
        deployment,  # type: ignore[arg-type]
    )
    return {"deployment": deployment["metadata"]["name"]}
