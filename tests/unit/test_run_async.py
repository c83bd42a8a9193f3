"""run_async: an async task's timeout is ours alone; its own errors and the worker's stop pass."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from shoal.execution import TaskTimeout, run_async


async def sleeps(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "done"


async def raises_its_own_timeout() -> None:
    raise TimeoutError("the HTTP client's")


async def swallows_cancel() -> str:
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(60)
    await asyncio.sleep(0)
    return "went on"


def test_a_result_is_returned() -> None:
    assert asyncio.run(run_async(sleeps, [0], {}, 5)) == "done"


def test_an_overrun_raises_task_timeout_naming_it() -> None:
    with pytest.raises(TaskTimeout, match=r"0\.05s timeout"):
        asyncio.run(run_async(sleeps, [60], {}, 0.05))


def test_the_tasks_own_timeout_error_is_not_ours() -> None:
    with pytest.raises(TimeoutError, match="HTTP client"):
        asyncio.run(run_async(raises_its_own_timeout, [], {}, 5))


def test_the_workers_stop_is_a_cancel_not_a_timeout() -> None:
    async def main() -> None:
        running = asyncio.ensure_future(run_async(sleeps, [60], {}, 30))
        await asyncio.sleep(0.01)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(main())


def test_a_swallowed_timeout_leaves_the_task_uncancelled() -> None:
    async def main() -> None:
        assert await run_async(swallows_cancel, [], {}, 0.05) == "went on"
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0
        await asyncio.sleep(0)  # and nothing pending is thrown in later

    asyncio.run(main())
