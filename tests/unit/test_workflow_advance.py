"""Workflow advancement without Redis: ``start`` and ``advance`` driven against an in-memory
store that keeps group records and enqueue guards as the Lua scripts do (``group_start``,
``join``, ``group_done``, the enqueue guard of mode ``once``)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from shoal.errors import WorkflowError
from shoal.message import Message
from shoal.workflow import (
    OPTION,
    Frame,
    GroupStart,
    Joined,
    Meta,
    Node,
    Started,
    advance,
    batches,
    final_queue,
    is_last_step,
    start,
)

WID = "0190f0e0d0c0" + "ab" * 10


def t(task: str, *args: Any, queue: str = "q", immutable: bool = False) -> Node:
    node: Node = {"task": task, "queue": queue, "args": list(args), "kwargs": {}}
    if immutable:
        node["immutable"] = True
    return node


def chain(*nodes: Node) -> Node:
    return {"chain": list(nodes)}


def group(*nodes: Node) -> Node:
    return {"group": list(nodes)}


TASKS: dict[str, Any] = {
    "add": lambda *xs: sum(xs),
    "total": lambda xs, *more: sum(xs) + sum(more),
    "echo": lambda *xs: list(xs),
}


class Store:
    """Redis as the workflow scripts keep it, in memory."""

    def __init__(self) -> None:
        self.groups: dict[str, dict[str, Any]] = {}
        """group id → then (JSON), size, results (index → JSON, first one kept)."""
        self.done: set[str] = set()
        self.guards: set[tuple[str, str, str]] = set()
        """(queue, workflow id, "<guard>><task>"): claimed enqueue guards."""
        self.sent: list[Message] = []
        self.results: dict[str, Any] = {}
        """workflow id → its final value (the last step's, or a final group's list)."""
        self.crash_group_done = 0
        """How many group_done calls fail (a worker killed before it acked)."""

    def start_group(self, g: GroupStart) -> None:
        record = self.groups.setdefault(g.id, {"results": {}})
        record.setdefault("then", g.then)
        record.setdefault("size", g.size)

    def send(self, messages: list[Message]) -> None:
        for m in messages:  # a member's group is written before the member can join it
            frames = m.options[OPTION]["then"]
            if frames and "join" in frames[-1]:
                assert frames[-1]["join"] in self.groups
        self.sent.extend(messages)

    def join_for(self, workflow_id: str) -> Any:
        async def join(frame: Frame, member_json: bytes) -> Joined:
            group_id = frame["join"]
            if group_id in self.done:
                return Joined(False)  # what follows started: a late duplicate
            record = self.groups[group_id]  # KeyError: expired
            record["results"].setdefault(frame["index"], member_json)
            if len(record["results"]) < record["size"]:
                return Joined(False)
            then = orjson.loads(record["then"])
            results = [orjson.loads(record["results"][i]) for i in range(record["size"])]
            if then == []:  # the group ends the workflow: it writes the result itself
                self.results[workflow_id] = results
                del self.groups[group_id]
                self.done.add(group_id)
            return Joined(True, then, results)

        return join

    async def start_once(self, started: Started, guard: str) -> None:
        for g in started.groups:
            self.start_group(g)
        for queue, task, batch in batches(started.messages):
            meta = Meta.of(batch[0])
            assert meta is not None
            key = (queue, meta.id, f"{guard}>{task}")
            if key not in self.guards:
                self.guards.add(key)
                self.send(batch)

    async def group_done(self, queue: str, group_id: str) -> None:
        if self.crash_group_done:
            self.crash_group_done -= 1
            raise ConnectionError("killed before group_done")
        self.groups.pop(group_id, None)
        self.done.add(group_id)

    def enqueue(self, node: Node, kind: str = "workflow") -> Meta:
        """What ``Part.enqueue`` does: the root's groups, then its messages."""
        meta = Meta(WID, kind, final_queue(node))
        started = start(meta, node, [], [], "root")
        for g in started.groups:
            self.start_group(g)
        self.send(started.messages)
        return meta

    async def finish(self, message: Message) -> None:
        """A worker ran ``message``: carry its result on (or keep it, for the last step)."""
        result = TASKS[message.task](*message.args, **message.kwargs)
        if is_last_step(message):
            self.results[message.id] = result
            return
        meta = Meta.of(message)
        assert meta is not None
        await advance(message, result, self.join_for(meta.id), self.start_once, self.group_done)

    def drain(self) -> None:
        """Run every message sent, in order, once."""

        async def run() -> None:
            done = 0
            while done < len(self.sent):
                await self.finish(self.sent[done])
                done += 1

        asyncio.run(run())

    def ids(self) -> list[str]:
        return [m.id for m in self.sent]


