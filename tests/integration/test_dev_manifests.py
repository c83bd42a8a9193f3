"""``shoal dev -f MANIFEST`` refuses what the API server would refuse (the CRDs' schema, unknown
fields, CEL rules over defaulted fields), every error at once, before starting anything; and a
valid manifest runs as the cluster would store it, defaults applied. The CLI runs as a user
runs it: a subprocess, its exit status and its output."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from processes import worker_env

from shoal import App

QUEUE = """
apiVersion: shoal.dev/v1alpha1
kind: Queue
metadata: {name: tasks}
spec:
  redis: {url: "redis://127.0.0.1:6379/0"}
"""

WORKER = """
---
apiVersion: shoal.dev/v1alpha1
kind: Worker
metadata: {name: tasks}
spec:
  image: example/tasks:1
  module: dev_tasks
  queues: [tasks]
"""


def _shoal_dev(
    tmp_path: Path, text: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "shoal", "dev", "-f", str(manifest), *args],
        env=env or worker_env("redis://127.0.0.1:1/0"),  # never reached when refused
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _refused(tmp_path: Path, text: str) -> list[str]:
    """The error lines of a refused ``shoal dev`` (after checking it refused as it should)."""
    done = _shoal_dev(tmp_path, text, "--duration", "0")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""  # nothing started, not even a redis-server
    first, *lines = done.stderr.splitlines()
    assert first.startswith("error: shoal dev started nothing: ")
    where = f"{tmp_path / 'manifest.yaml'} (document "
    assert all(line.startswith(f"  {where}") for line in lines), lines
    return [line.split("): ", 1)[1] for line in lines]


def test_a_typoed_field_is_refused_as_unknown(tmp_path: Path) -> None:
    text = QUEUE + WORKER + "  autoscaling: {enabled: true, maxRepicas: 2}\n"
    assert _refused(tmp_path, text) == [
        'Worker "tasks" is invalid: spec.autoscaling.maxRepicas: Unknown field'
    ]


def test_min_above_max_replicas_is_refused_by_the_crds_rule(tmp_path: Path) -> None:
    text = QUEUE + WORKER + "  autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 2}\n"
    assert _refused(tmp_path, text) == [
        'Worker "tasks" is invalid: spec.autoscaling: Invalid value: "object": '
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
    ]


def test_a_rule_sees_the_default_of_a_field_left_out(tmp_path: Path) -> None:
    # maxReplicas defaults to 10: the API server refuses minReplicas 20 without it
    text = QUEUE + WORKER + "  autoscaling: {enabled: true, minReplicas: 20}\n"
    assert _refused(tmp_path, text) == [
        'Worker "tasks" is invalid: spec.autoscaling: Invalid value: "object": '
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
    ]


def test_a_wrong_type_is_refused(tmp_path: Path) -> None:
    text = QUEUE + WORKER + "  replicas: two\n"
    assert _refused(tmp_path, text) == [
        'Worker "tasks" is invalid: spec.replicas: Invalid value: "string": '
        'spec.replicas in body must be of type integer: "string"'
    ]


def test_every_error_of_every_document_is_reported_at_once(tmp_path: Path) -> None:
    text = (
        QUEUE
        + "  defaults: {maxRetries: -1}\n"
        + WORKER
        + "  concurrency: 0\n  imagePullPolicy: Sometimes\n  procesess: 2\n"
        + "  autoscaling: {enabled: true, minReplicas: 5, maxReplicas: 2}\n"
        + "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"
    )
    lines = _refused(tmp_path, text)
    assert lines == [
        'Queue "tasks" is invalid: spec.defaults.maxRetries: Invalid value: -1: '
        "spec.defaults.maxRetries in body: -1 is less than the minimum of 0",
        'Worker "tasks" is invalid: spec.procesess: Unknown field',
        'Worker "tasks" is invalid: spec.concurrency: Invalid value: 0: '
        "spec.concurrency in body: 0 is less than the minimum of 1",
        'Worker "tasks" is invalid: spec.imagePullPolicy: Unsupported value: "Sometimes": '
        'supported values: "Always", "IfNotPresent", "Never"',
        'Worker "tasks" is invalid: spec.autoscaling: Invalid value: "object": '
        "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        "apps/v1 Deployment web is not a Shoal resource; "
        "shoal dev runs shoal.dev/v1alpha1 Queue and Worker only",
    ]


def test_a_valid_manifest_runs_with_the_defaults_the_api_server_applies(
    redis_url: str, key_prefix: str, make_app: Callable[..., App], tmp_path: Path
) -> None:
    # Given a valid Queue whose deadLetter bounds are left to the CRD's defaults, and a Worker
    queue = QUEUE.replace('0"}', f'0", keyPrefix: {key_prefix}}}')
    assert key_prefix in queue
    text = queue + "  deadLetter: {}\n" + WORKER

    # When shoal dev runs it for a moment
    done = _shoal_dev(
        tmp_path, text, "--redis-url", redis_url, "--duration", "1", env=worker_env(redis_url)
    )

    # Then it started its worker, stopped it, and wrote the defaulted bounds to Redis
    assert done.returncode == 0, done.stdout + done.stderr
    assert "tasks: 0 → 1 (fixed size (spec.replicas))" in done.stdout
    assert "stopped every worker it started" in done.stdout
    defaults = make_app().queue_defaults("tasks")
    assert defaults == {"dlq_max_entries": 10000, "dlq_max_age": 604800.0}


def test_a_worker_of_an_invalid_queue_is_not_also_told_the_queue_is_missing(
    tmp_path: Path,
) -> None:
    text = QUEUE + "  color: blue\n" + WORKER + "---\n- not\n- an object\n"
    assert _refused(tmp_path, text) == [
        'Queue "tasks" is invalid: spec.color: Unknown field',
        "not a Kubernetes object (a mapping with a kind)",
    ]
