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

from helpers import wait_for
from shoal import App, EnqueueError, TaskFailed, chain, chord, group
from shoal.broker import AsyncBroker
from shoal.message import Message
from shoal.middleware import Retries
from shoal.middleware.tracing import Tracing
from shoal.workflow import OPTION, Steps

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


def test_chain_passes_each_result_as_the_next_first_argument(app: App, worker: Any) -> None:
    add, mul, _, _, calls = arithmetic(app)

    handle = chain(add.s(1, 2), mul.s(10), add.s(5)).enqueue()
    worker(app, ["wf-a", "wf-b"])

    assert handle.result(timeout=5) == 35
    assert calls["add"] == [(1, 2), (30, 5)]
    assert calls["mul"] == [(3, 10)]


def test_group_gathers_results_in_member_order_across_queues(app: App, worker: Any) -> None:
    add, mul, _, _, _ = arithmetic(app)

    handle = group([mul.s(i, i) if i % 2 else add.s(i, 100) for i in range(7)]).enqueue()
    worker(app, ["wf-a", "wf-b"])

    assert handle.result(timeout=5) == [100, 1, 102, 9, 104, 25, 106]


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
        steps = Steps(app, broker, app.hooks)
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
    (child,) = wait_for(sup.child_pids, message="the worker process to start")

    # When the worker process is SIGKILLed with members done and others in flight
    wait_for(
        lambda: len(runs(redis_client)) >= 4 and producer.measure("workflows").in_flight >= 2,
        timeout=20,
        message="some members done, others running",
    )
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
