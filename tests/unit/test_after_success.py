"""``Hooks.after_success``: which middleware hear of a task that returned, and a failing hook
never stops the others (the worker side is in tests/integration/test_process_hooks.py)."""

from __future__ import annotations

from typing import Any

import pytest

from helpers import AfterProcessRecorder
from shoal import App
from shoal.message import Message
from shoal.middleware import Middleware, Tracing
from shoal.middleware.hooks import Hooks
from shoal.task import Task


def test_tracing_asks_only_for_failures() -> None:
    assert getattr(Tracing.after_process, "shoal_failures_only", False)


def test_a_failing_success_hook_is_logged_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Middleware):
        def after_process(
            self,
            task: Task[Any, Any],
            message: Message,
            *,
            result: Any,
            exception: BaseException | None,
        ) -> None:
            raise RuntimeError("middleware bug")

    after = AfterProcessRecorder()
    app = App("redis://127.0.0.1:1/0", middleware=[after, Broken()])
    task = app.task(queue="q", name="t")(lambda: None)
    message = Message("m1", "t", "q", [], {}, 0.0)
    Hooks(app.middleware).after_success(task, message, "done")
    assert after.calls == [("t", "done", None)]
    assert "Broken.after_process failed" in caplog.text
