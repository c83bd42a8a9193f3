"""Drill: a worker cut off from Redis for longer than its lease, in a network namespace of its
own, while another worker outside carries on. Its messages go to the other worker; when the
link comes back, nothing may be lost and no message may have run on both at once (the cut-off
worker must stop what it no longer owns, and never ack it).

The namespace, a veth pair and two addresses in a /30 of 10.0.0.0/8 are created by the test
(``ip netns``, needs CAP_NET_ADMIN) and removed afterwards. Where the kernel or the user refuses,
the drill is skipped with the command that failed and its error, never silently.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import chaos_ledger
import pytest
from chaos_drills import Fleet, delivery_problems, settle
from chaos_tasks import QUEUE

from helpers import wait_for
from shoal import App
from shoal.protocol.server import LocalRedis

LEASE = {"SHOAL_LEASE": "2", "SHOAL_HEARTBEAT": "0.5"}
WATCHDOG = "has not looped for"
REPLACED = "starting a replacement"


@dataclass(frozen=True)
class Partition:
    """A network namespace joined to the host by a veth pair; ``cut`` downs the host end."""

    ns: str
    host_if: str
    host_ip: str
    ns_ip: str

    @property
    def wrapper(self) -> tuple[str, ...]:
        """Prefix that runs a command inside the namespace (``ip netns exec`` execs in place)."""
        return ("ip", "netns", "exec", self.ns)

    def cut(self) -> None:
        _ip("link", "set", self.host_if, "down")

    def restore(self) -> None:
        _ip("link", "set", self.host_if, "up")


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10, check=False)


def _free_subnet() -> tuple[str, str]:
    """The two addresses of a /30 in 10.231.0.0/16 that overlaps no network configured here."""
    words = _ip("-4", "-o", "addr").stdout.split()
    taken = [ipaddress.ip_interface(w).network for w in words if "/" in w and w[0].isdigit()]
    while True:
        net = ipaddress.ip_network(
            f"10.231.{random.randrange(256)}.{random.randrange(0, 256, 4)}/30"
        )
        if not any(net.overlaps(t) for t in taken):
            host, ns = net.hosts()
            return str(host), str(ns)


@pytest.fixture
def partition() -> Iterator[Partition]:
    """A fresh namespace with a veth link to the host; always torn down."""
    if shutil.which("ip") is None:
        pytest.skip("the partition drill needs `ip` (iproute2) on PATH, and there is none")
    suffix = os.urandom(3).hex()
    ns, host_if, ns_if = f"shoal-chaos-{suffix}", f"shc{suffix}h", f"shc{suffix}n"
    host_ip, ns_ip = _free_subnet()
    steps = [
        ("netns", "add", ns),
        ("link", "add", host_if, "type", "veth", "peer", "name", ns_if),
        ("link", "set", ns_if, "netns", ns),
        ("addr", "add", f"{host_ip}/30", "dev", host_if),
        ("link", "set", host_if, "up"),
        ("netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if),
        ("netns", "exec", ns, "ip", "link", "set", ns_if, "up"),
        ("netns", "exec", ns, "ip", "link", "set", "lo", "up"),
    ]
    try:
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                pytest.skip(
                    f"cannot build the partition: `ip {' '.join(step)}` failed "
                    f"(exit {done.returncode}): {done.stderr.strip()}"
                )
        yield Partition(ns, host_if, host_ip, ns_ip)
    finally:
        _ip("link", "del", host_if)  # deletes its peer too, wherever it is
        _ip("netns", "del", ns)
    assert ns not in _ip("netns", "list").stdout, f"namespace {ns} was not removed"


@pytest.mark.timeout(150)
def test_a_partitioned_worker_never_runs_a_message_alongside_its_new_owner(
    partition: Partition,
    chaos_redis: Callable[..., LocalRedis],
    producer_for: Callable[..., App],
    fleet: Fleet,
    ledger_dir: Path,
    figures: Callable[..., None],
) -> None:
    task_s = 6.0
    server = chaos_redis("--bind", "127.0.0.1", partition.host_ip, "--protected-mode", "no")
    producer = producer_for(server.url)
    inside_url = f"redis://{partition.host_ip}:{server.port}/0"

    # Given a worker inside the namespace running four 6 s tasks (2 sync, 2 async)
    inside = fleet.start(inside_url, "--concurrency", "4", wrapper=partition.wrapper, env=LEASE)
    (inside_child,) = wait_for(inside.child_pids, timeout=30, message="the cut-off worker")
    ids = [f"n{n:02d}" for n in range(8)]
    producer.remote("chaos.work", queue=QUEUE).enqueue_many([(i, task_s) for i in ids[0:2]])
    producer.remote("chaos.work_async", queue=QUEUE).enqueue_many([(i, task_s) for i in ids[2:4]])
    wait_for(
        lambda: (
            {r.id for r in chaos_ledger.read(ledger_dir) if r.pid == inside_child} == set(ids[:4])
        ),
        timeout=30,
        message="the worker in the namespace to run four tasks",
    )
    # And a worker outside with room to spare, running four more
    outside = fleet.start(server.url, "--concurrency", "8", env=LEASE)
    producer.remote("chaos.work", queue=QUEUE).enqueue_many([(i, task_s) for i in ids[4:6]])
    producer.remote("chaos.work_async", queue=QUEUE).enqueue_many([(i, task_s) for i in ids[6:]])
    wait_for(
        lambda: {r.id for r in chaos_ledger.read(ledger_dir)} == set(ids),
        timeout=30,
        message="the worker outside to run four tasks",
    )
    in_flight = producer.measure(QUEUE).in_flight

    # When the link is cut for three leases at least, and until the outside worker has taken
    # over every message the cut-off worker held, and the cut-off worker's runs have stopped
    held = set(ids[:4])
    lease_s = float(LEASE["SHOAL_LEASE"])
    partition.cut()
    cut_at = time.time()

    def taken_over() -> bool:
        if time.time() - cut_at < 3 * lease_s:
            return False
        runs = chaos_ledger.by_id(chaos_ledger.read(ledger_dir))
        deaths = fleet.watch.deaths()
        return all(
            any(r.pid != inside_child for r in runs[i])
            and all(r.end is not None or r.pid in deaths for r in runs[i] if r.pid == inside_child)
            for i in held
        )

    wait_for(taken_over, timeout=40, interval=0.1, message="the outside worker to take over")
    partition.restore()
    restored_at = time.time()

    # Then every task completes; no message of the outside worker vanished while it ran it (a
    # stale ack from the cut-off worker); and no message ran inside and outside at once
    messages_key = producer.broker.keys(QUEUE).messages
    stale_acks: set[str] = set()

    def done_watching_acks() -> bool:
        gone = {i for i in held if not producer.broker.redis.hexists(messages_key, i)}
        runs = chaos_ledger.by_id(chaos_ledger.read(ledger_dir))  # read after: no false alarm
        stale_acks.update(
            i for i in gone if any(r.pid != inside_child and r.end is None for r in runs[i])
        )
        return not chaos_ledger.tally(ledger_dir, ids).lost

    final, settled = settle(producer, QUEUE, done_watching_acks, timeout=60)
    deaths = fleet.watch.deaths()
    tally = chaos_ledger.tally(ledger_dir, ids, deaths)
    logs = fleet.log(inside)
    runs = chaos_ledger.read(ledger_dir)
    figures(
        **tally.figures(),
        lease_s=lease_s,
        cut_s=round(restored_at - cut_at, 1),
        task_s=task_s,
        in_flight_at_cut=in_flight,
        held_by_cut_off_worker=len(held),
        cut_off_runs_stopped=sum(
            1 for r in runs if r.pid == inside_child and r.end is not None and not r.ok
        ),
        cut_off_runs_finished=sum(1 for r in runs if r.pid == inside_child and r.ok),
        stale_acks=len(stale_acks),
        restored_at_s=round(restored_at - cut_at, 2),
        watchdog_kills=logs.count(WATCHDOG),
        dead=final.dead if final else None,
    )
    problems = delivery_problems(tally, final, settled, in_flight, deaths, cut_at)
    if stale_acks:
        problems.append(
            f"the cut-off worker acked {sorted(stale_acks)} while the outside worker ran them"
        )
    if WATCHDOG in logs or inside.child_pids() != {inside_child}:
        problems.append(
            f"the cut-off worker process was killed by its supervisor ({logs.count(WATCHDOG)} "
            f"'{WATCHDOG}' line(s)); children now {inside.child_pids()}"
        )
    if outside.popen.poll() is not None:
        problems.append(f"the outside worker exited with {outside.popen.returncode}")
    assert not problems, "\n".join(problems)
