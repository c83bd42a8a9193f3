"""The chart's dashboard toggle: off by default; on, a restricted Deployment running
`shoal dashboard` from the chart's image and a Service, Redis and the token from Secrets."""

from __future__ import annotations

from typing import Any

import pytest
from test_chart import (
    CHART,
    KUBERNETES_VERSION,
    RELEASE,
    helm,
    kubernetes_validate,
    one,
    render,
    restricted_violations,
)

SECRETS: dict[str, Any] = {
    "dashboard": {
        "enabled": True,
        "redisUrlSecretRef": {"name": "shoal-redis", "key": "url"},
        "tokenSecretRef": {"name": "shoal-dashboard", "key": "token"},
        "traceUrlTemplate": "https://jaeger.example.com/trace/{trace_id}",
    }
}
DEMO: dict[str, Any] = {"dashboard": {"enabled": True}, "redis": {"enabled": True}}
NAME = f"{RELEASE}-dashboard"


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (only,) = one(docs, "Deployment", NAME)["spec"]["template"]["spec"]["containers"]
    return only


def test_off_by_default() -> None:
    docs = render()
    assert not [d for d in docs if d["metadata"]["name"] == NAME]


@pytest.mark.parametrize("values", [SECRETS, DEMO], ids=["secrets", "demo-redis"])
def test_on_it_is_a_valid_restricted_deployment_and_service(values: dict[str, Any]) -> None:
    docs = render(values)
    deployment, service = one(docs, "Deployment", NAME), one(docs, "Service", NAME)
    for doc in (deployment, service):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert restricted_violations(NAME, deployment["spec"]["template"]["spec"]) == []
    c = container(docs)
    assert c["args"] == ["dashboard", "--host", "0.0.0.0", "--port", "8787"]
    assert (
        c["image"]
        == one(docs, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"]["containers"][
            0
        ]["image"]
    )
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 8787
    assert helm("lint", "--strict", str(CHART), values=values).returncode == 0


def test_redis_url_and_token_come_from_secrets() -> None:
    env = {e["name"]: e for e in container(render(SECRETS))["env"]}
    assert env["SHOAL_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "shoal-redis",
        "key": "url",
    }
    assert env["SHOAL_DASHBOARD_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "shoal-dashboard",
        "key": "token",
    }
    assert env["SHOAL_TRACE_URL_TEMPLATE"]["value"].endswith("/trace/{trace_id}")


def test_without_a_token_secret_it_is_read_only_and_reads_the_demo_redis() -> None:
    env = {e["name"]: e for e in container(render(DEMO))["env"]}
    assert "SHOAL_DASHBOARD_TOKEN" not in env
    assert env["SHOAL_REDIS_URL"]["value"] == f"redis://{RELEASE}-redis:6379/0"


def test_no_redis_at_all_fails_with_what_to_set() -> None:
    done = helm("template", RELEASE, str(CHART), values={"dashboard": {"enabled": True}})
    assert done.returncode != 0
    assert "dashboard.redisUrl or dashboard.redisUrlSecretRef.name" in done.stderr


@pytest.mark.parametrize(
    "bad",
    [
        {"redisUrl": "redis://:secret@host:6379/0"},  # a password in a plain value
        {"traceUrlTemplate": "http://jaeger/trace/"},  # no {trace_id}
        {"port": "8787"},
        {"tokenSecretRef": {"nme": "x"}},
    ],
)
def test_schema_refuses_bad_dashboard_values(bad: dict[str, Any]) -> None:
    values = {"dashboard": {"enabled": True, "redisUrl": "redis://r:6379/0", **bad}}
    done = helm("lint", str(CHART), values=values)
    assert done.returncode != 0, done.stdout
