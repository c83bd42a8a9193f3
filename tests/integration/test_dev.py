"""``shoal dev -f queue.yaml``: the manifests' Worker runs as local processes, autoscaled by the
same policy as in the cluster: a burst wakes the fleet from zero, an idle fleet goes back to
zero, the Queue's defaults reach Redis."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from processes import shoal_dev

from helpers import wait_for
from shoal import App, ConfigurationError
from shoal.dev import load_manifests

MANIFEST = """
apiVersion: shoal.dev/v1alpha1
kind: Queue
metadata: {name: burst}
spec:
  redis: {url: "redis://cluster-redis:6379/0", keyPrefix: %(prefix)s}
  defaults: {timeoutSeconds: 10, maxRetries: 2}
---
apiVersion: shoal.dev/v1alpha1
kind: Worker
metadata: {name: crunchers}
spec:
  image: example/tasks:1
  module: dev_tasks
  queues: [burst]
  concurrency: 10
  autoscaling:
    enabled: true
    minReplicas: 0
    maxReplicas: 4
    targetPerReplica: 10
    pollSeconds: 0.5  # the CRD's minimum: shoal dev refuses what the cluster would
    scaleToZeroAfterSeconds: 1
    scaleDownStabilizationSeconds: 1
"""


def test_dev_scales_a_local_fleet_from_zero_and_back(
    redis_url: str, key_prefix: str, make_app: Callable[..., App], tmp_path: Path
) -> None:
    # Given shoal dev running the manifests against the test Redis, with no work yet
    manifest = tmp_path / "queue.yaml"
    manifest.write_text(MANIFEST % {"prefix": key_prefix})
    log = tmp_path / "dev.log"
    with shoal_dev(manifest, redis_url, log):
        app = make_app()
        wait_for(
            lambda: app.queue_defaults("burst") == {"timeout": 10.0, "max_retries": 2},
            message="the Queue's defaults in Redis",
        )
        assert app.broker.workers() == []  # scaled to zero while idle

        # When a burst of 200 tasks arrives
        app.remote("crunch", queue="burst").enqueue_many([(i,) for i in range(200)])

        # Then the fleet grows to its maximum, drains the burst, and goes back to zero
        wait_for(lambda: len(app.broker.workers()) == 4, timeout=30, message="4 local workers")
        wait_for(lambda: app.measure("burst").completed == 200, timeout=30, message="all done")
        wait_for(lambda: app.broker.workers() == [], timeout=30, message="scaled back to zero")
        text = log.read_text()
        assert "crunchers: 0 → 4" in text
        assert "→ 0" in text
    assert "stopped every worker it started" in log.read_text()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n", "not a Shoal resource"),
        (
            "apiVersion: shoal.dev/v1alpha1\nkind: Worker\nmetadata: {name: w}\n"
            "spec: {image: i, module: m, queues: [nope]}\n",
            "missing: nope",
        ),
        ("apiVersion: shoal.dev/v1alpha1\nkind: Queue\nspec: {}\n", "without metadata.name"),
    ],
)
def test_bad_manifests_are_refused_with_a_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=message):
        load_manifests([path])
