"""shoal.manifests: the CRDs it ships are the repository's, defaults come before the rules (as in
the API server), errors are worded as the API server words them, and jsonschema and cel-python
are needed only when ``shoal dev`` checks manifests (a clear line says what to install)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from shoal import manifests
from shoal.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


def _worker(**spec: Any) -> dict[str, Any]:
    base = {"image": "example/tasks:1", "module": "tasks", "queues": ["tasks"]}
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": "tasks", "labels": {"team": "a"}},
        "spec": {**base, **spec},
    }


def test_the_shipped_crds_are_the_repositorys() -> None:
    shipped = {p.name: p.read_bytes() for p in manifests.CRD_DIR.glob("*.yaml")}
    source = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("*.yaml")}
    assert shipped == source
    assert set(manifests.load_crds()) == {"Queue", "Worker"}


def test_defaults_are_applied_nested_and_only_under_what_is_there() -> None:
    queue = {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": "q"},
        "spec": {
            "redis": {"url": "redis://r:6379/0"},
            "schedules": [{"name": "s", "cron": "* * * * *", "task": "t"}],
        },
    }
    stored, errors = manifests.check(queue)
    assert errors == []
    assert stored["metadata"] == {"name": "q"}
    assert stored["spec"]["redis"] == {"url": "redis://r:6379/0", "keyPrefix": "shoal"}
    (schedule,) = stored["spec"]["schedules"]
    assert schedule == {
        **queue["spec"]["schedules"][0],
        "timezone": "UTC",
        "suspend": False,
        "missed": "skip",
    }
    assert "deadLetter" not in stored["spec"]  # an absent object is not made up
    assert "status" not in stored
    assert queue["spec"]["redis"] == {"url": "redis://r:6379/0"}  # the input is left alone


def test_a_rule_is_checked_against_the_defaulted_object() -> None:
    stored, errors = manifests.check(_worker(autoscaling={"enabled": True, "minReplicas": 20}))
    assert stored["spec"]["autoscaling"]["maxReplicas"] == 10
    assert errors == [
        'spec.autoscaling: Invalid value: "object": '
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
    ]
    _, errors = manifests.check(_worker(autoscaling={"enabled": True, "minReplicas": 10}))
    assert errors == []


def test_a_field_of_the_wrong_type_is_reported_once_not_again_by_the_rule_over_it() -> None:
    _, errors = manifests.check(_worker(autoscaling={"minReplicas": "five"}))
    assert errors == [
        'spec.autoscaling.minReplicas: Invalid value: "string": '
        'spec.autoscaling.minReplicas in body must be of type integer: "string"'
    ]


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({**_worker(), "specs": {}}, ["specs: Unknown field"]),
        (
            {k: v for k, v in _worker().items() if k != "spec"},
            ["spec: Required value"],
        ),
        (
            _worker(queues=["a", 3]),
            [
                'spec.queues[1]: Invalid value: "integer": '
                'spec.queues[1] in body must be of type string: "integer"'
            ],
        ),
        (_worker(env=[{"value": "x"}]), ["spec.env[0].name: Required value"]),
    ],
    ids=["typo-at-the-root", "no-spec", "list-item-type", "required-in-list-item"],
)
def test_errors_name_the_field_as_the_api_server_does(
    doc: dict[str, Any], expected: list[str]
) -> None:
    assert manifests.check(doc)[1] == expected


@pytest.mark.parametrize(
    ("api_version", "kind"),
    [("shoal.dev/v1", "Worker"), ("apps/v1", "Worker"), ("shoal.dev/v1alpha1", "Deployment")],
)
def test_other_kinds_and_versions_are_not_shoal_resources(api_version: str, kind: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{api_version} {kind} is not a Shoal resource"):
        manifests.check({**_worker(), "apiVersion": api_version, "kind": kind})


def test_without_jsonschema_or_cel_python_shoal_dev_says_what_to_install(tmp_path: Path) -> None:
    manifest = tmp_path / "worker.yaml"
    manifest.write_text("apiVersion: shoal.dev/v1alpha1\nkind: Worker\nmetadata: {name: w}\n")
    probe = (
        "import sys; sys.modules['celpy'] = None\n"  # as if cel-python were not installed
        f"sys.argv = ['shoal', 'dev', '-f', {str(manifest)!r}]\n"
        "from shoal.cli import main; main()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2
    assert done.stderr == (
        "error: shoal dev checks manifests against the CRDs with jsonschema and cel-python; "
        "install them: pip install 'shoal[local]'\n"
    )


def test_importing_shoal_dev_does_not_import_the_validators() -> None:
    probe = "import sys, shoal.dev; print(' '.join(sys.modules))"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = {m.split(".")[0] for m in done.stdout.split()}
    assert {"jsonschema", "celpy"} & loaded == set()


def test_numbers_written_as_integers_compare_with_decimals_in_rules() -> None:
    # the API server hands CEL every `number` field as a double: 1 <= 30.5 holds, 40 <= 30.5 not
    def queue(defaults: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "shoal.dev/v1alpha1",
            "kind": "Queue",
            "metadata": {"name": "emails"},
            "spec": {"redis": {"url": "redis://r:6379/0"}, "defaults": defaults},
        }

    _, errors = manifests.check(queue({"minBackoffSeconds": 1, "maxBackoffSeconds": 30.5}))
    assert errors == []
    _, errors = manifests.check(queue({"minBackoffSeconds": 40, "maxBackoffSeconds": 30.5}))
    assert errors == [
        'spec.defaults: Invalid value: "object": '
        "defaults.minBackoffSeconds must not exceed defaults.maxBackoffSeconds"
    ]


def test_a_field_left_empty_is_pruned_then_defaulted_as_the_api_server_does() -> None:
    stored, errors = manifests.check(_worker(autoscaling={"enabled": True, "minReplicas": None}))
    assert errors == []
    assert stored["spec"]["autoscaling"]["minReplicas"] == 0
