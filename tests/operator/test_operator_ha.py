"""Two replicas of the real operator (``shoal-operator`` processes, leader election on) against
the API emulator over real HTTP, with a real Redis: one leads and reconciles, the other stands
by; SIGKILL of the leader hands the Lease to the standby once it expired (by the standby's
clock), which resumes autoscaling from a fresh state without dropping replicas; SIGTERM hands
it over at once (the Lease is released); a leader that cannot renew exits."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kube_emulator import DEPLOYMENTS, LEASES, QUEUES, WORKERS, Kube
from prometheus_client.parser import text_string_to_metric_families

from shoal import App
from shoal.protocol.server import free_port

WaitFor = Callable[..., Any]
LEASE = "shoal-operator"

AUTOSCALING = {
    "enabled": True,
    "minReplicas": 0,
    "maxReplicas": 4,
    "targetPerReplica": 10,
    "pollSeconds": 0.2,
    "scaleToZeroAfterSeconds": 3600,
    # Longer than the test: the old leader's window must not end during it
    "scaleDownStabilizationSeconds": 600,
}


@dataclass
class Replica:
    """One operator process: its name in the Lease, its ports, its log."""

    name: str
    proc: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError:
            return 0, ""  # not listening (yet)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a family's samples matching ``labels`` (0 when none, or no answer)."""
        status, text = self.get("/metrics")
        if status != 200:
            return 0.0
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def replicas(kube: Kube, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """``start(name, **env)``: a ``shoal-operator`` process electing on Lease shoal-operator
    in ``default``; all are killed at the end."""
    started: list[Replica] = []

    def start(name: str, **extra: str) -> Replica:
        metrics_port, liveness_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "OTEL_"))}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.update(
            KUBECONFIG=str(kube.kubeconfig),
            SHOAL_OPERATOR_POLL="0.2",
            SHOAL_OPERATOR_RETRY_DELAY="0.5",
            SHOAL_OPERATOR_METRICS_PORT=str(metrics_port),
            SHOAL_OPERATOR_LIVENESS_PORT=str(liveness_port),
            SHOAL_OPERATOR_LEADER_ELECTION="true",
            SHOAL_OPERATOR_LEASE_NAMESPACE="default",
            SHOAL_OPERATOR_POD_NAME=name,
            # Roomy: on a busy CI runner the emulator (in the test's process, serving two
            # operators' watches) takes 1-2 s for a renewal's GET and PUT; these tests are
            # not about the deadline, and only the takeover after SIGKILL waits a lease
            SHOAL_OPERATOR_LEASE_DURATION="10",
            SHOAL_OPERATOR_LEASE_RENEW_DEADLINE="8",
            SHOAL_OPERATOR_LEASE_RETRY_PERIOD="1",
        )
        env.update(extra)
        log = tmp_path / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "shoal_operator.main"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        replica = Replica(name, proc, metrics_port, log)
        started.append(replica)
        return replica

    try:
        yield start
    finally:
        for replica in started:
            if replica.proc.poll() is None:
                replica.proc.kill()
            replica.proc.wait(10)


def holder(kube: Kube) -> str | None:
    lease = kube.get_or_none(LEASES, LEASE)
    return None if lease is None else lease["spec"].get("holderIdentity")


# Generous deadlines: wait_for returns as soon as the condition holds; a busy CPU only
# makes each step slower, never the outcome different
STEP_S = 90


def leading(kube: Kube, wait_for: WaitFor, replica: Replica, timeout: float = STEP_S) -> None:
    """Wait until ``replica`` holds the Lease and runs the handlers (its gauge says 1)."""
    wait_for(
        lambda: holder(kube) == replica.name and replica.metric("shoal_operator_leader") == 1,
        timeout=timeout,
        message=f"{replica.name} leading ({replica.log})",
    )


def standing_by(wait_for: WaitFor, replica: Replica) -> None:
    wait_for(
        lambda: (
            replica.get("/readyz")[0] == 200
            and "shoal_operator_leader 0.0" in replica.get("/metrics")[1]
        ),
        timeout=STEP_S,
        message=f"{replica.name} ready as a standby ({replica.log})",
    )


def queue(url: str, prefix: str) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": "emails"},
        "spec": {"redis": {"url": url, "keyPrefix": prefix}},
    }


def worker() -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": "tasks"},
        "spec": {
            "image": "example/tasks:1",
            "module": "tasks",
            "queues": ["emails"],
            "autoscaling": AUTOSCALING,
        },
    }


def scaled_to(kube: Kube) -> int | None:
    deployment = kube.get_or_none(DEPLOYMENTS, "tasks")
    return None if deployment is None else int(deployment["spec"].get("replicas") or 0)


DECISIONS = "shoal_operator_autoscale_decisions_total"


