"""The election's state machine (shoal_operator.leader.Elector) on an in-memory Lease with a
clock the test moves: who may take the Lease, when, and what each write carries."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest

from shoal_operator.leader import (
    Campaign,
    Elector,
    KubeLeaseStore,
    LeaseConflict,
    LeaseRecord,
    LeaseTiming,
    lead,
)
from shoal_operator.settings import OperatorSettings

TIMING = LeaseTiming(lease_duration_s=15, renew_deadline_s=10, retry_period_s=2)


class MemoryLease:
    """One Lease with the apiserver's optimistic concurrency: a stale resourceVersion is a 409."""

    def __init__(self) -> None:
        self.record: LeaseRecord | None = None
        self.version = 0
        self.writes: list[LeaseRecord] = []
        self.lock = threading.Lock()  # two replicas' threads share it in the race tests

    def get(self) -> tuple[LeaseRecord, str] | None:
        return None if self.record is None else (self.record, str(self.version))

    def create(self, record: LeaseRecord) -> str:
        if self.record is not None:
            raise LeaseConflict("exists")
        return self._write(record)

    def update(self, record: LeaseRecord, resource_version: str) -> str:
        with self.lock:
            if self.record is None or resource_version != str(self.version):
                raise LeaseConflict("stale")
            return self._write(record)

    def _write(self, record: LeaseRecord) -> str:
        self.record, self.version = record, self.version + 1
        self.writes.append(record)
        return str(self.version)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def elector(store: MemoryLease, identity: str, clock: Clock) -> Elector:
    return Elector(store, identity, TIMING, clock=clock)


def test_the_first_replica_creates_the_lease_and_renews_it() -> None:
    store, clock = MemoryLease(), Clock()
    a = elector(store, "a", clock)

    assert a.try_acquire_or_renew()
    assert store.record is not None and store.record.holder == "a"
    assert store.record.lease_duration_s == 15 and store.record.transitions == 0
    acquired = store.record.acquire_time

    clock.now += 2
    assert a.try_acquire_or_renew()
    assert store.record.holder == "a" and store.record.transitions == 0
    assert store.record.acquire_time == acquired  # a renewal keeps the acquire time
    assert len(store.writes) == 2


def test_a_standby_waits_a_full_lease_by_its_own_clock_since_it_saw_a_change() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.try_acquire_or_renew()

    # Given the leader renews, and the standby sees each renewal as a change
    for _ in range(3):
        clock.now += 2
        assert a.try_acquire_or_renew()
        assert not b.try_acquire_or_renew()
    assert b.holder == "a"

    # When the leader stops renewing, the standby waits the lease's duration from the last
    # change it saw, whatever the renewTime written by the other node's clock says
    seen_at = clock.now
    clock.now = seen_at + 14.9
    assert not b.try_acquire_or_renew()
    clock.now = seen_at + 15
    assert b.try_acquire_or_renew()
    assert store.record is not None and store.record.holder == "b"
    assert store.record.transitions == 1


def test_a_new_standby_trusts_no_renew_time_and_waits_a_whole_lease() -> None:
    # Given a Lease last renewed long ago (its renewTime is old) that this replica never saw
    store, clock = MemoryLease(), Clock()
    store.create(LeaseRecord("gone", 15, "2020-01-01T00:00:00.000000Z", "2020-01-01T00:00:00Z"))
    b = elector(store, "b", clock)

    # Then it still waits a lease from its first sight of it
    assert not b.try_acquire_or_renew()
    clock.now += 14
    assert not b.try_acquire_or_renew()
    clock.now += 1
    assert b.try_acquire_or_renew()


def test_the_holders_own_lease_duration_counts_not_the_observers() -> None:
    store, clock = MemoryLease(), Clock()
    store.create(LeaseRecord("a", 40))
    b = elector(store, "b", clock)
    assert not b.try_acquire_or_renew()
    clock.now += 39
    assert not b.try_acquire_or_renew()
    clock.now += 1
    assert b.try_acquire_or_renew()


def test_a_stale_write_loses_the_round() -> None:
    # Given a standby about to take an expired Lease, and another that takes it first
    store, clock = MemoryLease(), Clock()
    store.create(LeaseRecord("a", 15))
    b = elector(store, "b", clock)
    assert not b.try_acquire_or_renew()
    clock.now += 15
    snapshot = store.get()
    assert snapshot is not None
    store.update(LeaseRecord("c", 15), snapshot[1])

    # When the first writes at the resourceVersion it read, it is refused: no two leaders
    stale = store.get
    store.get = lambda: snapshot  # type: ignore[method-assign]
    assert not b.try_acquire_or_renew()
    store.get = stale  # type: ignore[method-assign]
    assert store.record is not None and store.record.holder == "c"


