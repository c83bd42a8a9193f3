"""Running one task function within its timeout: async on the loop, sync in a slot thread.

Sync task code runs in :class:`SlotThreads`: one thread per slot of the worker, each pulling
jobs from one local queue that the fetch loop fills, so a sync task costs one hand-over to a
thread that is already waiting, not a trip through an executor and back through the loop.

A sync task that overruns gets a soft timeout: ``TaskTimeout`` is raised inside its thread
(``PyThreadState_SetAsyncExc``), which stops pure-Python loops and most blocking calls at their
next bytecode. One timekeeper thread watches every slot's deadline; a call that ignores its soft
timeout for the grace period is abandoned (its owner is told, and the worker process is
replaced: nothing else can free a thread stuck in C code).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import ctypes
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from shoal.errors import HardTimeout, TaskStopped, TaskTimeout

log = logging.getLogger("shoal.execution")

# The exceptions live in shoal.errors; re-exported so ``from shoal.execution import …`` still works.
__all__ = ["HardTimeout", "SlotThreads", "SyncCall", "TaskStopped", "TaskTimeout", "run_async"]


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )


def _clear_in_thread(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


class SyncCall:
    """One call of a sync task function that can be interrupted from another thread.

    The lock makes "interrupt" and "finished" exclusive, and a finished call clears any
    exception still pending for its thread: a late TaskTimeout must never hit the slot
    thread's own code (it would kill the thread and strand the next task)."""

    __slots__ = (
        "abandoned",
        "args",
        "finished",
        "fn",
        "hard_at",
        "kwargs",
        "lock",
        "raised",
        "soft_at",
        "thread_id",
        "timed_out",
        "timeout_s",
    )

    def __init__(self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.thread_id: int | None = None
        self.finished = False
        self.abandoned = False
        """Set by the timekeeper past the hard timeout: whatever the call does later is ignored."""
        self.timed_out = False
        self.raised = False
        """An exception was set pending in the call's thread: it must be cleared at the end."""
        self.lock = threading.Lock()
        self.timeout_s = self.soft_at = self.hard_at = math.inf

    def __call__(self) -> Any:
        with self.lock:
            if self.finished:  # stopped before its slot thread started it: never start it
                raise TaskStopped("stopped before it started")
            self.thread_id = threading.get_ident()
        try:
            return self.fn(*self.args, **self.kwargs)
        finally:
            with self.lock:
                self.finished = True
                if self.raised:  # (clearing when nothing is pending costs every thread, 3.11)
                    _clear_in_thread(self.thread_id)

    def interrupt(self, exc_type: type[BaseException] = TaskTimeout) -> None:
        """Raise ``exc_type`` in the call's thread (or keep it from ever starting)."""
        with self.lock:
            if self.finished:
                return
            if self.thread_id is None:
                self.finished = True
            else:
                self.raised = True
                _raise_in_thread(self.thread_id, exc_type)

    def abandon(self) -> bool:
        """Give up on a call stuck past its hard timeout; False if it finished meanwhile."""
        with self.lock:
            if self.finished:
                return False
            self.abandoned = self.finished = True
            return True

    # What a lease holds to stop its task (shoal.leases.Stoppable), like an asyncio task's.
    def cancel(self) -> None:
        self.interrupt(TaskStopped)

    def done(self) -> bool:
        return self.finished


IDLE_LOOK_S = 1.0
"""How long the timekeeper sleeps with no call running. Waking it per job once the slots were
idle costs a thread switch (and the GIL) per burst of short tasks: only a call whose soft
timeout falls before its planned look wakes it."""


class SlotThreads:
    """``size`` threads that run sync task code, one job at a time each, from one local queue.

    A job is a plain callable; inside it, :meth:`run` runs a :class:`SyncCall` under its
    timeouts. ``on_abandon`` is called (from the timekeeper thread) with a call abandoned at
    its hard timeout. Each job runs in a fresh ``contextvars`` context: what one task's code
    sets never leaks into the next task on the same thread."""

    def __init__(
        self,
        size: int,
        hard_grace_s: float,
        on_abandon: Callable[[SyncCall], None],
        name: str = "shoal-slot",
    ) -> None:
        self.hard_grace_s = hard_grace_s
        self._on_abandon = on_abandon
        self._jobs: collections.deque[Callable[[], None]] = collections.deque()
        self._lock = threading.Lock()
        """Guards the jobs, the idle threads and the searching flag (see :meth:`_serve`)."""
        self._idle: list[threading.Lock] = []
        """The wake-up locks of the threads waiting for a job (each held: releasing it wakes)."""
        self._searching = False
        """A thread was woken for a job and has not taken one yet: no other is woken meanwhile."""
        self._running: list[SyncCall | None] = [None] * size
        self._local = threading.local()
        self._clock = threading.Condition(threading.Lock())
        self._next_wake = math.inf
        self._closed = False
        self._threads = [
            threading.Thread(target=self._serve, args=(i,), name=f"{name}-{i}", daemon=True)
            for i in range(size)
        ]
        self._threads.append(
            threading.Thread(target=self._keep_time, name=f"{name}-timekeeper", daemon=True)
        )
        for thread in self._threads:
            thread.start()

    def submit(self, job: Callable[[], None]) -> None:
        """Queue ``job`` for the next free slot thread (any thread may call this).

        One idle thread is woken, unless one woken before has not taken its job yet: each
        thread that takes a job and leaves more behind wakes the next, and a thread that
        finishes one takes the next itself. A burst of short jobs is run by a few threads
        in turn instead of waking every one of them (each a futex wake-up and a wait for
        the GIL); long ones still spread over all the threads, one hand-over apart."""
        with self._lock:
            self._jobs.append(job)
            if not self._searching and self._idle:
                self._idle.pop().release()  # (then the flag: an interruption between the
                self._searching = True  # two costs a spare wake-up, never every later one)

    def close(self) -> None:
        """Let the threads end once they are idle (a stuck one is a daemon: it dies with us)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for wake in idle:
            wake.release()
        with self._clock:
            self._clock.notify()

    def run(self, call: SyncCall, timeout_s: float) -> Any:
        """Run ``call`` in this slot thread; at ``timeout_s`` raise TaskTimeout inside it.

        Call only from inside a job. Raises TaskTimeout (with the timeout in its message),
        TaskStopped (stopped by :meth:`SyncCall.cancel`), or whatever the call raised."""
        slot: int = self._local.slot
        call.timeout_s = timeout_s
        call.soft_at = time.monotonic() + timeout_s
        call.hard_at = call.soft_at + self.hard_grace_s
        self._running[slot] = call
        if call.soft_at < self._next_wake:  # sooner than the timekeeper planned to look
            with self._clock:
                self._clock.notify()
        try:
            return call()
        except TaskTimeout as exc:
            if not call.timed_out or isinstance(exc, HardTimeout):
                raise  # the task's own TaskTimeout, not ours
            raise TaskTimeout(f"sync task exceeded its {timeout_s:g}s timeout") from None
        finally:
            self._running[slot] = None

    def _serve(self, slot: int) -> None:
        self._local.slot = slot
        jobs, lock = self._jobs, self._lock
        wake = threading.Lock()
        wake.acquire()
        woken = False
        while True:
            with lock:
                if woken:
                    self._searching = woken = False
                if jobs:
                    job = jobs.popleft()
                    if jobs and not self._searching and self._idle:  # more left: wake the next
                        self._idle.pop().release()
                        self._searching = True
                elif self._closed:
                    return
                else:
                    self._idle.append(wake)
                    job = None
            if job is None:
                wake.acquire()  # released by submit, by a thread leaving jobs behind, or close
                woken = True
                continue
            try:
                contextvars.Context().run(job)
            except BaseException:  # a job's own bug: the slot must outlive it
                log.exception("slot thread %d: a job raised; the slot goes on", slot)

    def _keep_time(self) -> None:
        """Interrupt each call at its soft timeout and abandon it at its hard one; sleep until
        the nearest deadline, or ``IDLE_LOOK_S`` when nothing runs (a job due sooner than that
        wakes this thread). Ends at :meth:`close`: jobs still queued then run without
        timeouts (the worker has stopped or handed back what was left before it closes)."""
        with self._clock:
            while not self._closed:
                now = time.monotonic()
                nearest = math.inf
                # While scanning, any job that starts must wake us: this scan may miss it.
                self._next_wake = math.inf
                for call in self._running:
                    if call is None or call.finished:
                        continue
                    if call.hard_at <= now:
                        if call.abandon():
                            self._on_abandon(call)
                    elif call.soft_at <= now:
                        if not call.timed_out:
                            call.timed_out = True
                            call.interrupt(TaskTimeout)
                        nearest = min(nearest, call.hard_at)
                    else:
                        nearest = min(nearest, call.soft_at)
                if nearest == math.inf:
                    # Nothing running: look again in a while rather than never, so that the
                    # next job (due much later) need not wake this thread; one due sooner does.
                    nearest = now + IDLE_LOOK_S
                self._next_wake = nearest
                self._clock.wait(nearest - now)


async def run_async(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], timeout_s: float
) -> Any:
    """Await ``fn(*args, **kwargs)``; cancel it and raise TaskTimeout after ``timeout_s``.

    One timer handle, rather than ``asyncio.timeout``'s context manager: this is on the
    per-message path."""
    task = asyncio.current_task()
    assert task is not None
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    timer = asyncio.get_running_loop().call_later(timeout_s, expire)
    counted = False
    try:
        return await fn(*args, **kwargs)
    except asyncio.CancelledError:
        if expired:
            counted = True
            if task.uncancel() == 0:  # our cancel alone, not the worker's stop as well
                raise TaskTimeout(f"async task exceeded its {timeout_s:g}s timeout") from None
        raise
    finally:
        timer.cancel()
        if expired and not counted:
            task.uncancel()  # the task swallowed our cancel and went on: take it back
