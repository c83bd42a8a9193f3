"""Retries, delays, the dead-letter queue, dedupe and signing, on a real Redis.

Backoff is checked from the due times Redis holds, never by sleeping through it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis

from helpers import wait_for
from shoal import App, ConfigurationError, Retry
from shoal.middleware import Retries
from shoal.middleware.retries import backoff_s


def redis_now_ms(client: redis.Redis) -> int:
    sec, usec = client.time()
    return int(sec) * 1000 + int(usec) // 1000


def run_until_delayed(worker: Any, app: App, queue: str, message_id: str) -> None:
    """Run a worker until the message waits in the delayed set, then stop it."""
    running = worker(app, [queue], burst=False)
    delayed = app.broker.keys(queue).delayed
    wait_for(
        lambda: app.broker.redis.zscore(delayed, message_id) is not None,
        message=f"{message_id} to be delayed",
    )
    running.stop()


def due_in_ms(app: App, queue: str, message_id: str) -> float:
    score = app.broker.redis.zscore(app.broker.keys(queue).delayed, message_id)
    assert score is not None, f"{message_id} is not delayed"
    return float(score) - redis_now_ms(app.broker.redis)


def dead_entry(app: App, queue: str, message_id: str) -> dict[str, Any]:
    raw = app.broker.redis.hget(app.broker.keys(queue).dead_entries, message_id)
    assert raw is not None, f"{message_id} is not in the DLQ"
    entry: dict[str, Any] = orjson.loads(raw)
    return entry


@pytest.mark.every_topology
def test_failures_retry_with_growing_delays_then_dead_letter(
    make_app: Callable[..., App], worker: Any
) -> None:
    # Given a task that always fails, with a deterministic backoff
    app = make_app(middleware=[Retries(rng=random.Random(7))])
    calls: list[int] = []

    @app.task(queue="q", max_retries=3, min_backoff=10, max_backoff=10_000)
    def always_fails(n: int) -> None:
        calls.append(n)
        raise ConnectionError("partner down")

    handle = always_fails.enqueue(1)
    delays: list[float] = []
    for attempt in range(3):
        # When a worker runs it once
        run_until_delayed(worker, app, "q", handle.id)
        # Then it waits in Redis (not in memory) for a growing, jittered delay
        delay = due_in_ms(app, "q", handle.id)
        delays.append(delay)
        assert 10_000 * 0.9 <= delay <= min(10_000, 10 * 2**attempt) * 1000 + 100
        stored = orjson.loads(app.broker.redis.hget(app.broker.keys("q").messages, handle.id))
        assert stored["attempt"] == attempt + 1
        assert stored["id"] == handle.id
        assert "ConnectionError: partner down" in stored["options"]["last_error"]
        # make it due now instead of sleeping through the backoff
        app.broker.redis.zadd(app.broker.keys("q").delayed, {handle.id: 0})
    assert max(delays) > min(delays)

    worker(app, ["q"])
    assert calls == [1, 1, 1, 1]
    entry = dead_entry(app, "q", handle.id)
    assert entry["reason"] == "retries_exhausted"
    assert entry["attempts"] == 4
    assert entry["exception_type"] == "ConnectionError"
    assert "Traceback" in entry["traceback"]


def test_backoff_is_bounded_and_grows() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        assert 1.0 <= backoff_s(attempt, 1.0, 60.0, rng) <= min(60.0, 2 ** (attempt - 1))


def test_retry_exception_sets_the_delay(make_app: Callable[..., App], worker: Any) -> None:
    app = make_app()

    @app.task(queue="q", max_retries=2)
    def later() -> None:
        raise Retry(delay=120)

    handle = later.enqueue()
    run_until_delayed(worker, app, "q", handle.id)
    assert 119_000 <= due_in_ms(app, "q", handle.id) <= 120_000


def test_no_retry_on_dead_letters_at_once(make_app: Callable[..., App], worker: Any) -> None:
    app = make_app()

    @app.task(queue="q", max_retries=5, no_retry_on=(KeyError,))
    def bad_input() -> None:
        raise KeyError("user 7")

    handle = bad_input.enqueue()
    worker(app, ["q"])
    assert dead_entry(app, "q", handle.id)["reason"] == "not_retryable"
    assert app.measure("q").retried == 0


def test_delayed_message_runs_once_due_even_if_no_worker_was_alive(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()
    ran: list[str] = []

    @app.task(queue="q")
    def remind(who: str) -> None:
        ran.append(who)

    # Given a message delayed while no worker runs at all
    remind.with_options(delay=3600).enqueue("ada")
    assert app.measure("q").delayed == 1
    ids = app.broker.redis.zrange(app.broker.keys("q").delayed, 0, -1)
    app.broker.redis.zadd(app.broker.keys("q").delayed, dict.fromkeys(ids, 0))  # now due
    # When a worker starts later, Then it runs it
    worker(app, ["q"])
    assert ran == ["ada"]


def test_dlq_is_bounded_by_count_and_age(make_app: Callable[..., App], worker: Any) -> None:
    app = make_app(dlq_max_entries=3, dlq_max_age_s=3600)

    @app.task(queue="q", max_retries=0)
    def fails(n: int) -> None:
        raise ValueError(n)

    first = fails.enqueue_many([(n,) for n in range(5)])
    worker(app, ["q"])
    dead = app.dlq("q")
    assert len(dead) == 3
    assert app.measure("q").dead_total == 5
    assert {e.id for e in dead.entries()} <= {h.id for h in first}
    # an entry older than the max age is dropped when the next one arrives
    old = dead.entries()[-1].id
    app.broker.redis.zadd(app.broker.keys("q").dead, {old: 1})  # dead since 1970
    fails.enqueue(99)
    worker(app, ["q"])
    assert old not in {e.id for e in dead.entries()}
    assert app.broker.redis.hget(app.broker.keys("q").dead_entries, old) is None


@pytest.mark.every_topology
def test_replay_resets_attempts_and_purge_deletes(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()
    healed = {"now": False}

    @app.task(queue="q", max_retries=0, store_result=True)
    def flaky(n: int) -> int:
        if not healed["now"]:
            raise RuntimeError("not yet")
        return n

    a, b = flaky.enqueue(1), flaky.enqueue(2)
    other = app.remote("gone.task", queue="q").enqueue()
    worker(app, ["q"])
    dead = app.dlq("q")
    assert {e.reason for e in dead.entries()} == {"retries_exhausted", "unknown_task"}

    healed["now"] = True
    report = dead.replay(task=flaky.name)
    assert sorted(report.replayed) == sorted([a.id, b.id])
    worker(app, ["q"])
    assert a.result(timeout=5) == 1 and b.result(timeout=5) == 2
    assert [e.id for e in dead.entries()] == [other.id]

    assert dead.purge(older_than_s=3600) == 0  # too young
    assert dead.purge() == 1
    assert len(dead) == 0


@pytest.mark.every_topology
def test_dedupe_returns_the_live_message(make_app: Callable[..., App], worker: Any) -> None:
    app = make_app()
    ran: list[int] = []

    @app.task(queue="q")
    def sync_user(user: int) -> None:
        ran.append(user)

    first = sync_user.with_options(dedupe_key="user-7").enqueue(7)
    again = sync_user.with_options(dedupe_key="user-7").enqueue(7)
    other = sync_user.with_options(dedupe_key="user-8").enqueue(8)
    assert again.id == first.id != other.id
    assert app.measure("q").waiting == 2
    worker(app, ["q"])
    assert sorted(ran) == [7, 8]
    after = sync_user.with_options(dedupe_key="user-7").enqueue(7)  # finished: a new one
    assert after.id != first.id


@pytest.mark.every_topology
def test_signed_workers_refuse_unsigned_and_forged_messages(
    make_app: Callable[..., App], worker: Any
) -> None:
    ran: list[str] = []

    def define(app: App) -> Any:
        @app.task(queue="q", name="pay")
        def pay(who: str) -> None:
            ran.append(who)

        return pay

    new_app = make_app(signing_keys=("new", "old"))
    signed_new = define(new_app)
    signed_old = define(make_app(signing_keys=("old",)))
    unsigned = define(make_app())
    forger = define(make_app(signing_keys=("guess",)))

    ok_new, ok_old = signed_new.enqueue("alice"), signed_old.enqueue("bob")
    bad1, bad2 = unsigned.enqueue("mallory"), forger.enqueue("eve")
    worker(new_app, ["q"])
    assert sorted(ran) == ["alice", "bob"]
    dead = new_app.dlq("q")
    assert {e.id: e.reason for e in dead.entries()} == {
        bad1.id: "bad_signature",
        bad2.id: "bad_signature",
    }
    assert ok_new.id not in {e.id for e in dead.entries()} and ok_old


def test_oversized_stored_message_is_dead_lettered(
    make_app: Callable[..., App], worker: Any
) -> None:
    big_producer = make_app(max_message_bytes=10_000_000)
    app = make_app(max_message_bytes=1000)

    @big_producer.task(queue="q", name="upload")
    def upload_big(data: str) -> None: ...

    @app.task(queue="q", name="upload")
    def upload(data: str) -> None:
        pytest.fail("an oversized message must not run")

    handle = upload_big.enqueue("x" * 5000)
    keys = app.broker.keys("q")
    size = app.broker.redis.hstrlen(keys.messages, handle.id)
    worker(app, ["q"])
    entry = dead_entry(app, "q", handle.id)
    assert entry["reason"] == "too_large"
    assert (entry["size"], entry["stored"]) == (size, "excerpt")
    assert app.broker.redis.hstrlen(keys.dead_bodies, handle.id) == 4096


def test_message_that_keeps_losing_its_worker_is_dead_lettered(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app(max_lost_deliveries=2)

    @app.task(queue="q")
    def crashes_workers() -> None:
        pytest.fail("must not run again")

    handle = crashes_workers.enqueue()
    # as if three workers had fetched it and died (no retry verdict ever recorded)
    app.broker.redis.hset(app.broker.keys("q").deliveries, handle.id, 3)
    worker(app, ["q"])
    entry = dead_entry(app, "q", handle.id)
    assert entry["reason"] == "worker_lost"
    assert "delivered 4 times" in entry["error"]


@pytest.mark.every_topology
def test_poison_entries_do_not_block_the_queue(make_app: Callable[..., App], worker: Any) -> None:
    app = make_app()
    ran: list[int] = []

    @app.task(queue="q")
    def good(n: int) -> None:
        ran.append(n)

    keys = app.broker.keys("q")
    good.enqueue(1)
    app.broker.redis.lpush(keys.waiting, b"not-a-token")
    app.broker.redis.hset(keys.messages, "bad1", b"\xff\xfe not json")
    app.broker.redis.lpush(keys.waiting, b"0:bad1")
    good.enqueue(2)
    worker(app, ["q"])
    assert sorted(ran) == [1, 2]
    entries = app.dlq("q").entries()
    assert sorted(e.reason for e in entries) == ["undecodable", "undecodable"]
    assert "bad1" in {e.id for e in entries}  # a stored message keeps its id
    bodies = [(app.dlq("q").get(e.id) or e).message or "" for e in entries]
    assert any("not-a-token" in b for b in bodies)  # a bare token: under an id of its own
    wait_for(lambda: app.measure("q").waiting == 0, message="an empty queue")


def test_queue_defaults_from_redis_apply_below_task_options(
    make_app: Callable[..., App], worker: Any
) -> None:
    # Given queue defaults written where workers read them (as the operator does)
    app = make_app()
    app.configure_queue("q", max_retries=0, timeout=0.05, dlq_max_entries=1)
    assert app.queue_defaults("q") == {"max_retries": 0, "timeout": 0.05, "dlq_max_entries": 1}

    @app.task(queue="q")
    async def slow() -> None:
        await asyncio.sleep(5)

    @app.task(queue="q", max_retries=1, min_backoff=0.001, max_backoff=0.001)
    def fails_twice() -> None:
        raise ValueError("no")

    # When both run
    handles = [slow.enqueue(), fails_twice.enqueue()]
    worker(app, ["q"])
    # Then the queue's timeout applied to slow, and the task's own max_retries beat the queue's
    assert app.measure("q").retried == 1
    assert app.measure("q").dead_total == 2
    # And the DLQ bound of the queue kept one entry
    assert len(app.dlq("q")) == 1
    assert handles


def test_bad_queue_defaults_are_refused_with_the_name(make_app: Callable[..., App]) -> None:
    app = make_app()
    with pytest.raises(ConfigurationError, match="max_retires"):
        app.configure_queue("q", max_retires=3)
    with pytest.raises(ConfigurationError, match="timeout"):
        app.configure_queue("q", timeout=0)


def test_a_redis_reply_error_on_ack_is_retried_not_lost(
    make_app: Callable[..., App], worker: Any
) -> None:
    # Given a Redis that refuses the first ack batch (READONLY, as after a failover)
    app = make_app()

    @app.task(queue="q")
    def job(n: int) -> None: ...

    job.enqueue_many([(n,) for n in range(6)])
    running = worker(app, ["q"], burst=False)
    real_ack = running.worker.broker.ack
    refused: list[int] = []

    async def flaky_ack(*args: Any) -> int:
        if not refused:
            refused.append(1)
            raise redis.exceptions.ReadOnlyError("READONLY You can't write against a replica.")
        return await real_ack(*args)

    running.worker.broker.ack = flaky_ack
    # Then every message is still acked once Redis accepts writes again
    wait_for(lambda: app.measure("q").completed == 6, message="6 acked")
    running.stop()
    assert refused == [1]
    assert app.measure("q").in_flight == 0


def test_a_message_that_breaks_the_worker_goes_to_the_dlq(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()

    @app.task(queue="q", name="job")
    def job() -> None:
        pytest.fail("must not run with a broken option")

    keys = app.broker.keys("q")
    envelope = {
        "v": 1,
        "id": "broken1",
        "task": "job",
        "queue": "q",
        "args": [],
        "kwargs": {},
        "enqueued_at": 0,
        "attempt": 0,
        "headers": {"traceparent": 5},
        "options": {"timeout": "soon"},
    }
    app.broker.redis.hset(keys.messages, "broken1", orjson.dumps(envelope))
    app.broker.redis.lpush(keys.waiting, b"0:broken1")
    app.broker.redis.lpush(keys.waiting, b'{"task":"add"}')  # not a token at all
    worker(app, ["q"])
    by_reason = {e.reason: e for e in app.dlq("q").entries()}
    assert sorted(by_reason) == ["internal_error", "undecodable"]
    assert by_reason["internal_error"].id == "broken1"
    token = app.dlq("q").get(by_reason["undecodable"].id)  # filed under an id of its own
    assert token is not None and '{"task":"add"}' in (token.message or "")
    assert app.measure("q").in_flight == 0


def test_a_tasks_own_timeout_error_is_not_a_task_timeout(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()

    @app.task(queue="q", max_retries=0, timeout=30)
    async def calls_partner() -> None:
        raise TimeoutError("partner API did not answer")

    handle = calls_partner.enqueue()
    worker(app, ["q"])
    assert dead_entry(app, "q", handle.id)["exception_type"] == "TimeoutError"


def test_a_replayed_message_takes_its_dedupe_key_back(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()

    @app.task(queue="q", name="sync_user", max_retries=0)
    def sync_user(user: int) -> None:
        raise RuntimeError("down")

    first = sync_user.with_options(dedupe_key="user-7").enqueue(7)
    worker(app, ["q"])
    assert app.dlq("q").replay().replayed == [first.id]
    # while the replayed message waits, the key is its again
    assert sync_user.with_options(dedupe_key="user-7").enqueue(7).id == first.id
    assert app.measure("q").waiting == 1