def test_release_empties_the_holder_and_a_standby_takes_it_at_once() -> None:
    store, clock = MemoryLease(), Clock()
    a, b = elector(store, "a", clock), elector(store, "b", clock)
    assert a.try_acquire_or_renew()
    assert not b.try_acquire_or_renew()

    assert a.release()
    assert store.record is not None and store.record.holder == ""
    assert store.record.lease_duration_s == 1
    assert not b.release()  # only the holder releases

    assert b.try_acquire_or_renew()  # no wait: nobody holds it
    assert store.record.holder == "b" and store.record.transitions == 1
    assert not a.release()  # it is b's now


def test_a_restarted_leader_with_the_same_identity_resumes_at_once() -> None:
    # The pod's name is its identity: after a container restart, the Lease is its own
    store, clock = MemoryLease(), Clock()
    assert elector(store, "pod-0", clock).try_acquire_or_renew()
    assert elector(store, "pod-0", clock).try_acquire_or_renew()
    assert store.record is not None and store.record.transitions == 0


def test_each_attempt_is_noted_for_the_standbys_liveness() -> None:
    store, clock = MemoryLease(), Clock()
    assert elector(store, "b", clock).attempted_at is None
    a = elector(store, "a", clock)
    a.try_acquire_or_renew()
    assert a.attempted_at == clock.now

    def broken() -> tuple[LeaseRecord, str] | None:
        raise OSError("connection refused")

    store.get = broken  # type: ignore[method-assign]
    clock.now += 3
    with pytest.raises(OSError):
        a.try_acquire_or_renew()
    assert a.attempted_at == clock.now  # a failed attempt still shows the loop is alive


def test_settings_read_the_election_from_the_environment() -> None:
    settings = OperatorSettings.from_env(
        {
            "SHOAL_OPERATOR_LEADER_ELECTION": "true",
            "SHOAL_OPERATOR_LEASE_NAME": "ops",
            "SHOAL_OPERATOR_LEASE_NAMESPACE": "shoal-system",
            "SHOAL_OPERATOR_POD_NAME": "shoal-operator-7d9-abc",
            "SHOAL_OPERATOR_LEASE_DURATION": "20",
            "SHOAL_OPERATOR_LEASE_RENEW_DEADLINE": "12",
            "SHOAL_OPERATOR_LEASE_RETRY_PERIOD": "3",
        }
    )
    assert settings.leader_election and settings.lease_name == "ops"
    assert settings.lease_namespace == "shoal-system"
    assert settings.identity == "shoal-operator-7d9-abc"
    assert (settings.lease_duration_s, settings.renew_deadline_s) == (20, 12)
    assert settings.retry_period_s == 3

    defaults = OperatorSettings.from_env({})
    assert not defaults.leader_election and defaults.lease_name == "shoal-operator"
    assert defaults.identity  # <hostname>_<pid>
    assert (defaults.lease_duration_s, defaults.renew_deadline_s) == (15, 10)


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"SHOAL_OPERATOR_LEADER_ELECTION": "maybe"}, "not a yes or a no"),
        (
            {"SHOAL_OPERATOR_LEADER_ELECTION": "1", "SHOAL_OPERATOR_LEASE_RENEW_DEADLINE": "15"},
            "SHOAL_OPERATOR_LEASE_DURATION (15s) > SHOAL_OPERATOR_LEASE_RENEW_DEADLINE (15s)",
        ),
        (
            {"SHOAL_OPERATOR_LEADER_ELECTION": "1", "SHOAL_OPERATOR_LEASE_RETRY_PERIOD": "9"},
            "1.2 x SHOAL_OPERATOR_LEASE_RETRY_PERIOD (9s)",
        ),
    ],
)
def test_bad_election_settings_say_what_to_set(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ValueError) as error:
        OperatorSettings.from_env(env)
    assert needle in str(error.value)


