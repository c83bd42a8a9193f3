"""How a workflow moves: which messages start it, and what a finished member starts next.

A workflow is JSON all the way down. A *node* is a task signature (``{"task", "queue", "args",
"kwargs"}``), a chain (``{"chain": [node, ...]}``) or a group (``{"group": [node, ...]}``); a
chord is a chain of a group and its callback. Every message of a workflow carries, in
``options["workflow"]``, the workflow id and its *continuation*: a stack of frames saying what
its result feeds, innermost first:

* ``{"chain": [node, ...]}``: start the first node with the result as its first argument, and
  the rest after it;
* ``{"join": group_id, "index": i, "size": n, "queue": q}``: record the result as member ``i``
  of a group; the member that completes the group carries the list of results on.

A continuation is started *before* the finished member is acked, and each enqueue is guarded
(``Guard`` mode ``once``, field = the finished member's id, or the group's id), so a member run
twice (its worker died after starting the next step, before its ack) starts nothing twice and a
chord callback runs once. A group records each member's result at most once (``HSETNX`` by
index) and reports completion to every member that finishes it, so a crash between the last
record and the callback's enqueue is repaired by the member's redelivery.

The last task of a workflow has the workflow id as its message id and stores its result, so
``Handle(queue, id).result()`` waits on it; a final group writes the gathered list there itself.
A member that is dead-lettered writes the failure there instead.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from shoal.broker import AsyncBroker, Guard
from shoal.errors import EnqueueError
from shoal.message import Message, new_message_id
from shoal.task import encode_batch

if TYPE_CHECKING:
    from shoal.app import App
    from shoal.middleware.hooks import Hooks

Node = dict[str, Any]
Frame = dict[str, Any]

OPTION = "workflow"
"""The message option that marks a workflow member and carries its continuation."""


@dataclass(frozen=True, slots=True)
class Meta:
    """What every message of one workflow knows about it."""

    id: str
    kind: str
    """chain, group, chord or task: what the user enqueued (for errors, spans, the DLQ)."""
    result_queue: str
    """The queue whose slot holds the workflow's final result (``result:<id>``)."""

    def option(self, then: list[Frame]) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "result_queue": self.result_queue, "then": then}

    @staticmethod
    def of(message: Message) -> Meta | None:
        wf = message.options.get(OPTION)
        if not isinstance(wf, dict) or not isinstance(wf.get("result_queue"), str):
            return None
        return Meta(str(wf.get("id")), str(wf.get("kind", "workflow")), wf["result_queue"])


def final_queue(node: Node) -> str:
    """The queue of the step that ends ``node``: where its result is kept."""
    while "task" not in node:
        node = node["chain"][-1] if "chain" in node else node["group"][0]
    return str(node["queue"])


def start(meta: Meta, node: Node, prefix: list[Any], then: list[Frame]) -> list[Message]:
    """The messages that start ``node`` (``prefix``: the previous step's result, if any)."""
    out: list[Message] = []
    _start(meta, node, prefix, then, time.time(), out)
    return out


def _start(
    meta: Meta, node: Node, prefix: list[Any], then: list[Frame], now: float, out: list[Message]
) -> None:
    if "task" in node:
        args = list(node["args"]) if node.get("immutable") else [*prefix, *node["args"]]
        options = {**node.get("options", {}), OPTION: meta.option(then)}
        message_id = meta.id if not then else new_message_id()  # the last step: result:<wid>
        out.append(
            Message(message_id, node["task"], node["queue"], args, dict(node["kwargs"]), now,
                    options=options)
        )  # fmt: skip
    elif "chain" in node:
        first, *rest = node["chain"]
        _start(meta, first, prefix, ([{"chain": rest}] if rest else []) + then, now, out)
    else:
        members = node["group"]
        group_id, home = new_message_id(), final_queue(node)
        for index, member in enumerate(members):
            join = {"join": group_id, "index": index, "size": len(members), "queue": home}
            _start(meta, member, prefix, [join, *then], now, out)


def by_queue(messages: list[Message]) -> Iterator[tuple[str, list[Message]]]:
    """Messages grouped by queue, in first-seen order (one enqueue call per queue slot)."""
    queues: dict[str, list[Message]] = {}
    for m in messages:
        queues.setdefault(m.queue, []).append(m)
    yield from queues.items()


