"""Small helpers over the Kubernetes API the handlers share."""

from __future__ import annotations

from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

GROUP, VERSION = "shoal.dev", "v1alpha1"


def patch_status(
    memo: kopf.Memo,
    namespace: str,
    plural: str,
    name: str,
    status: dict[str, Any],
    logger: kopf.Logger,
) -> None:
    try:
        memo.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, plural, name, {"status": status}
        )
    except ApiException as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            logger.warning(
                "cannot update status of %s %s/%s: %s", plural, namespace, name, exc.reason
            )


def read_deployment(memo: kopf.Memo, namespace: str, name: str) -> dict[str, Any] | None:
    """The Deployment as a dict (snake_case keys, as the client returns it), or None."""
    try:
        result: dict[str, Any] = memo.apps.read_namespaced_deployment(name, namespace).to_dict()
        return result
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def camel(obj: Any) -> Any:
    """The kubernetes client's snake_case dicts back in API (camelCase) spelling."""
    if isinstance(obj, dict):
        return {_camel_key(k): camel(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [camel(v) for v in obj]
    return obj


def _camel_key(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)