@pytest.mark.timeout(600)
def test_the_standby_takes_over_after_the_leader_is_killed_and_keeps_autoscaling(
    kube: Kube, replicas: Callable[..., Replica], redis_url: str, key_prefix: str, wait_for: WaitFor
) -> None:
    # Given two replicas: a leads, b stands by (alive, ready, reporting 0)
    a = replicas("operator-a")
    leading(kube, wait_for, a)
    b = replicas("operator-b")
    standing_by(wait_for, b)

    # And an autoscaled Worker with 25 tasks waiting: the leader scales it to 3
    app = App(redis_url, key_prefix=key_prefix)
    app.remote("t", queue="emails").enqueue_many([(i,) for i in range(25)])
    kube.create(QUEUES, queue(redis_url, key_prefix))
    kube.create(WORKERS, worker())
    wait_for(lambda: scaled_to(kube) == 3, timeout=STEP_S, message=f"scaled to 3 ({a.log})")

    # Then only the leader reconciled and decided; the standby wrote nothing
    assert a.metric("shoal_operator_reconciles_total") > 0
    assert a.metric(DECISIONS) > 0
    assert b.metric("shoal_operator_reconciles_total") == 0
    assert b.metric(DECISIONS) == 0
    assert "became the leader" not in b.output()

    # When the queue's Redis cannot be reached (no data to decide on) and the leader's node
    # dies (SIGKILL: no release, the Lease stays a's until it expires)
    dead = f"redis://127.0.0.1:{free_port()}/0"
    kube.patch(QUEUES, "emails", {"spec": {"redis": {"url": dead}}})
    wait_for(
        lambda: (
            "holding 3"
            in (kube.get(WORKERS, "tasks").get("status") or {}).get("lastScaleReason", "")
        ),
        timeout=STEP_S,
        message="a holds 3 without data",
    )
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    assert holder(kube) == a.name

    # Then b takes the Lease once it expired, and with a fresh autoscaler state and no data
    # it holds the 3 replicas (never scales in, let alone to zero, on missing data)
    leading(kube, wait_for, b)
    wait_for(
        lambda: b.metric(DECISIONS, direction="hold") >= 3,
        timeout=STEP_S,
        message=f"b holds ({b.log})",
    )
    assert scaled_to(kube) == 3
    assert b.metric(DECISIONS, direction="down") == 0
    assert "became the leader" in b.output()

    # And when the data is back and the queue idle, b keeps the 3 replicas a needed within
    # the stabilisation window (its fresh state starts the window at the current replicas,
    # as the HPA does), instead of shrinking on its first look
    app.broker.redis.delete(app.broker.keys("emails").waiting)  # the queue drained
    kube.patch(QUEUES, "emails", {"spec": {"redis": {"url": redis_url}}})
    reason = wait_for(
        lambda: (
            "stabilisation window"
            in (r := (kube.get(WORKERS, "tasks").get("status") or {}).get("lastScaleReason", ""))
            and r
        ),
        timeout=STEP_S,
        message=f"b decides on fresh data ({b.log})",
    )
    assert "held at 3" in reason
    holds = b.metric(DECISIONS, direction="hold")
    wait_for(
        lambda: b.metric(DECISIONS, direction="hold") >= holds + 5,
        timeout=STEP_S,
        message=f"holds ({b.log})",
    )
    assert scaled_to(kube) == 3
    assert b.metric(DECISIONS, direction="down") == 0

    # And b autoscales: 50 tasks waiting take the Worker to its maximum, 4
    app.remote("t", queue="emails").enqueue_many([(i,) for i in range(50)])
    wait_for(lambda: scaled_to(kube) == 4, timeout=STEP_S, message=f"b scales to 4 ({b.log})")
    assert b.metric(DECISIONS, direction="up") >= 1
    app.close()


@pytest.mark.timeout(300)
def test_sigterm_releases_the_lease_and_the_standby_takes_over_at_once(
    kube: Kube, replicas: Callable[..., Replica], wait_for: WaitFor
) -> None:
    # Given a leader and a standby, with a lease far longer than this test waits
    slow = {"SHOAL_OPERATOR_LEASE_DURATION": "600", "SHOAL_OPERATOR_LEASE_RENEW_DEADLINE": "400"}
    a = replicas("operator-a", **slow)
    leading(kube, wait_for, a)
    b = replicas("operator-b", **slow)
    standing_by(wait_for, b)

    # When the leader is stopped as Kubernetes stops a pod
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0, a.output()

    # Then it released the Lease (no holder) and the standby took it without waiting for
    # the 600 s lease to expire
    assert "released Lease default/shoal-operator" in a.output()
    leading(kube, wait_for, b, timeout=60)  # far below 600 s
    lease = kube.get(LEASES, LEASE)
    assert lease["spec"]["leaseTransitions"] == 1
    specs = kube.server.call(
        lambda: [o["spec"] for o in kube.emulator.objects[LEASES.key, "default", LEASE].history]
    )
    holders = [spec.get("holderIdentity") for spec in specs]
    changes = [h for i, h in enumerate(holders) if i == 0 or h != holders[i - 1]]
    assert changes == ["operator-a", "", "operator-b"]


@pytest.mark.timeout(300)
def test_a_leader_that_cannot_renew_stops_and_a_standby_stops_cleanly(
    kube: Kube, replicas: Callable[..., Replica], wait_for: WaitFor
) -> None:
    # Given a leader
    a = replicas("operator-a")
    leading(kube, wait_for, a)
    b = replicas("operator-b")
    standing_by(wait_for, b)

    # When the API refuses every write of the Lease
    (
        kube.emulator["put /apis/coordination.k8s.io/v1/namespaces/default/leases/shoal-operator"]
        << 500
    )

    # Then the leader stops its handlers by exiting (Kubernetes restarts it as a standby)
    assert a.proc.wait(STEP_S) == 1
    assert "lost leadership of Lease default/shoal-operator" in a.output()

    # And a standby stopped by SIGTERM exits cleanly, without ever leading
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(30) == 0, b.output()
    assert "became the leader" not in b.output()


def test_a_standby_is_alive_while_it_waits(
    kube: Kube, replicas: Callable[..., Replica], wait_for: WaitFor
) -> None:
    a = replicas("operator-a")
    leading(kube, wait_for, a)
    port = free_port()
    b = replicas("operator-b", SHOAL_OPERATOR_LIVENESS_PORT=str(port))
    standing_by(wait_for, b)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        assert response.status == 200
        assert response.read() == b"standby\n"
    with contextlib.suppress(ProcessLookupError):
        b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(30) == 0