Join = Callable[[Frame, bytes, bool], Awaitable[list[Any] | None]]
"""Record a member's result (JSON) in its group; the decoded results in order once all are in,
else None. The flag says the group ends the workflow (the list is then its result)."""
StartOnce = Callable[[list[Message], str], Awaitable[None]]
"""Enqueue the messages of a next step, guarded by a field (at most once per field)."""


async def advance(
    message: Message, result_json: bytes, result: Any, join: Join, start_once: StartOnce
) -> None:
    """Carry a finished member's result on to what it feeds. Idempotent: safe to repeat after a
    crash, and when two deliveries of the same member finish."""
    meta = Meta.of(message)
    assert meta is not None
    frames: list[Frame] = message.options[OPTION]["then"]
    value, guard = result, message.id
    while frames:
        frame, rest = frames[0], frames[1:]
        if "join" in frame:
            gathered = await join(frame, result_json, not rest)
            if gathered is None:
                return  # other members are still running
            value, guard, frames = gathered, str(frame["join"]), rest
            result_json = orjson.dumps(value)  # what an enclosing group records
            continue
        first, *after = frame["chain"]
        then = ([{"chain": after}] if after else []) + rest
        await start_once(start(meta, first, [value], then), guard)
        return


def batches(messages: list[Message]) -> Iterator[tuple[str, str, list[Message]]]:
    """Messages grouped by (queue, task), in first-seen order: one enqueue per batch, each in
    its own ``enqueue_context`` (one send span per task)."""
    grouped: dict[tuple[str, str], list[Message]] = {}
    for m in messages:
        grouped.setdefault((m.queue, m.task), []).append(m)
    for (queue, task), batch in grouped.items():
        yield queue, task, batch


def failure(message: Message, reason: str, error: str) -> bytes:
    """The result a dead-lettered member leaves for the workflow's handle."""
    return orjson.dumps(
        {
            "ok": False,
            "error": f"member {message.task} {message.id} was dead-lettered ({reason}): {error}",
            "member": message.id,
            "reason": reason,
        }
    )


class Steps:
    """The worker's side: carries finished members on, and reports failed ones. Uses the
    worker's async broker and hooks (so a next step's send span is a child of the member's
    process span: one workflow, one trace)."""

    def __init__(self, app: App, broker: AsyncBroker, hooks: Hooks) -> None:
        self.app = app
        self.broker = broker
        self.hooks = hooks

    async def finished(self, message: Message, result: Any) -> None:
        """Called after a member's task returned, before its ack; safe to repeat."""
        meta = Meta.of(message)
        assert meta is not None
        if not message.options[OPTION]["then"]:
            return  # the last step: its ack stores the result
        try:
            result_json = orjson.dumps(result)
        except TypeError as exc:
            raise EnqueueError(
                f"task {message.task!r} returned a {type(result).__name__}, which is not "
                f"JSON-serialisable ({exc}); a workflow passes results on: return plain data"
            ) from None
        ttl_ms = int(self.app.settings.workflow_ttl_s * 1000)

        async def join(frame: Frame, member_json: bytes, final: bool) -> list[Any] | None:
            gathered = await self.broker.join(
                frame["queue"],
                frame["join"],
                frame["index"],
                member_json,
                frame["size"],
                meta.id if final else None,
            )
            return None if gathered is None else [orjson.loads(v) for v in gathered]

        async def start_once(messages: list[Message], guard: str) -> None:
            for queue, task_name, batch in batches(messages):
                task = self.app.tasks.get(task_name) or self.app.remote(task_name, queue=queue)
                key = self.broker.keys(queue).workflow(meta.id)
                once = Guard(key, "once", f"{guard}>{task_name}", "1", ttl_ms)
                with self.hooks.context("enqueue_context", task, batch):
                    await self.broker.enqueue(queue, encode_batch(task, batch), once)
                self.hooks.emit("after_enqueue", task, batch)

        await advance(message, result_json, result, join, start_once)

    async def failed(self, message: Message, reason: str, error: str) -> None:
        """A member was dead-lettered: the workflow fails with its error (what it fed never
        runs, since its result never arrives). A replayed member that then succeeds carries the
        workflow on after all."""
        meta = Meta.of(message)
        assert meta is not None
        await self.broker.store_result(meta.result_queue, meta.id, failure(message, reason, error))
