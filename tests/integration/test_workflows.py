"""Workflows on a real Redis: chain, group and chord results, failure, idempotent joins, one trace.

In-process workers run the steps (``worker`` fixture, burst mode: it returns when nothing is
waiting, delayed or in flight, which a workflow never is between its steps: the next step is
enqueued before the step that feeds it is acked)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from processes import WorkerProcess, runs
from redis.crc import key_slot

from helpers import wait_for
from shoal import App, EnqueueError, TaskFailed, chain, chord, group
from shoal.message import Message
from shoal.middleware import Retries
from shoal.middleware.tracing import Tracing
from shoal.protocol import AsyncBroker, Broker
from shoal.worker import Worker
from shoal.workflow import OPTION
from shoal.workflow_steps import Steps

Calls = dict[str, list[Any]]


def arithmetic(app: App) -> tuple[Any, ...]:
    """Tasks on two queues that record their calls (in this process)."""
    calls: Calls = {}

    def seen(name: str, value: Any) -> None:
        calls.setdefault(name, []).append(value)

    @app.task(queue="wf-a")
    def add(x: int, y: int) -> int:
        seen("add", (x, y))
        return x + y

    @app.task(queue="wf-b")
    def mul(x: int, y: int) -> int:
        seen("mul", (x, y))
        return x * y

    @app.task(queue="wf-b")
    def total(values: list[int]) -> int:
        seen("total", values)
        return sum(values)

    @app.task(queue="wf-a", max_retries=0)
    def boom(x: int) -> int:
        seen("boom", x)
        raise ValueError(f"boom on {x}")

    return add, mul, total, boom, calls


@pytest.mark.every_topology
def test_chain_passes_each_result_as_the_next_first_argument(app: App, worker: Any) -> None:
    add, mul, _, _, calls = arithmetic(app)

    handle = chain(add.s(1, 2), mul.s(10), add.s(5)).enqueue()
    worker(app, ["wf-a", "wf-b"])

    assert handle.result(timeout=5) == 35
    assert calls["add"] == [(1, 2), (30, 5)]
    assert calls["mul"] == [(3, 10)]


@pytest.mark.every_topology
def test_group_gathers_results_in_member_order_across_queues(app: App, worker: Any) -> None:
    add, mul, _, _, _ = arithmetic(app)

    handle = group([mul.s(i, i) if i % 2 else add.s(i, 100) for i in range(7)]).enqueue()
    worker(app, ["wf-a", "wf-b"])

    assert handle.result(timeout=5) == [100, 1, 102, 9, 104, 25, 106]


@pytest.mark.every_topology
def test_chord_callback_runs_once_with_every_result_in_order(app: App, worker: Any) -> None:
    _, mul, total, _, calls = arithmetic(app)

    handle = chord([mul.s(i, 2) for i in range(20)], total.s()).enqueue()
    worker(app, ["wf-a", "wf-b"], concurrency=8)

    assert handle.result(timeout=5) == sum(i * 2 for i in range(20))
    assert calls["total"] == [[i * 2 for i in range(20)]]


def test_nested_workflows_compose(app: App, worker: Any) -> None:
    add, mul, total, _, _ = arithmetic(app)

    # 1+1=2 feeds a group (2*3, 2+4) whose list feeds total; a chord inside a group; .si()
    flow = chain(
        add.s(1, 1),
        group(mul.s(3), add.s(4), chord([mul.s(5), mul.s(6)], total.s())),
        total.s(),
        add.si(100, 1),
    )
    handle = flow.enqueue()
    worker(app, ["wf-a", "wf-b"])

    assert handle.result(timeout=5) == 101


def test_the_pipe_operator_builds_a_chain(app: App, worker: Any) -> None:
    add, mul, _, _, _ = arithmetic(app)

    flow = add.s(2, 2) | mul.s(3) | add.s(1)
    handle = flow.enqueue()
    worker(app, ["wf-a", "wf-b"])

    assert isinstance(flow, chain) and len(flow.steps) == 3
    assert handle.result(timeout=5) == 13


def test_nested_result_without_a_final_task(app: App, worker: Any) -> None:
    add, mul, total, _, calls = arithmetic(app)

    handle = chain(add.s(2, 3), group(mul.s(2), chord([mul.s(3), add.s(1)], total.s()))).enqueue()
    worker(app, ["wf-a", "wf-b"])

    assert handle.result(timeout=5) == [10, 21]
    assert calls["total"] == [[15, 6]]


@pytest.mark.every_topology
def test_a_member_that_fails_for_good_fails_the_chord_and_its_callback_never_runs(
    app: App, worker: Any
) -> None:
    _, mul, total, boom, calls = arithmetic(app)

    handle = chord([mul.s(1, 1), boom.s(7), mul.s(2, 2)], total.s()).enqueue()
    worker(app, ["wf-a", "wf-b"])

    with pytest.raises(
        TaskFailed,
        match=r"chord .* failed: member .*boom .* dead-lettered \(retries_exhausted\): "
        r"ValueError: boom on 7",
    ):
        handle.result(timeout=5)
    assert "total" not in calls
    (entry,) = app.dlq("wf-a").entries()
    assert entry.task is not None and entry.task.endswith("boom")
    assert entry.workflow == {"id": handle.id, "kind": "chord"}


def test_a_failed_chain_step_stops_the_chain(app: App, worker: Any) -> None:
    add, _, _, boom, calls = arithmetic(app)

    handle = chain(add.s(1, 2), boom.s(), add.s(1)).enqueue()
    worker(app, ["wf-a", "wf-b"])

    with pytest.raises(TaskFailed, match="ValueError: boom on 3"):
        handle.result(timeout=5)
    assert calls["add"] == [(1, 2)]
    assert app.dlq("wf-a").entries()[0].workflow == {"id": handle.id, "kind": "chain"}


def test_replaying_the_failed_member_carries_the_workflow_on(app: App, worker: Any) -> None:
    flaky_state = {"fail": True}

    @app.task(queue="wf-a", max_retries=0)
    def flaky(x: int) -> int:
        if flaky_state["fail"]:
            raise RuntimeError("not yet")
        return x * 7

    @app.task(queue="wf-a")
    def plus_one(x: int) -> int:
        return x + 1

    handle = chain(flaky.s(6), plus_one.s()).enqueue()
    worker(app, ["wf-a"])
    with pytest.raises(TaskFailed, match="not yet"):
        handle.result(timeout=5)

    flaky_state["fail"] = False
    assert app.dlq("wf-a").replay().replayed
    worker(app, ["wf-a"])

    assert handle.result(timeout=5) == 43


def test_a_result_that_is_not_json_fails_the_member_with_a_clear_error(
    app: App, worker: Any
) -> None:
    @app.task(queue="wf-a", max_retries=0)
    def makes_a_set() -> set[int]:
        return {1, 2}

    @app.task(queue="wf-a")
    def after(x: Any) -> Any:
        return x

    handle = chain(makes_a_set.s(), after.s()).enqueue()
    worker(app, ["wf-a"])

    with pytest.raises(TaskFailed, match="returned a set, which is not JSON-serialisable"):
        handle.result(timeout=5)


def test_a_step_can_carry_its_own_timeout(app: App, worker: Any) -> None:
    @app.task(queue="wf-a", max_retries=0)
    async def nap(seconds: float) -> float:
        await asyncio.sleep(seconds)
        return seconds

    handle = chain(nap.s(0.01), nap.with_options(timeout=0.05).si(5)).enqueue()
    worker(app, ["wf-a"])

    with pytest.raises(TaskFailed, match="TaskTimeout"):
        handle.result(timeout=5)
    with pytest.raises(EnqueueError, match="a workflow step takes timeout= only"):
        nap.with_options(delay=5).s(1)


def test_building_a_workflow_wrong_says_what_to_pass(app: App) -> None:
    add, _, total, _, _ = arithmetic(app)

    with pytest.raises(EnqueueError, match=r"chain\(\) needs at least one step"):
        chain()
    with pytest.raises(EnqueueError, match=r"Did you call the task instead of task\.s"):
        group([add.s(1, 2), 3])  # type: ignore[list-item]
    with pytest.raises(EnqueueError, match=r"signature argument args\[0\] \(object\) is not JSON"):
        add.s(object())
    with pytest.raises(EnqueueError, match="chord callback must be a signature"):
        chord([add.s(1, 2)], total)  # type: ignore[arg-type]
    other = App(redis_url=app.settings.redis_url, key_prefix=app.settings.key_prefix)
    stranger = other.task(queue="wf-a", name="stranger")(lambda x: x)
    with pytest.raises(EnqueueError, match="belongs to another App"):
        chain(add.s(1, 2), stranger.s()).enqueue()
    other.close()


def test_joins_and_next_steps_happen_once_when_members_finish_twice(app: App) -> None:
    """The crash window: a member's worker dies after carrying its result on but before its
    ack, so the member runs (and finishes) again. Nothing may start twice."""
    _, mul, total, _, _ = arithmetic(app)
    handle = chord([mul.s(i, 10) for i in range(3)], total.s()).enqueue()
    keys = app.broker.keys("wf-b")
    members = [Message.decode(b) for b in app.broker.redis.hvals(keys.messages)]  # type: ignore[union-attr]
    assert len(members) == 3

    async def finish_each_twice() -> None:
        broker = AsyncBroker(app.settings)
        steps = Steps(app.producer, broker, app.hooks)
        try:
            for member in members * 2:  # every member finishes twice, the last one included
                await steps.finished(member, member.args[0] * member.args[1])
        finally:
            await broker.close()

    asyncio.run(finish_each_twice())

    callbacks = [
        m
        for m in (Message.decode(b) for b in app.broker.redis.hvals(keys.messages))  # type: ignore[union-attr]
        if m.task.endswith("total")
    ]
    assert len(callbacks) == 1
    assert callbacks[0].args == [[0, 10, 20]]
    assert callbacks[0].id == handle.id  # the last step carries the workflow's id
    assert callbacks[0].options[OPTION]["then"] == []


def test_a_workflow_is_one_trace(make_app: Callable[..., App], worker: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = make_app(middleware=[Tracing(provider), Retries()])
    add, mul, total, _, _ = arithmetic(app)

    handle = chain(add.s(1, 2), chord([mul.s(2), mul.s(3)], total.s())).enqueue()
    worker(app, ["wf-a", "wf-b"])
    assert handle.result(timeout=5) == 15

    spans = exporter.get_finished_spans()
    names = sorted(s.name for s in spans)
    assert names.count("start chain") == 1
    assert names.count("process wf-a") == 1 and names.count("process wf-b") == 3
    assert len({s.context.trace_id for s in spans}) == 1, names
    root = next(s for s in spans if s.name == "start chain")
    assert root.attributes is not None and root.attributes["shoal.workflow.id"] == handle.id


# --- process level: a worker SIGKILLed in the middle of a chord ------------------------------


def test_sigkill_mid_chord_still_runs_the_callback_exactly_once(
    redis_url: str,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    producer = App(redis_url=redis_url, key_prefix="shoal")
    member = producer.remote("wf_square", queue="workflows")
    callback = producer.remote("wf_total", queue="workflows")
    size = 16
    handle = chord([member.s(f"m{i}", i, 0.3) for i in range(size)], callback.s("cb")).enqueue()
    sup = worker_process(
        redis_url, "--processes", "1", "--concurrency", "4", "--queues", "workflows",
        SHOAL_LEASE="2", SHOAL_HEARTBEAT="0.5",
    )  # fmt: skip
    wait_for(sup.child_pids, message="the worker process to start")

    # When the worker process is SIGKILLed with members done and others in flight
    wait_for(
        lambda: len(runs(redis_client)) >= 4 and producer.measure("workflows").in_flight >= 2,
        timeout=20,
        message="some members done, others running",
    )
    (child,) = sup.child_pids()
    os.kill(child, signal.SIGKILL)

    # Then the replacement process finishes the chord, and the callback ran exactly once
    assert handle.result(timeout=40) == sum(i * i for i in range(size))
    done = runs(redis_client)
    assert done["cb"] == 1
    assert all(done[f"m{i}"] >= 1 for i in range(size))
    assert producer.measure("workflows").recovered >= 1, "the killed process's leases returned"
    producer.close()


def test_dead_letter_entry_json_names_the_workflow(app: App, worker: Any) -> None:
    _, _, _, boom, _ = arithmetic(app)
    handle = group([boom.s(1)]).enqueue()
    worker(app, ["wf-a"])
    raw = app.broker.redis.hvals(app.broker.keys("wf-a").dead_entries)
    (entry,) = [orjson.loads(r) for r in raw]  # type: ignore[union-attr]
    assert entry["workflow"] == {"id": handle.id, "kind": "group"}


# --- any shape: random workflow trees against a local evaluation of the same tree ----------


Tree = tuple[str, Any]


def trees() -> st.SearchStrategy[Tree]:
    leaves = st.tuples(st.just("sig"), st.tuples(st.integers(0, 9), st.booleans(), st.booleans()))
    return st.recursive(
        leaves,
        lambda inner: st.tuples(
            st.sampled_from(["chain", "group"]), st.lists(inner, min_size=1, max_size=3)
        ),
        max_leaves=7,
    )


def expected(tree: Tree, prefix: list[Any]) -> Any:
    kind, body = tree
    if kind == "sig":
        k, immutable, _ = body
        return ["t", *([] if immutable else prefix), k]
    if kind == "group":
        return [expected(member, prefix) for member in body]
    value = expected(body[0], prefix)
    for step in body[1:]:
        value = expected(step, [value])
    return value


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=trees())
def test_any_nesting_of_chains_and_groups_computes_what_a_local_run_would(
    make_app: Callable[..., App], worker: Any, tree: Tree
) -> None:
    app = make_app(key_prefix=f"h{os.urandom(4).hex()}")  # a keyspace per example

    @app.task(queue="wf-a", name="tag_a")
    def tag_a(*args: Any) -> list[Any]:
        return ["t", *args]

    @app.task(queue="wf-b", name="tag_b")
    def tag_b(*args: Any) -> list[Any]:
        return ["t", *args]

    def build(t: Tree) -> Any:
        kind, body = t
        if kind == "sig":
            k, immutable, on_b = body
            task = tag_b if on_b else tag_a
            return task.si(k) if immutable else task.s(k)
        parts = [build(member) for member in body]
        return chain(*parts) if kind == "chain" else group(parts)

    handle = build(tree).enqueue()
    worker(app, ["wf-a", "wf-b"], concurrency=8)

    assert handle.result(timeout=5) == expected(tree, [])


# --- crash windows and late failures (found in review; each fails on the first design) -----


def stored_messages(app: App, queue: str) -> list[Message]:
    raw: list[bytes] = app.broker.redis.hvals(app.broker.keys(queue).messages)  # type: ignore[assignment]
    return [Message.decode(b) for b in raw]


def two_queue_tasks(app: App) -> tuple[Any, ...]:
    @app.task(queue="wf-a", name="first")
    def first(x: int) -> int:
        return x

    @app.task(queue="wf-a", name="left")
    def left(x: int) -> int:
        return x + 1

    @app.task(queue="wf-b", name="right")
    def right(x: int) -> int:
        return x + 2

    @app.task(queue="wf-a", name="total")
    def total(values: list[int]) -> int:
        return sum(values)

    return first, left, right, total


def test_a_redis_error_between_the_batches_of_a_step_neither_splits_nor_doubles_it(
    app: App, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a chain whose next step is a chord with members on two queues (two guarded batches)
    first, left, right, total = two_queue_tasks(app)
    handle = chain(first.s(1), chord([left.s(), right.s()], total.s())).enqueue()

    # When Redis fails once on the second batch, after the first one landed
    real = AsyncBroker.enqueue
    guarded = {"n": 0}

    async def flaky(self: AsyncBroker, queue: str, items: Any, guard: Any = None) -> Any:
        if guard is not None:
            guarded["n"] += 1
            if guarded["n"] == 2:
                raise redis.ConnectionError("simulated blip")
        return await real(self, queue, items, guard)

    monkeypatch.setattr(AsyncBroker, "enqueue", flaky)
    worker(app, ["wf-a", "wf-b"])

    # Then the retried step rebuilt the same group: one group, both members, one callback
    assert guarded["n"] > 2, "the step was started again after the error"
    assert handle.result(timeout=5) == (1 + 1) + (1 + 2)
    assert len(app.broker.redis.keys(f"{app.settings.key_prefix}:*group:*")) == 1


def test_two_deliveries_of_a_member_finishing_at_once_start_its_step_once(
    app: App, worker: Any
) -> None:
    first, left, right, total = two_queue_tasks(app)
    handle = chain(first.s(1), chord([left.s(), right.s()], total.s())).enqueue()
    (member,) = [
        Message.decode(b) for b in app.broker.redis.hvals(app.broker.keys("wf-a").messages)
    ]  # type: ignore[union-attr]

    async def both_finish() -> None:
        brokers = [AsyncBroker(app.settings) for _ in range(2)]
        try:
            await asyncio.gather(
                *(Steps(app.producer, b, app.hooks).finished(member, 1) for b in brokers)
            )
        finally:
            for b in brokers:
                await b.close()

    asyncio.run(both_finish())
    assert app.measure("wf-a").waiting + app.measure("wf-b").waiting == 1 + 2  # first + 2 members
    worker(app, ["wf-a", "wf-b"])
    assert handle.result(timeout=5) == 5


def test_a_stale_delivery_failing_late_does_not_fail_a_workflow_that_succeeded(
    app: App, worker: Any
) -> None:
    first, left, _, _ = two_queue_tasks(app)
    handle = chain(first.s(1), left.s()).enqueue()
    (member,) = [
        Message.decode(b) for b in app.broker.redis.hvals(app.broker.keys("wf-a").messages)
    ]  # type: ignore[union-attr]
    worker(app, ["wf-a"])
    assert handle.result(timeout=5) == 2

    # A worker whose lease on `first` had lapsed (its delivery superseded) now gives up on it
    async def stale() -> None:
        w = Worker(app, ["wf-a"])
        await w._dead_letter(  # owner 1: a token no longer current
            "wf-a", member.id, member, first, "retries_exhausted", ValueError("late"), owner=1
        )
        await w.broker.close()

    asyncio.run(stale())
    assert app.dlq("wf-a").entries() == []  # not this worker's delivery: refused
    assert handle.result(timeout=5) == 2


def test_a_member_failing_on_redelivery_after_feeding_its_step_does_not_fail_the_workflow(
    app: App, worker: Any
) -> None:
    fail = {"now": False}

    @app.task(queue="wf-a", name="charge", max_retries=0)
    def charge(x: int) -> int:
        if fail["now"]:
            raise RuntimeError("already charged")
        return x

    @app.task(queue="wf-a", name="receipt")
    def receipt(x: int) -> int:
        return x + 1

    @app.task(queue="wf-a", name="mail")
    def mail(x: int) -> int:
        return x * 10

    handle = chain(charge.s(1), receipt.s(), mail.s()).enqueue()
    (member,) = [
        Message.decode(b) for b in app.broker.redis.hvals(app.broker.keys("wf-a").messages)
    ]  # type: ignore[union-attr]
    worker(app, ["wf-a"])
    assert handle.result(timeout=5) == 20

    # Its worker had died after starting `receipt`, before the ack: the member comes back,
    # fails this time, and is dead-lettered; the workflow it already fed succeeded all the same
    fail["now"] = True
    app.broker.enqueue("wf-a", app.producer.encode(charge, [member]))
    worker(app, ["wf-a"])
    assert len(app.dlq("wf-a")) == 1
    assert handle.result(timeout=5) == 20


def test_a_result_that_cannot_be_carried_on_is_dead_lettered_without_rerunning_the_task(
    app: App, worker: Any
) -> None:
    runs_of = {"n": 0}

    @app.task(queue="wf-a", name="big", max_retries=3, min_backoff=0.01, max_backoff=0.02)
    def big(i: int) -> str:
        runs_of["n"] += 1
        return "x" * 600_000  # over SHOAL_MAX_MESSAGE_BYTES once it is the next step's argument

    @app.task(queue="wf-a", name="length")
    def length(value: str) -> int:
        return len(value)

    handle = chain(big.s(1), length.s()).enqueue()
    worker(app, ["wf-a"])

    with pytest.raises(TaskFailed, match=r"workflow_error.*over the 524288-byte limit"):
        handle.result(timeout=5)
    assert runs_of["n"] == 1
    assert app.dlq("wf-a").entries()[0].reason == "workflow_error"


def test_a_group_whose_state_expired_fails_the_workflow_saying_why(app: App, worker: Any) -> None:
    _, left, _, total = two_queue_tasks(app)
    handle = chord([left.s(1), left.s(2)], total.s()).enqueue()
    for key in app.broker.redis.keys(f"{app.settings.key_prefix}:*group:*"):
        app.broker.redis.delete(key)  # what SHOAL_WORKFLOW_TTL does to a workflow left too long

    worker(app, ["wf-a"])

    with pytest.raises(TaskFailed, match=r"is gone from Redis .* SHOAL_WORKFLOW_TTL"):
        handle.result(timeout=5)


def test_the_last_step_storing_its_own_result_keeps_the_workflow_error(
    app: App, worker: Any
) -> None:
    first, _, _, _ = two_queue_tasks(app)

    @app.task(queue="wf-a", name="bad", store_result=True, max_retries=0)
    def bad(x: int) -> int:
        raise ValueError("nope")

    handle = chain(first.s(1), bad.s()).enqueue()
    worker(app, ["wf-a"])

    with pytest.raises(
        TaskFailed, match=r"member bad .* on queue 'wf-a' .* `shoal dlq replay wf-a "
    ):
        handle.result(timeout=5)


def test_what_follows_a_group_is_stored_once_not_in_every_member(app: App) -> None:
    _, left, right, _ = two_queue_tasks(app)

    def largest_member(m: int) -> int:
        group_then_group = chain(
            group([left.s(i) for i in range(50)]), group([right.s(i) for i in range(m)])
        )
        group_then_group.enqueue()
        sizes = [len(b) for b in app.broker.redis.hvals(app.broker.keys("wf-a").messages)]  # type: ignore[union-attr]
        app.broker.redis.delete(app.broker.keys("wf-a").messages)
        return max(sizes)

    # (a few bytes apart: the enqueue time's digits; 990 more nodes would be ~60 KB)
    assert abs(largest_member(1000) - largest_member(10)) < 32


@pytest.mark.every_topology
def test_a_workflow_never_uses_two_hash_slots_in_one_script(
    app: App, worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    crossed: list[tuple[str, list[str]]] = []

    def check(call: Any) -> None:
        name, keys, _ = call
        if len({key_slot(k.encode()) for k in keys}) > 1:
            crossed.append((name, keys))

    real_async, real_sync = AsyncBroker._run, Broker._run

    async def run_async(self: AsyncBroker, call: Any) -> Any:
        check(call)
        return await real_async(self, call)

    def run_sync(self: Broker, call: Any, client: Any = None) -> Any:
        check(call)
        return real_sync(self, call, client)

    monkeypatch.setattr(AsyncBroker, "_run", run_async)
    monkeypatch.setattr(Broker, "_run", run_sync)
    tasks = [
        app.task(queue=f"q{i}", name=f"t{i}", max_retries=0)(lambda *a: list(a)) for i in range(3)
    ]
    t1, t2, t3 = (t.s for t in tasks)
    flows = [
        chain(t1(1), group(t2(2), chain(t3(3), group(t1(4), t2(5)))), t3()),
        chord([t3(1), chord([t2(1), t1(2)], group(t3(), t2()))], group(t2(), t1())),
    ]
    handles = [f.enqueue() for f in flows]
    worker(app, ["q0", "q1", "q2"])

    assert all(h.result(timeout=5) for h in handles)
    assert crossed == []


def test_a_wide_chord_joins_past_the_lua_slice_size(app: App, worker: Any) -> None:
    _, left, _, total = two_queue_tasks(app)
    handle = chord([left.s(i) for i in range(1201)], total.s()).enqueue()
    worker(app, ["wf-a"], concurrency=32, timeout=60)
    assert handle.result(timeout=5) == sum(i + 1 for i in range(1201))


# --- second review ---------------------------------------------------------------------------


def test_a_callback_that_cannot_be_sent_fails_the_chord(app: App, worker: Any) -> None:
    @app.task(queue="wf-a", name="half", max_retries=0)
    def half(i: int) -> str:
        return "x" * 300_000  # two of these make the callback's argument too large

    @app.task(queue="wf-a", name="count")
    def count(values: list[str]) -> int:
        return len(values)

    handle = chord([half.s(1), half.s(2)], count.s()).enqueue()
    worker(app, ["wf-a"])

    with pytest.raises(TaskFailed, match="workflow_error"):
        handle.result(timeout=5)


def test_a_late_duplicate_of_a_member_after_its_group_moved_on_changes_nothing(
    app: App, worker: Any
) -> None:
    _, mul, total, _, _ = arithmetic(app)
    handle = chord([mul.s(i, 10) for i in range(3)], total.s()).enqueue()
    members = stored_messages(app, "wf-b")
    worker(app, ["wf-a", "wf-b"])
    assert handle.result(timeout=5) == 30
    groups = app.broker.redis.keys(f"{app.settings.key_prefix}:*group:*")
    assert [k.endswith(b":done") for k in groups] == [True]  # the results are dropped

    async def late() -> None:  # a redelivery of a member, long after the callback started
        broker = AsyncBroker(app.settings)
        try:
            await Steps(app.producer, broker, app.hooks).finished(members[0], 0)
            await Steps(app.producer, broker, app.hooks).failed(
                members[0], "retries_exhausted", "late"
            )
        finally:
            await broker.close()

    asyncio.run(late())
    assert handle.result(timeout=5) == 30
    assert app.measure("wf-b").waiting == 0


def test_a_last_step_whose_result_is_not_json_is_dead_lettered_once(app: App, worker: Any) -> None:
    ran = {"n": 0}
    first, _, _, _ = two_queue_tasks(app)

    @app.task(queue="wf-a", name="setty", max_retries=2, min_backoff=0.01, max_backoff=0.02)
    def setty(x: int) -> set[int]:
        ran["n"] += 1
        return {x}

    handle = chain(first.s(1), setty.s()).enqueue()
    worker(app, ["wf-a"])

    with pytest.raises(TaskFailed, match=r"workflow_error.*returned a set"):
        handle.result(timeout=5)
    assert ran["n"] == 1
