"""Edges of flow and task control found in review: each test failed before its fix."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from helpers import wait_for
from shoal import App
from shoal.protocol.scripts import fetch_call, parse_fetch


def _fetch(app: App, queue: str, count: int, lease_ms: int = 30_000) -> Any:
    return parse_fetch(app.broker._run(fetch_call(app.broker.keys(queue), lease_ms, count)))


def test_a_purge_resets_the_rate_clock_its_put_back_messages_had_pushed_ahead(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()
    ran: list[int] = []

    @app.task(queue="rl", rate_limit="2/s")
    def slow(i: int) -> None:
        ran.append(i)

    # Given 60 messages of a 2/s task, most put back with start slots reserved up to 30 s out
    slow.enqueue_many([(i,) for i in range(60)])
    running = worker(app, ["rl"], burst=False)
    try:
        wait_for(lambda: app.measure("rl").delayed >= 50, message="the put-backs")

        # When the queue is purged and a new message is enqueued
        app.purge("rl")
        slow.enqueue(999)

        # Then it starts within its own interval, not after the purged messages' slots
        wait_for(lambda: 999 in ran, timeout=5, message="the new message to start")
    finally:
        running.stop()


def test_a_cancel_asked_while_it_ran_holds_after_a_failure_retries_it(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app(min_backoff_s=0.2, max_backoff_s=0.3)
    runs: list[int] = []

    @app.task(queue="cx", max_retries=3)
    def flaky() -> None:
        runs.append(1)
        time.sleep(0.3)
        raise RuntimeError("boom")

    running = worker(app, ["cx"], burst=False)
    try:
        handle = flaky.enqueue()
        wait_for(lambda: runs, message="the task to start")
        # cancelled while it runs; it fails before its worker's next heartbeat sees the cancel
        assert handle.cancel() == "running"
        wait_for(lambda: handle.status().state == "cancelled", message="the cancel to hold")
        assert len(runs) == 1
    finally:
        running.stop()


def test_a_message_that_started_and_lost_its_lease_is_not_expired_on_redelivery(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app(lease_s=1.0, heartbeat_s=0.3)
    ran: list[int] = []

    @app.task(queue="ex")
    def work() -> None:
        ran.append(1)

    handle = work.with_options(expires=1.2).enqueue()
    # a worker leases it (and starts it), then dies: only its lease lapses
    assert len(_fetch(app, "ex", 1, lease_ms=1000).messages) == 1
    wait_for(lambda: time.time() > handle_expiry(app, handle.id), message="past its expiry")
    worker(app, ["ex"])
    assert ran == [1] and handle.status().state != "dead"


def handle_expiry(app: App, message_id: str) -> float:
    from shoal.message import Message

    raw = app.broker.redis.hget(app.broker.keys("ex").messages, message_id)
    return float(Message.decode(raw).options["expires_at"]) + 0.1


def test_raising_a_queue_rate_limit_takes_effect_at_once(make_app: Callable[..., App]) -> None:
    app = make_app()
    app.configure_queue("qr", rate_limit="1/m")
    app.remote("x", queue="qr").enqueue_many([(i,) for i in range(5)])
    assert len(_fetch(app, "qr", 5).messages) == 1
    app.configure_queue("qr", rate_limit="100/s")
    # at most one new interval (and the window) to wait, not what is left of the old minute
    fetched = _fetch(app, "qr", 5)
    assert fetched.messages or 0 < fetched.next_due_ms - fetched.now_ms <= 1000


def test_an_idle_worker_does_not_poll_an_empty_rate_limited_queue(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    app.configure_queue("idle", rate_limit="20/s")
    app.remote("x", queue="idle").enqueue(1)
    assert len(_fetch(app, "idle", 5).messages) == 1
    fetched = _fetch(app, "idle", 5)
    # nothing waits: no wake-up for the next rate slot (the worker sleeps until notified)
    assert fetched.messages == [] and fetched.next_due_ms == -1


def test_a_large_or_tiny_rate_is_stored_in_a_form_fetch_reads(make_app: Callable[..., App]) -> None:
    app = make_app()
    app.configure_queue("qe", rate_limit="1000000/h")  # 278/s: about 28 in one 100 ms window
    assert app.queue_defaults("qe")["rate_limit"] == "1000000/h"
    app.remote("x", queue="qe").enqueue_many([(i,) for i in range(100)])
    assert len(_fetch(app, "qe", 100).messages) <= 30
    app.configure_queue("qe", rate_limit="0.00001/s")
    assert app.queue_defaults("qe")["rate_limit"] == "0.00001/s"
