"""Failover drills on real topologies: a Sentinel failover (forced, and a killed master) and a
Redis Cluster master killed, each in the middle of a run of producers and worker processes.

What is counted: every enqueue a producer saw acknowledged, with ``SHOAL_REDIS_WAIT_REPLICAS=1``
(so it had reached a replica), must run; lost = 0. Workers and producers keep their processes:
nothing is restarted but Redis.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from processes import WorkerProcess, runs

from helpers import RunningWorker, wait_for
from shoal import App, BrokerError, EnqueueOutcomeUnknown, ReplicationUnconfirmed
from shoal.worker import Worker
from topologies import ClusterTopology, SentinelTopology, Topology

QUEUE = "delivery"  # tasks_for_tests' queue
BEFORE, AFTER = 100, 100  # acknowledged enqueues before the failure, and after it


class Producer:
    """Enqueues ``slow`` tasks one at a time in a thread until stopped, as a web app would,
    and keeps the ids whose enqueue was acknowledged. An enqueue that raised (the failover
    window) is not acknowledged: its caller was told it may not have been stored."""

    def __init__(self, app: App) -> None:
        self.task = app.remote("slow", queue=QUEUE)
        self.acknowledged: list[str] = []
        self.refused: list[BrokerError] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            task_id = f"m{i:05d}"
            try:
                self.task.with_options(dedupe_key=task_id).enqueue(task_id, 0.005)
                self.acknowledged.append(task_id)
            except BrokerError as exc:
                self.refused.append(exc)
                time.sleep(0.05)  # as a caller backing off
            i += 1

    @contextmanager
    def running(self) -> Iterator[Producer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=60)
            assert not self._thread.is_alive(), "the producer hung"


def drill(
    topology: Topology,
    make_app: Callable[..., App],
    key_prefix: str,
    worker_process: Callable[..., WorkerProcess],
    fail: Callable[[], object],
) -> Producer:
    """Run a producer and two worker processes, call ``fail`` once enqueues flow, let the
    producer go on until enqueues flow again, and check that every acknowledged enqueue ran,
    in the same worker processes."""
    app = make_app(redis_wait_replicas=1, redis_wait_timeout_s=2.0)
    env = {
        **topology.env,
        "SHOAL_KEY_PREFIX": key_prefix,
        "SHOAL_LEASE": "3",
        "SHOAL_HEARTBEAT": "1",
    }
    sup = worker_process(
        topology.url, "--processes", "2", "--concurrency", "8", "--queues", QUEUE, **env
    )
    children = wait_for(
        lambda: len(sup.child_pids()) == 2 and sup.child_pids(),
        timeout=30,
        message="two worker processes",
    )
    with Producer(app).running() as producer:
        wait_for(lambda: len(producer.acknowledged) >= BEFORE, timeout=60, message="enqueues")
        fail()
        recovered = len(producer.acknowledged) + AFTER
        wait_for(
            lambda: len(producer.acknowledged) >= recovered,
            timeout=60,
            message=f"enqueues to flow again (refused: {producer.refused[-1:]})",
        )
    admin = topology.admin()
    acknowledged = set(producer.acknowledged)
    wait_for(
        lambda: acknowledged <= set(runs(admin, key_prefix)),
        timeout=90,
        message=f"every acknowledged enqueue to run ({len(acknowledged)}); workers:\n{sup.log()}",
    )
    assert sup.child_pids() == children, "a worker process was restarted:\n" + sup.log()
    return producer


@pytest.fixture
def sentinel(sentinel_topology: SentinelTopology) -> Iterator[SentinelTopology]:
    yield sentinel_topology
    if sentinel_topology.killed is not None:  # the next test finds a whole replica set
        sentinel_topology.restart_killed()


@pytest.mark.every_topology("sentinel")
@pytest.mark.timeout(240)
def test_a_forced_sentinel_failover_mid_run_loses_no_acknowledged_enqueue(
    topology: Topology,
    sentinel: SentinelTopology,
    make_app: Callable[..., App],
    key_prefix: str,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    old = sentinel.master_port()
    drill(topology, make_app, key_prefix, worker_process, sentinel.failover)
    assert sentinel.master_port() != old


@pytest.mark.every_topology("sentinel")
@pytest.mark.timeout(240)
def test_a_killed_sentinel_master_mid_run_loses_no_acknowledged_enqueue(
    topology: Topology,
    sentinel: SentinelTopology,
    make_app: Callable[..., App],
    key_prefix: str,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    def kill_the_master() -> None:
        sentinel.kill_master()
        sentinel.restart_killed()  # as Kubernetes restarts the pod: a replica again

    producer = drill(topology, make_app, key_prefix, worker_process, kill_the_master)
    # the window between the kill and the election refused enqueues, saying so in one line
    assert producer.refused, "no enqueue met the failover window: the drill did not drill"
    assert all("\n" not in str(exc) and "redis+sentinel://" in str(exc) for exc in producer.refused)


@pytest.fixture
def cluster(cluster_topology: ClusterTopology) -> Iterator[ClusterTopology]:
    yield cluster_topology
    for port in set(cluster_topology.ports) - set(cluster_topology.live_ports()):
        cluster_topology.restart(port)  # the next test finds three masters with a replica each
    cluster_topology.wait_stable()


@pytest.mark.every_topology("cluster")
@pytest.mark.timeout(240)
def test_a_cluster_master_killed_mid_run_loses_no_acknowledged_enqueue(
    topology: Topology,
    cluster: ClusterTopology,
    make_app: Callable[..., App],
    key_prefix: str,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    queue_key = f"{key_prefix}:{{{QUEUE}}}:waiting"

    def kill_the_queues_master() -> None:
        old = cluster.kill_master_of(queue_key)
        cluster.wait_failover(old)
        cluster.restart(old)  # as Kubernetes restarts the pod: a replica again

    before = cluster.master_for_key(queue_key)
    drill(topology, make_app, key_prefix, worker_process, kill_the_queues_master)
    assert cluster.master_for_key(queue_key) != before


@pytest.mark.every_topology("cluster")
@pytest.mark.timeout(120)
def test_an_enqueue_to_a_dead_cluster_node_says_nothing_was_stored(
    topology: Topology, cluster: ClusterTopology, app: App
) -> None:
    task = app.remote("slow", queue=QUEUE)
    task.enqueue("warm", 0)  # the slot map and a pooled connection are known

    killed = cluster.kill_master_of(f"{app.settings.key_prefix}:{{{QUEUE}}}:waiting")

    # the node refuses connections: the enqueue certainly did not reach it (the client's own
    # reload of the slot map, which it sends meanwhile, does not count)
    with pytest.raises(BrokerError) as info:
        task.enqueue("lost", 0)
    assert not isinstance(info.value, EnqueueOutcomeUnknown), info.value
    assert "Nothing was stored" in str(info.value)
    cluster.wait_failover(killed)  # then the fixture restarts it as a replica


@pytest.mark.every_topology("single", "acl", "sentinel")
def test_an_enqueue_waits_for_a_replica_and_says_when_none_confirmed(
    topology: Topology, make_app: Callable[..., App]
) -> None:
    app = make_app(redis_wait_replicas=1, redis_wait_timeout_s=0.05)
    task = app.remote("slow", queue=QUEUE)
    if topology.name == "sentinel":  # a replica follows the master: WAIT 1 is answered
        task.enqueue("kept", 0)
        assert app.measure(QUEUE).waiting == 1
        return
    # no replica: the message is stored on the primary, and the producer is told it is not
    # replicated (the ACL user may run WAIT: the rule grants it)
    with pytest.raises(ReplicationUnconfirmed, match="0 of 1 replica confirmed"):
        task.enqueue("unconfirmed", 0)
    assert app.measure(QUEUE).waiting == 1


def test_an_unreachable_cluster_is_one_error_naming_the_url() -> None:
    app = App(redis_url="redis+cluster://u:secret@127.0.0.1:1,127.0.0.1:2")
    with pytest.raises(BrokerError) as info:
        app.remote("slow", queue=QUEUE).enqueue("x", 0)
    message = str(info.value)
    assert "redis+cluster://u:***@127.0.0.1:1,127.0.0.1:2" in message
    assert "secret" not in message and "\n" not in message


@pytest.mark.every_topology("cluster")
@pytest.mark.timeout(120)
def test_an_idle_worker_whose_notify_node_died_polls_instead_of_spinning(
    topology: Topology, cluster: ClusterTopology, make_app: Callable[..., App]
) -> None:
    app = make_app(idle_poll_s=0.5)
    ran: list[str] = []

    @app.task(queue="idle")
    def mark(label: str) -> None:
        ran.append(label)

    worker = Worker(app, ["idle"], concurrency=2)
    fetches = 0
    fetch = worker.broker.fetch

    async def counted(queue: str, count: int) -> Any:
        nonlocal fetches
        fetches += 1
        return await fetch(queue, count)

    worker.broker.fetch = counted  # type: ignore[method-assign]
    running = RunningWorker(worker).start()
    try:
        mark.enqueue("before")
        wait_for(lambda: ran == ["before"], message="the first task")
        # Given the node the worker's notify channel lives on dies, and a replica takes over
        killed = cluster.kill_master_of(app.broker.keys("idle").notify)
        cluster.wait_failover(killed)
        mark.enqueue("after")
        wait_for(lambda: ran == ["before", "after"], message="a task after the failover")

        # Then, idle, it fetches about once per idle poll: not in a loop on the dead channel
        before = fetches
        idle = threading.Event()
        idle.wait(2.0)  # a window to count in (nothing is asserted about its length)
        assert fetches - before < 20, f"{fetches - before} fetches in an idle window"
        mark.enqueue("later")
        wait_for(lambda: ran[-1:] == ["later"], message="a task on the new subscription")
    finally:
        running.stop()


def test_sentinels_that_do_not_answer_are_one_short_line_naming_the_url() -> None:
    app = App(redis_url="redis+sentinel://u:secret@127.0.0.1:1,127.0.0.1:2/mymaster/0")
    with pytest.raises(BrokerError) as info:
        app.remote("slow", queue=QUEUE).enqueue("x", 0)
    message = str(info.value)
    assert "redis+sentinel://u:***@127.0.0.1:1,127.0.0.1:2/mymaster/0" in message
    assert "'mymaster'" in message and "sentinel masters" in message
    assert "ConnectionPool" not in message, message  # no redis-py object dumps
    assert "secret" not in message and "\n" not in message
