"""``after_process`` reaches every middleware that wants it, for sync and async tasks, with the
result or the exception; a hook marked :func:`~shoal.middleware.base.failures_only` (tracing's:
it only records failures) is not called for the tasks that returned, which is most of them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers import AfterProcessRecorder
from shoal import App
from shoal.message import Message
from shoal.middleware import Retries, Tracing
from shoal.middleware.base import failures_only
from shoal.task import Task
from shoal.worker import Worker


class FailuresOnly(AfterProcessRecorder):
    @failures_only
    def after_process(
        self,
        task: Task[Any, Any],
        message: Message,
        *,
        result: Any,
        exception: BaseException | None,
    ) -> None:
        super().after_process(task, message, result=result, exception=exception)


class InheritsTheMark(FailuresOnly):
    """Does not override ``after_process``: still failures only."""


class OverridesUnmarked(FailuresOnly):
    """Overrides ``after_process`` without the mark: it wants successes again."""

    def after_process(
        self,
        task: Task[Any, Any],
        message: Message,
        *,
        result: Any,
        exception: BaseException | None,
    ) -> None:
        super().after_process(task, message, result=result, exception=exception)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["def", "async def"])
def test_after_process_sees_results_and_failures_unless_it_asked_for_failures_only(
    redis_url: str, key_prefix: str, asynchronous: bool
) -> None:
    everything, failures, inherits, overrides = (
        AfterProcessRecorder(),
        FailuresOnly(),
        InheritsTheMark(),
        OverridesUnmarked(),
    )
    app = App(
        redis_url,
        key_prefix=key_prefix,
        middleware=[everything, failures, inherits, overrides, Tracing(), Retries()],
    )
    if asynchronous:

        @app.task(queue="hooks", name="double", max_retries=0)
        async def double(n: int) -> int:
            if n < 0:
                raise ValueError("negative")
            return 2 * n

    else:

        @app.task(queue="hooks", name="double", max_retries=0)
        def double(n: int) -> int:
            if n < 0:
                raise ValueError("negative")
            return 2 * n

    try:
        double.enqueue(21)
        double.enqueue(-1)
        worker = Worker(app, ["hooks"], concurrency=1, burst=True)
        asyncio.run(worker.run())
        assert worker.processed == 2
    finally:
        app.close()
    both = [("double", 42, None), ("double", None, "ValueError")]
    assert sorted(everything.calls, key=str) == sorted(both, key=str)
    assert sorted(overrides.calls, key=str) == sorted(both, key=str)
    assert failures.calls == [("double", None, "ValueError")]
    assert inherits.calls == [("double", None, "ValueError")]
