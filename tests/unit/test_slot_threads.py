"""Slot threads: sync task code runs in a fixed set of threads, under its timeouts."""

from __future__ import annotations

import contextvars
import math
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from helpers import wait_for
from shoal import execution
from shoal.execution import SlotThreads, SyncCall, TaskStopped, TaskTimeout

WAIT_S = 10.0  # a bound on waiting, never an assertion about speed


@pytest.fixture
def abandoned() -> queue.SimpleQueue[SyncCall]:
    return queue.SimpleQueue()


@pytest.fixture
def slots(abandoned: queue.SimpleQueue[SyncCall]) -> Iterator[SlotThreads]:
    pool = SlotThreads(2, hard_grace_s=0.3, on_abandon=abandoned.put)
    yield pool
    pool.close()


def run_in(pool: SlotThreads, call: SyncCall, timeout_s: float) -> queue.SimpleQueue[Any]:
    """Submit ``call``; the queue receives its result or the exception it raised."""
    out: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def job() -> None:
        try:
            out.put(pool.run(call, timeout_s))
        except BaseException as exc:
            out.put(exc)

    pool.submit(job)
    return out


def spin() -> None:
    while True:
        pass


def test_a_call_returns_its_result(slots: SlotThreads) -> None:
    assert run_in(slots, SyncCall(lambda a, b: a + b, [1], {"b": 2}), 5).get(timeout=WAIT_S) == 3


def test_a_spinning_call_gets_a_soft_timeout_naming_it(slots: SlotThreads) -> None:
    outcome = run_in(slots, SyncCall(spin, [], {}), 0.2).get(timeout=WAIT_S)
    assert isinstance(outcome, TaskTimeout)
    assert "0.2s timeout" in str(outcome)


def test_the_tasks_own_task_timeout_is_not_rewritten(slots: SlotThreads) -> None:
    def raises() -> None:
        raise TaskTimeout("the task's own words")

    outcome = run_in(slots, SyncCall(raises, [], {}), 5).get(timeout=WAIT_S)
    assert str(outcome) == "the task's own words"


def test_a_sooner_deadline_wakes_the_timekeeper(slots: SlotThreads) -> None:
    """The timekeeper sleeps until the nearest deadline; a later job due sooner must wake it."""
    release = threading.Event()
    slow = run_in(slots, SyncCall(release.wait, [], {}), 600)
    time.sleep(0.1)  # the timekeeper now sleeps towards the 600 s deadline
    outcome = run_in(slots, SyncCall(spin, [], {}), 0.2).get(timeout=WAIT_S)
    assert isinstance(outcome, TaskTimeout)
    release.set()
    assert slow.get(timeout=WAIT_S) is True


def test_a_call_stuck_past_its_grace_is_abandoned_and_reported(
    slots: SlotThreads, abandoned: queue.SimpleQueue[SyncCall]
) -> None:
    stuck = threading.Event()
    call = SyncCall(lambda: stuck.wait(WAIT_S), [], {})  # in C: the soft timeout cannot land
    out = run_in(slots, call, 0.1)
    assert abandoned.get(timeout=WAIT_S) is call
    assert call.abandoned and call.done()
    stuck.set()
    out.get(timeout=WAIT_S)  # whatever it returns now is ignored by its owner
    assert not call.abandon()  # only once


def test_a_call_cancelled_before_it_starts_never_runs(slots: SlotThreads) -> None:
    ran: list[int] = []
    call = SyncCall(ran.append, [1], {})
    call.cancel()
    outcome = run_in(slots, call, 5).get(timeout=WAIT_S)
    assert isinstance(outcome, TaskStopped)
    assert ran == []


def test_a_running_call_is_stopped_by_cancel(slots: SlotThreads) -> None:
    started = threading.Event()

    def spin_started() -> None:
        started.set()
        spin()

    call = SyncCall(spin_started, [], {})
    out = run_in(slots, call, 600)
    assert started.wait(WAIT_S)
    call.cancel()
    assert isinstance(out.get(timeout=WAIT_S), TaskStopped)


def test_each_job_starts_with_a_fresh_context() -> None:
    """What one task sets in a contextvar never leaks into the next on the same thread."""
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    pool = SlotThreads(1, hard_grace_s=1, on_abandon=lambda call: None)
    seen: queue.SimpleQueue[str] = queue.SimpleQueue()

    def job(value: str) -> Callable[[], None]:
        def run() -> None:
            seen.put(var.get())
            var.set(value)

        return run

    try:
        for value in ("a", "b"):
            pool.submit(job(value))
        assert [seen.get(timeout=WAIT_S) for _ in range(2)] == ["unset", "unset"]
    finally:
        pool.close()


