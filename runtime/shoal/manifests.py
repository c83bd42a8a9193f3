"""Check Queue and Worker manifests against the shipped CRDs, offline, as the API server would.

``shoal dev`` runs manifests without a cluster, so nothing else would refuse a typo'd field or
``minReplicas > maxReplicas``: they would run, differently from how the cluster runs (or
refuses) them. This applies the schema defaults, then checks the OpenAPI schema (unknown fields
rejected, as ``kubectl apply --validate=strict`` does) and the CEL rules
(``x-kubernetes-validations``), and words each error as the API server does. The tests check the
CRDs with it too, so the two cannot drift.

The CRDs are ``shoal/crds/`` (a link to the repository's ``crds/``, shipped as package data).
jsonschema and cel-python come with the ``local`` extra; they are imported on first use so
that only ``shoal dev`` needs them.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from shoal.errors import ConfigurationError

CRD_DIR = Path(__file__).parent / "crds"
NOT_VALIDATED = ("apiVersion", "kind", "metadata")
"""Top-level fields the API server checks itself (ObjectMeta), not the CRD's schema."""
MISSING_DEPENDENCIES = (
    "shoal dev checks manifests against the CRDs with jsonschema and cel-python; "
    "install them: pip install 'shoal[local]'"
)


@functools.cache
def load_crds(crd_dir: Path = CRD_DIR) -> dict[str, dict[str, Any]]:
    """Kind → CRD document."""
    crds = {}
    for path in sorted(crd_dir.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        crds[crd["spec"]["names"]["kind"]] = crd
    if not crds:
        raise ConfigurationError(
            f"no CRDs in {crd_dir}: reinstall Shoal from its repository (pip install '.[local]')"
        )
    return crds


def schema_of(crds: dict[str, dict[str, Any]], api_version: Any, kind: Any) -> dict[str, Any]:
    """The OpenAPI schema the API server would check ``apiVersion``/``kind`` against."""
    crd = crds.get(kind) if isinstance(kind, str) else None
    group, _, version = str(api_version).partition("/")
    served = {v["name"]: v for v in crd["spec"]["versions"] if v["served"]} if crd else {}
    if crd is None or group != crd["spec"]["group"] or version not in served:
        known = ", ".join(
            f"{c['spec']['group']}/{v['name']} {k}"
            for k, c in sorted(crds.items())
            for v in c["spec"]["versions"]
            if v["served"]
        )
        raise ConfigurationError(f"{api_version} {kind} is not a Shoal resource (known: {known})")
    schema: dict[str, Any] = served[version]["schema"]["openAPIV3Schema"]
    return schema


def with_defaults(schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in where a field is missing, nested ones
    included (a copy). The API server defaults before it validates, so a CEL rule sees them;
    like it, a ``null`` in a field that is not ``nullable`` is dropped first (``minReplicas:``
    left empty in YAML is the default, not an error)."""
    value = copy.deepcopy(value)
    _default(schema, value)
    return value


def _default(schema: dict[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, child in (schema.get("properties") or {}).items():
            if name in value and value[name] is None and not child.get("nullable"):
                del value[name]
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                _default(child, value[name])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for name in set(value) - set(schema.get("properties") or {}):
                _default(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _default(schema["items"], item)


def check(
    obj: dict[str, Any], crds: dict[str, dict[str, Any]] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """``obj`` as the API server would store it (defaults applied), and every reason it would
    refuse it, in its words (none: accepted). Raises ConfigurationError for a kind or
    apiVersion that is not a Shoal CRD's."""
    crds = crds or load_crds()
    schema = schema_of(crds, obj.get("apiVersion"), obj.get("kind"))
    body = with_defaults(schema, {k: v for k, v in obj.items() if k not in NOT_VALIDATED})
    jsonschema, celpy = _validators()
    validator = jsonschema.Draft4Validator(_strict(schema))
    found = [
        line
        for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.path)))
        for line in _schema_error(e)
    ]
    found += _cel_errors(celpy, schema, body, "", lenient=bool(found))
    return {**obj, **body}, found