class CapturingLeaseApi:
    """Stands in for ``CoordinationV1Api``: keeps the bodies written."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def create_namespaced_lease(self, namespace: str, body: dict[str, Any], **_: Any) -> Any:
        self.bodies.append(body)
        return SimpleNamespace(metadata=SimpleNamespace(resource_version="1"))


@pytest.mark.parametrize(("duration", "written"), [(10.5, 11), (10.2, 11), (15, 15), (0.2, 1)])
def test_a_fractional_lease_duration_is_written_rounded_up(duration: float, written: int) -> None:
    # leaseDurationSeconds is an integer: rounded down (10.5 -> 10 half-even), a standby
    # could wait less than the leader's renew deadline (10.2 is allowed with 10.5)
    settings = OperatorSettings.from_env(
        {
            "SHOAL_OPERATOR_LEADER_ELECTION": "true",
            "SHOAL_OPERATOR_LEASE_DURATION": str(duration),
            "SHOAL_OPERATOR_LEASE_RENEW_DEADLINE": str(duration * 0.9),
            "SHOAL_OPERATOR_LEASE_RETRY_PERIOD": str(duration * 0.1),
        }
    )
    api = CapturingLeaseApi()
    store = KubeLeaseStore(api, "ops", "default", 1.0)  # type: ignore[arg-type]
    store.create(LeaseRecord("a", settings.lease_duration_s))
    (body,) = api.bodies
    assert body["spec"]["leaseDurationSeconds"] == written
    assert body["spec"]["leaseDurationSeconds"] >= settings.lease_duration_s


def test_timing_bounds_each_call_by_half_the_renew_deadline() -> None:
    assert TIMING.request_timeout_s == 5
    assert dataclasses.replace(TIMING, renew_deadline_s=1.5).request_timeout_s == 1


# --- two replicas racing in real time (Campaign and lead, as the operator runs them) --------


class Partitioned:
    """One replica's way to a shared :class:`MemoryLease`; once ``cut``, every call fails as
    it would for a replica cut off from the API server."""

    def __init__(self, lease: MemoryLease) -> None:
        self.lease, self.cut = lease, False

    def _reach(self) -> None:
        if self.cut:
            raise OSError("cut off from the API server")

    def get(self) -> tuple[LeaseRecord, str] | None:
        self._reach()
        return self.lease.get()

    def create(self, record: LeaseRecord) -> str:
        self._reach()
        with self.lease.lock:
            return self.lease.create(record)

    def update(self, record: LeaseRecord, resource_version: str) -> str:
        self._reach()
        return self.lease.update(record, resource_version)


class Lost(Exception):
    """What the test's ``on_lost`` raises where the operator's ends the process."""


async def race(timing: LeaseTiming, on_role_s: float) -> list[str]:
    """a acquires the Lease and is cut off from the API at once, its ``on_role(True)`` taking
    ``on_role_s``; b stands by (retrying every 0.1 s). The events, in order, until b leads."""
    lease, events = MemoryLease(), list[str]()
    to_a = Partitioned(lease)
    b_leads = asyncio.Event()

    async def on_role_a(leading: bool) -> None:
        if leading:
            to_a.cut = True
            await asyncio.sleep(on_role_s)  # e.g. the standby's health server closing slowly

    async def run_a(stopping: asyncio.Event) -> None:
        events.append("a operates")
        await asyncio.Event().wait()

    def lost_a() -> NoReturn:
        events.append("a stops")
        raise Lost

    async def on_role_b(leading: bool) -> None:
        if leading:
            events.append("b leads")
            b_leads.set()

    async def run_b(stopping: asyncio.Event) -> None:
        await asyncio.Event().wait()

    def lost_b() -> NoReturn:
        raise AssertionError("b lost the Lease")

    a = Campaign(Elector(to_a, "a", timing))
    b = Campaign(Elector(Partitioned(lease), "b", dataclasses.replace(timing, retry_period_s=0.1)))
    tasks = [asyncio.create_task(lead(a, run_a, on_role=on_role_a, on_lost=lost_a))]
    while lease.record is None:
        await asyncio.sleep(0.01)
    tasks.append(asyncio.create_task(lead(b, run_b, on_role=on_role_b, on_lost=lost_b)))
    try:
        await asyncio.wait_for(b_leads.wait(), 30)
    finally:
        for task in tasks:
            task.cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    assert not [o for o in outcomes if not isinstance(o, Lost | asyncio.CancelledError | None)]
    return events


def test_the_renew_deadline_counts_from_the_winning_request_not_from_the_leaders_start() -> None:
    # Given a leader whose start-up (on_role) outlasts lease - renew deadline, cut off from
    # the API as soon as it won: its deadline ran out during that start-up
    timing = LeaseTiming(lease_duration_s=1.5, renew_deadline_s=0.5, retry_period_s=0.1)

    # Then it stops before the standby may take over (one lease after it saw a's write),
    # and never runs the operator
    assert asyncio.run(race(timing, on_role_s=2.0)) == ["a stops", "b leads"]


def test_a_leader_stops_at_its_renew_deadline_not_at_the_next_retry_after_it() -> None:
    # Given a retry period close to the renew deadline, and a lease little longer: after a
    # failed renewal the next try would come after the deadline, even after the lease
    timing = LeaseTiming(lease_duration_s=2.5, renew_deadline_s=2.0, retry_period_s=1.6)

    # Then the leader stops at its deadline, before the standby takes over
    assert asyncio.run(race(timing, on_role_s=0)) == ["a operates", "a stops", "b leads"]