def test_threads_are_made_once_not_per_job(slots: SlotThreads) -> None:
    idents: queue.SimpleQueue[int] = queue.SimpleQueue()
    for _ in range(50):
        run_in(slots, SyncCall(lambda: idents.put(threading.get_ident()), [], {}), 5)
    seen = {idents.get(timeout=WAIT_S) for _ in range(50)}
    assert 1 <= len(seen) <= 2


def test_a_finished_call_leaves_no_pending_exception_flag_behind() -> None:
    """Clearing a thread's async exception when none was set raises the interpreter's
    "pending" flag for good on 3.11: every thread then takes the slow path at each call, and a
    thread under a profiler (cProfile, a debugger) spins for ever. Only a raised call clears."""
    script = (
        "import sys, threading\n"
        "from shoal.execution import SlotThreads, SyncCall\n"
        "pool = SlotThreads(1, hard_grace_s=1, on_abandon=lambda c: None)\n"
        "done = threading.Event()\n"
        "def job():\n"
        "    pool.run(SyncCall(len, [[1]], {}), 5)\n"
        "    done.set()\n"
        "sys.setprofile(lambda *a: None)\n"
        "pool.submit(job)\n"
        "assert done.wait(5)\n"
        "for _ in range(1000): len([])\n"
        "sys.setprofile(None)\n"
        "print('ok')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.stdout.strip() == "ok", run.stderr


def test_a_job_that_raises_does_not_end_its_slot_thread() -> None:
    pool = SlotThreads(1, hard_grace_s=1, on_abandon=lambda call: None)
    seen: queue.SimpleQueue[str] = queue.SimpleQueue()

    def exits() -> None:
        raise SystemExit(3)

    try:
        pool.submit(exits)
        pool.submit(lambda: seen.put("still here"))
        assert seen.get(timeout=WAIT_S) == "still here"
    finally:
        pool.close()


def test_a_burst_of_blocking_jobs_runs_on_every_thread_at_once() -> None:
    """Only one idle thread is woken per submit burst; each that takes a job and leaves more
    wakes the next: jobs that block still all run at once, one per thread."""
    size = 8
    pool = SlotThreads(size, hard_grace_s=1, on_abandon=lambda call: None)
    barrier = threading.Barrier(size, timeout=WAIT_S)
    passed: queue.SimpleQueue[int] = queue.SimpleQueue()
    try:
        for _ in range(3):  # again once the threads went idle
            for _ in range(size):
                pool.submit(lambda: passed.put(barrier.wait()))
            assert sorted(passed.get(timeout=WAIT_S) for _ in range(size)) == list(range(size))
    finally:
        pool.close()


def test_queued_jobs_still_run_after_close() -> None:
    pool = SlotThreads(1, hard_grace_s=1, on_abandon=lambda call: None)
    release = threading.Event()
    seen: queue.SimpleQueue[str] = queue.SimpleQueue()
    pool.submit(lambda: release.wait(WAIT_S))
    pool.submit(lambda: seen.put("ran"))
    pool.close()
    release.set()
    assert seen.get(timeout=WAIT_S) == "ran"


def test_an_idle_timekeeper_still_meets_a_short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle timekeeper looks again after IDLE_LOOK_S; a job due sooner wakes it."""
    monkeypatch.setattr(execution, "IDLE_LOOK_S", WAIT_S * 2)  # only a wake-up can meet it
    pool = SlotThreads(1, hard_grace_s=1, on_abandon=lambda call: None)
    try:
        wait_for(lambda: pool._next_wake != math.inf, message="the timekeeper's idle look")
        out = run_in(pool, SyncCall(spin, [], {}), 0.1).get(timeout=WAIT_S)
        assert isinstance(out, TaskTimeout)
    finally:
        pool.close()


def test_close_ends_every_idle_thread() -> None:
    pool = SlotThreads(4, hard_grace_s=1, on_abandon=lambda call: None)
    done: queue.SimpleQueue[int] = queue.SimpleQueue()
    pool.submit(lambda: done.put(1))
    assert done.get(timeout=WAIT_S) == 1
    wait_for(lambda: len(pool._idle) == 4, message="every slot thread idle")
    pool.close()
    for thread in pool._threads:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in pool._threads)
