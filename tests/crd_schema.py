"""Validate objects against our CRDs offline, as the API server would: the OpenAPI schema
(unknown fields rejected, as ``kubectl apply --validate=strict`` does) and the CEL rules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT / "crds"


def load_crds() -> dict[str, dict[str, Any]]:
    """Kind → CRD document, from crds/."""
    crds = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = crd
    return crds


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy where objects without preserve-unknown-fields reject unknown properties."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if not isinstance(node, dict):
            return
        if (
            node.get("type") == "object"
            and "properties" in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node.setdefault("additionalProperties", False)
        for key in ("properties",):
            for child in node.get(key, {}).values():
                walk(child)
        for key in ("items", "additionalProperties"):
            walk(node.get(key))

    walk(schema)
    return schema


def _cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    errors: list[str] = []
    if value is None:
        return errors
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(value)}):
            errors.append(f"{path or '.'}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            errors += _cel_errors(child, value.get(name), f"{path}.{name}")
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def validate(obj: dict[str, Any], crds: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Every reason the API server would refuse ``obj`` (empty: accepted)."""
    crds = crds or load_crds()
    crd = crds[obj["kind"]]
    group, version = obj["apiVersion"].split("/")
    assert group == crd["spec"]["group"], obj["apiVersion"]
    served = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in served:
        return [f"version {version} is not served"]
    schema = served[version]["schema"]["openAPIV3Schema"]
    body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
    validator = jsonschema.Draft4Validator(_strict(schema))
    errors = [
        f"{'.'.join(map(str, e.absolute_path)) or '.'}: {e.message}"
        for e in validator.iter_errors(body)
    ]
    return errors or _cel_errors(schema, body, "")