def _validators() -> tuple[Any, Any]:
    try:
        import celpy
        import jsonschema  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigurationError(MISSING_DEPENDENCIES) from None
    return jsonschema, celpy


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
        for child in (node.get("properties") or {}).values():
            walk(child)
        for key in ("items", "additionalProperties"):
            walk(node.get(key))

    walk(schema)
    return schema


def _path(parts: Iterable[str | int]) -> str:
    """``spec.queues[0].name``, as the API server writes field paths."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _shown(value: Any) -> str:
    """A value as the API server quotes it: objects and arrays by their type."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


def _type_name(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "integer" if isinstance(value, int) else "number")


def _schema_error(error: Any) -> list[str]:
    here = list(error.absolute_path)
    path = _path(here) or "<root>"
    kind, value, expected = error.validator, error.instance, error.validator_value
    if kind == "additionalProperties" and isinstance(value, dict):
        known = set(error.schema.get("properties") or {})
        return [f"{_path([*here, k])}: Unknown field" for k in sorted(set(value) - known)]
    if kind == "required" and isinstance(value, dict):
        return [f"{_path([*here, k])}: Required value" for k in expected if k not in value]
    if kind == "type":
        got = _type_name(value)
        return [
            f'{path}: Invalid value: "{got}": {path} in body must be of type {expected}: "{got}"'
        ]
    if kind == "enum":
        allowed = ", ".join(json.dumps(v) for v in expected)
        return [f"{path}: Unsupported value: {_shown(value)}: supported values: {allowed}"]
    return [f"{path}: Invalid value: {_shown(value)}: {path} in body: {error.message}"]


def _cel_errors(
    celpy: Any, schema: dict[str, Any], value: Any, path: str, lenient: bool
) -> list[str]:
    """The failed ``x-kubernetes-validations`` rules of ``value`` and of everything in it.
    ``lenient``: the schema already failed, so a rule that cannot evaluate (a field of the
    wrong type) is not reported again."""
    found: list[str] = []
    if value is None:
        return found
    for rule in schema.get("x-kubernetes-validations", []):
        outcome = _evaluate(celpy, rule["rule"], _as_typed(schema, value))
        if outcome is True or (outcome is None and lenient):
            continue
        reason = rule.get("message") or f"failed rule: {rule['rule']}"
        if outcome is None:
            reason = f"rule could not be evaluated: {rule['rule']}"
        found.append(f"{path or '<root>'}: Invalid value: {_shown(value)}: {reason}")
    if isinstance(value, dict):
        for name, child in (schema.get("properties") or {}).items():
            found += _cel_errors(celpy, child, value.get(name), _path([path, name]), lenient)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += _cel_errors(celpy, schema["items"], item, f"{path}[{i}]", lenient)
    return found


def _as_typed(schema: dict[str, Any], value: Any) -> Any:
    """``value`` as the API server hands it to CEL: a field typed ``number`` is a double even
    when written as an integer (``1`` and ``30.5`` compare)."""
    kind = schema.get("type")
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind == "object" and isinstance(value, dict):
        props = schema.get("properties") or {}
        return {k: _as_typed(props[k], v) if k in props else v for k, v in value.items()}
    if kind == "array" and isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_as_typed(schema["items"], item) for item in value]
    return value


def _evaluate(celpy: Any, rule: str, value: Any) -> bool | None:
    """The rule's outcome, or None when it fails to evaluate."""
    env = celpy.Environment()
    try:
        result = env.program(env.compile(rule)).evaluate({"self": celpy.json_to_cel(value)})
    except Exception:  # celpy raises a variety of errors for ill-typed operands
        return None
    return bool(result) if isinstance(result, bool | celpy.celtypes.BoolType) else None
