"""The worker registration (:mod:`shoal.protocol.registry`) round-trips, and workers of other
versions (fields missing or added) still read."""

from __future__ import annotations

import dataclasses

import orjson
import pytest

from shoal.protocol.registry import RunningTask, WorkerRegistration

FULL = WorkerRegistration(
    id="w1",
    host="pod-a",
    pid=12,
    queues=("emails", "billing"),
    in_flight=3,
    concurrency=8,
    processed=41,
    leases_lost=1,
    started_at=1_700_000_000.5,
    version="1.2.3",
)


def test_a_registration_round_trips() -> None:
    assert WorkerRegistration.from_json(FULL.to_json()) == FULL


def test_the_json_keeps_the_keys_and_order_workers_always_wrote() -> None:
    assert list(orjson.loads(FULL.to_json())) == [
        "id",
        "host",
        "pid",
        "queues",
        "in_flight",
        "concurrency",
        "processed",
        "leases_lost",
        "started_at",
        "version",
        "running",
    ]
    assert orjson.loads(FULL.to_json())["queues"] == ["emails", "billing"]


def test_what_a_worker_runs_reads_back_and_junk_entries_are_dropped() -> None:
    running = (RunningTask("emails", "m1", "send", 2, 1700000000.5),)
    data = orjson.loads(dataclasses.replace(FULL, running=running).to_json())
    assert WorkerRegistration.from_json(orjson.dumps(data)).running == running
    data["running"] = [{"queue": "emails"}, 7, {"queue": "q", "id": "m2", "attempt": "x"}]
    assert WorkerRegistration.from_json(orjson.dumps(data)).running == ()
    data["running"] = "not a list"
    assert WorkerRegistration.from_json(orjson.dumps(data)).running == ()


def test_an_older_worker_without_leases_lost_reads_as_zero() -> None:
    data = orjson.loads(FULL.to_json())
    del data["leases_lost"]
    assert WorkerRegistration.from_json(orjson.dumps(data)).leases_lost == 0


def test_a_newer_workers_extra_fields_are_ignored() -> None:
    data = {**orjson.loads(FULL.to_json()), "memory_mib": 512, "labels": {"a": "b"}}
    assert WorkerRegistration.from_json(orjson.dumps(data)) == FULL


def test_only_the_id_is_required() -> None:
    assert WorkerRegistration.from_json(b'{"id":"w2"}') == WorkerRegistration(id="w2")


@pytest.mark.parametrize("raw", [b"[]", b'{"host":"h"}', b'{"id":7}', b"nope"])
def test_what_is_not_a_registration_is_a_value_error(raw: bytes) -> None:
    with pytest.raises(ValueError):
        WorkerRegistration.from_json(raw)