def redeliver(store: Store, message: Message) -> None:
    asyncio.run(store.finish(message))


# --- shapes -----------------------------------------------------------------------------------


def test_a_chain_feeds_each_result_to_the_next_step() -> None:
    store = Store()
    meta = store.enqueue(chain(t("add", 1, 2), t("add", 10), t("add", 100)))
    store.drain()
    assert [m.args for m in store.sent] == [[1, 2], [3, 10], [13, 100]]
    assert store.results == {meta.id: 113}
    assert store.sent[-1].id == meta.id  # the last step's result is the handle's
    assert len(set(store.ids())) == 3


def test_an_immutable_step_ignores_the_previous_result() -> None:
    store = Store()
    meta = store.enqueue(chain(t("add", 1), t("add", 5, immutable=True)))
    store.drain()
    assert store.results == {meta.id: 5}


def test_a_group_gathers_its_members_results_in_order() -> None:
    store = Store()
    meta = store.enqueue(group(t("add", 1, 1), t("add", 2, 2, queue="r"), t("add", 3, 3)))
    assert len(store.groups) == 1 and not store.results
    store.drain()
    assert store.results == {meta.id: [2, 4, 6]}
    assert store.groups == {} and len(store.done) == 1


def test_a_chord_runs_its_callback_once_with_every_result() -> None:
    store = Store()
    meta = store.enqueue(chain(group(t("add", 1), t("add", 2), t("add", 3)), t("total", 100)))
    store.drain()
    callback = store.sent[-1]
    assert callback.task == "total" and callback.args == [[1, 2, 3], 100]
    assert [m.task for m in store.sent].count("total") == 1
    assert store.results == {meta.id: 106}
    assert store.groups == {}  # group_done dropped the results once the callback started


def test_a_group_in_a_chain_gets_the_previous_result_and_feeds_the_next() -> None:
    store = Store()
    meta = store.enqueue(chain(t("add", 1, 1), group(t("add", 10), t("add", 20)), t("total")))
    store.drain()
    assert [m.args for m in store.sent if m.task == "add"][1:] == [[2, 10], [2, 20]]
    assert store.results == {meta.id: 34}


def test_nested_groups_nest_their_results() -> None:
    store = Store()
    inner = group(t("add", 1), t("add", 2))
    node = chain(group(inner, chain(t("add", 3), t("add", 4)), t("add", 5)), t("echo"))
    meta = store.enqueue(node)
    assert len(store.groups) == 2  # the outer group and the inner one, written at the start
    store.drain()
    assert store.results == {meta.id: [[[1, 2], 7, 5]]}
    assert store.groups == {} and len(store.done) == 2


def test_a_final_nested_group_is_the_workflows_result() -> None:
    store = Store()
    meta = store.enqueue(group(group(t("add", 1), t("add", 2)), t("add", 3)))
    store.drain()
    assert store.results == {meta.id: [[1, 2], 3]}


# --- duplicates and crashes -------------------------------------------------------------------


def test_a_chain_member_run_twice_starts_its_next_step_once() -> None:
    store = Store()
    store.enqueue(chain(t("add", 1), t("add", 2), t("add", 3)))
    first = store.sent[0]
    redeliver(store, first)
    redeliver(store, first)
    assert [m.args for m in store.sent] == [[1], [1, 2]]


def test_a_group_member_finishing_twice_is_counted_once() -> None:
    store = Store()
    store.enqueue(chain(group(t("add", 1), t("add", 2)), t("total")))
    one, two = store.sent
    redeliver(store, one)
    redeliver(store, one)  # the duplicate does not complete the group
    assert len(store.sent) == 2
    redeliver(store, two)
    redeliver(store, two)
    assert [m.task for m in store.sent] == ["add", "add", "total"]
    assert store.sent[-1].args == [[1, 2]]


