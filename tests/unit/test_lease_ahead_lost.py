"""A message leased ahead waits in the worker for a free slot. If its lease is lost while it
waits (a renewal reports another delivery owns it), or may have lapsed (not renewed in time),
it must never start here: another worker may be running it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from shoal import App
from shoal.protocol.scripts import Leased
from shoal.worker import Worker


@pytest.fixture
def worker() -> Worker:
    app = App("redis://127.0.0.1:1/0")  # never connected in these tests
    w = Worker(app, ["q"], concurrency=1)
    w.launched: list[str] = []  # type: ignore[misc]

    def launch(queue: str, leased: Leased, lease: Any) -> None:
        w.launched.append(leased.id)  # type: ignore[attr-defined]

    w._launch = launch  # type: ignore[method-assign]
    return w


def _fill(worker: Worker, *ids: str) -> None:
    """Lease ``ids``: the first starts in the one slot, the others wait, ready."""
    for n, message_id in enumerate(ids, start=1):
        worker._start("q", Leased(message_id, b"{}", 1, n, None), time.monotonic())


def _free_the_slot(worker: Worker) -> None:
    worker.running -= 1
    worker._start_ready()


def test_a_ready_message_whose_lease_is_lost_never_starts(worker: Worker) -> None:
    _fill(worker, "a", "b", "c")
    assert worker.launched == ["a"]  # type: ignore[attr-defined]

    # When a renewal says another delivery owns "b" while it waits for the slot
    worker._lose("q", "b", 2, "another delivery owns it now")
    _free_the_slot(worker)

    # Then "b" is dropped (not handed back: it is not ours), and "c" starts instead
    assert worker.launched == ["a", "c"]  # type: ignore[attr-defined]
    assert worker.leases.get("q", "b") is None
    assert worker._fenced == {}
    assert worker.busy == 2  # "a" and "c"


def test_a_ready_message_not_renewed_in_time_never_starts_and_is_handed_back(
    worker: Worker,
) -> None:
    _fill(worker, "a", "b")
    lease = worker.leases.get("q", "b")
    assert lease is not None
    lease.sure_until = time.monotonic() - 1  # Redis did not answer the renewals in time

    _free_the_slot(worker)

    assert worker.launched == ["a"]  # type: ignore[attr-defined]
    assert worker._fenced == {"q": [("b", 2)]}  # given back once Redis answers, if still ours
    assert worker.busy == 1
