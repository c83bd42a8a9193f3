"""Running one task function within its timeout: async on the loop, sync in a thread.

A sync task that overruns gets a soft timeout: ``TaskTimeout`` is raised inside its thread
(``PyThreadState_SetAsyncExc``), which stops pure-Python loops and most blocking calls at their
next bytecode. The hard timeout (replacing a process stuck in C code) is the supervisor's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from shoal.errors import HardTimeout, TaskStopped, TaskTimeout

# The exceptions live in shoal.errors; re-exported so ``from shoal.execution import …`` still works.
__all__ = ["HardTimeout", "TaskStopped", "TaskTimeout", "run_async", "run_sync"]


def _raise_in_thread(thread_id: int, exc_type: type[BaseException]) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type)
    )


def _clear_in_thread(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)


class _SyncCall:
    """A sync call run in a pool thread that remembers its thread so it can be interrupted.

    The lock makes "interrupt" and "finished" exclusive, and a finished call clears any
    exception still pending for its thread: a late TaskTimeout must never hit the pool's own
    code (it would kill the thread and strand the next task)."""

    __slots__ = ("args", "done", "fn", "kwargs", "lock", "thread_id")

    def __init__(self, fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any]) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.thread_id: int | None = None
        self.done = False
        self.lock = threading.Lock()

    def __call__(self) -> Any:
        with self.lock:
            if self.done:  # interrupted before a pool thread picked it up: never start it
                raise TaskStopped("stopped before it started")
            self.thread_id = threading.get_ident()
        try:
            return self.fn(*self.args, **self.kwargs)
        finally:
            with self.lock:
                self.done = True
                _clear_in_thread(self.thread_id)

    def interrupt(self, exc_type: type[BaseException] = TaskTimeout) -> None:
        with self.lock:
            if self.done:
                return
            if self.thread_id is None:
                self.done = True
            else:
                _raise_in_thread(self.thread_id, exc_type)


async def run_async(
    fn: Callable[..., Any], args: list[Any], kwargs: dict[str, Any], timeout_s: float
) -> Any:
    """Await ``fn(*args, **kwargs)``; cancel it and raise TaskTimeout after ``timeout_s``."""
    try:
        async with asyncio.timeout(timeout_s) as deadline:
            return await fn(*args, **kwargs)
    except TimeoutError:
        if not deadline.expired():
            raise  # the task's own TimeoutError (an HTTP client's, say): not ours
        raise TaskTimeout(f"async task exceeded its {timeout_s:g}s timeout") from None


async def run_sync(
    pool: ThreadPoolExecutor,
    fn: Callable[..., Any],
    args: list[Any],
    kwargs: dict[str, Any],
    timeout_s: float,
    hard_grace_s: float,
) -> Any:
    """Run ``fn`` in ``pool``; at ``timeout_s`` raise TaskTimeout inside its thread, and
    ``hard_grace_s`` later stop waiting for it (HardTimeout).

    Timer handles rather than ``wait_for``: no extra asyncio task on the per-message path."""
    call = _SyncCall(fn, args, kwargs)
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[Any] = loop.create_future()

    def settle(done: Future[Any]) -> None:
        if outcome.done():
            return
        if done.cancelled():
            outcome.cancel()
        elif done.exception() is not None:
            outcome.set_exception(done.exception())  # type: ignore[arg-type]
        else:
            outcome.set_result(done.result())

    def abandon() -> None:
        if not outcome.done():
            outcome.set_exception(
                HardTimeout(
                    f"sync task ignored its {timeout_s:g}s soft timeout for {hard_grace_s:g}s more "
                    "(blocked in C code?); abandoning its thread"
                )
            )

    def on_done(done: Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits any more
            loop.call_soon_threadsafe(settle, done)

    # copy_context: the task's thread sees the caller's context (the current span, log fields)
    pool.submit(contextvars.copy_context().run, call).add_done_callback(on_done)
    soft = loop.call_later(timeout_s, call.interrupt)
    hard = loop.call_later(timeout_s + hard_grace_s, abandon)
    try:
        return await outcome
    except asyncio.CancelledError:
        call.interrupt(TaskStopped)  # nobody waits for its result: stop it where it stands
        raise
    except TaskTimeout as exc:
        if isinstance(exc, HardTimeout):
            raise
        raise TaskTimeout(f"sync task exceeded its {timeout_s:g}s timeout") from None
    finally:
        soft.cancel()
        hard.cancel()
