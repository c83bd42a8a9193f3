"""Stopping an in-process worker (what SIGTERM does in a worker process)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from helpers import RunningWorker, wait_for
from shoal import App
from shoal.worker import Worker


def test_stop_lets_running_tasks_finish_acks_them_and_hands_back_the_rest(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    release = threading.Event()
    ran: list[int] = []

    @app.task(queue="grace")
    def job(n: int) -> None:
        assert release.wait(20)
        ran.append(n)

    # Given a worker running 2 of 5 messages, on a Redis that answers acks in 300 ms
    job.enqueue_many([(n,) for n in range(5)])
    running = RunningWorker(Worker(app, ["grace"], concurrency=2))
    ack = running.worker.broker.ack

    async def slow_ack(*args: Any, **kwargs: Any) -> int:
        await asyncio.sleep(0.3)
        return await ack(*args, **kwargs)

    running.worker.broker.ack = slow_ack  # type: ignore[method-assign]
    running.start()
    wait_for(lambda: running.worker.busy == 2, message="two tasks running")

    # When it is asked to stop, and then the running tasks finish
    running.call(running.worker.stop)
    wait_for(lambda: running.worker._stopping, message="the stop to be seen")
    release.set()
    running.thread.join(15)

    # Then it returns; the two that ran are acked, the three others wait for another worker
    assert not running.thread.is_alive(), "worker.stop() did not return within 15 s"
    assert sorted(ran) == [0, 1]
    stats = app.measure("grace")
    assert (stats.completed, stats.waiting, stats.in_flight) == (2, 3, 0)