def test_a_crash_between_starting_and_group_done_starts_nothing_twice() -> None:
    store = Store()
    store.enqueue(chain(group(t("add", 1), t("add", 2)), t("total")))
    one, two = store.sent
    redeliver(store, one)
    store.crash_group_done = 1
    with pytest.raises(ConnectionError):
        redeliver(store, two)  # the callback was sent, the group not marked done
    callback = store.sent[-1]
    redeliver(store, two)  # redelivered: the group is still complete, so it starts again...
    assert [m.id for m in store.sent if m.task == "total"] == [callback.id]  # ...under a guard
    assert store.groups == {}  # and this time the group is done


def test_a_late_duplicate_after_the_group_completed_does_nothing() -> None:
    store = Store()
    meta = store.enqueue(chain(group(t("add", 1), t("add", 2)), t("total")))
    store.drain()
    sent = store.ids()
    redeliver(store, store.sent[0])
    redeliver(store, store.sent[1])
    assert store.ids() == sent and store.results == {meta.id: 3}


def test_a_late_duplicate_in_a_nested_group_does_nothing() -> None:
    store = Store()
    meta = store.enqueue(chain(group(group(t("add", 1), t("add", 2)), t("add", 3)), t("echo")))
    store.drain()
    sent = store.ids()
    for message in list(store.sent[:3]):
        redeliver(store, message)
    assert store.ids() == sent and store.results == {meta.id: [[[1, 2], 3]]}


# --- ids --------------------------------------------------------------------------------------


def shape(started: Started) -> tuple[list[str], list[tuple[str, str, int, bytes]]]:
    return [m.id for m in started.messages], [
        (g.queue, g.id, g.size, g.then) for g in started.groups
    ]


def test_starting_again_builds_the_same_ids() -> None:
    meta = Meta(WID, "chord", "q")
    node = chain(group(t("add", 1), group(t("add", 2), t("add", 3))), t("total"))
    first = start(meta, node, [], [], "root")
    assert shape(start(meta, node, [], [], "root")) == shape(first)
    assert len(first.messages) == 3 and len(first.groups) == 2
    ids = shape(first)[0] + [g.id for g in first.groups]
    assert len(set(ids)) == 5 and all(i[:12] == WID[:12] for i in ids)  # sorts by the workflow
    other = start(meta, node, [], [], "m1")  # another guard: other ids
    assert not set(shape(other)[0]) & set(shape(first)[0])
    assert {g.id for g in other.groups}.isdisjoint(g.id for g in first.groups)


def test_a_redelivered_member_builds_the_same_next_step() -> None:
    started: list[Started] = []

    async def record(step: Started, guard: str) -> None:
        started.append(step)

    async def never(*_: Any) -> Any:
        raise AssertionError("no group here")

    store = Store()
    store.enqueue(chain(t("add", 1), group(t("add", 2), t("add", 3)), t("total")))
    first = store.sent[0]
    for _ in range(2):
        asyncio.run(advance(first, 1, never, record, never))
    assert shape(started[0]) == shape(started[1]) and len(started[0].messages) == 2


# --- refusals ---------------------------------------------------------------------------------


def test_a_message_without_a_workflow_option_is_refused() -> None:
    message = Message("m", "add", "q", [], {}, 0.0, options={OPTION: {"then": "nope"}})

    async def never(*_: Any) -> Any:
        raise AssertionError("nothing may start")

    with pytest.raises(WorkflowError, match="malformed"):
        asyncio.run(advance(message, 1, never, never, never))


def test_a_result_that_is_not_json_is_refused_before_anything_starts() -> None:
    store = Store()
    store.enqueue(chain(t("add", 1), t("add", 2)))

    with pytest.raises(WorkflowError, match="not JSON-serialisable"):
        asyncio.run(
            advance(
                store.sent[0], object(), store.join_for(WID), store.start_once, store.group_done
            )
        )
    assert len(store.sent) == 1
