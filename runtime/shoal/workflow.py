"""How a workflow moves: which messages start it, and what a finished member starts next.

A workflow is JSON all the way down. A *node* is a task signature (``{"task", "queue", "args",
"kwargs"}``), a chain (``{"chain": [node, ...]}``) or a group (``{"group": [node, ...]}``); a
chord is a chain of a group and its callback. Every message of a workflow carries, in
``options["workflow"]``, the workflow id and its *continuation*: a stack of frames saying what
its result feeds, innermost first:

* ``{"chain": [node, ...]}``: start the first node with the result as its first argument, and
  the rest after it;
* ``{"join": group_id, "index": i, "size": n, "queue": q}``: record the result as member ``i``
  of a group, always the last frame. What follows the group is stored once, with the group
  (``{p}:{q}:group:<id>``, written before its members are sent), not in every member.

Crash safety rests on three rules:

* **Deterministic starts.** Every id a step creates (message ids, group ids) derives from the
  workflow id, the id of what finished (the *guard*) and the position in the tree, so starting a
  step again builds exactly the same messages and groups.
* **Guarded enqueues.** A step is enqueued before the member that feeds it is acked, one batch
  per (queue, task), each guarded by ``<guard>><task>`` (``Guard`` mode ``once``): a member run
  twice, or a retry after a Redis error between batches, starts nothing twice and nothing half.
* **Idempotent joins.** A group keeps one result per member index (``HSETNX``) and reports
  completion to every member that finds it complete; what follows is started under the group's
  id as guard, so a chord callback runs once.

The last task of a workflow has the workflow id as its message id and stores its result, so
``Handle(queue, id).result()`` waits on it; a final group writes the gathered list there itself.
A member that is dead-lettered (for good: by its latest delivery, having fed nothing yet)
writes the failure there instead, unless the workflow already succeeded.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from shoal.errors import WorkflowError
from shoal.message import Message
from shoal.protocol.results import encode_failure, encode_success_json
from shoal.reasons import Reason

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
    def of(message: Message | None) -> Meta | None:
        """The workflow ``message`` belongs to, or None (not a member, or a malformed option)."""
        wf = message.options.get(OPTION) if message is not None else None
        if not isinstance(wf, dict):
            return None
        if not (isinstance(wf.get("result_queue"), str) and isinstance(wf.get("then"), list)):
            return None
        return Meta(str(wf.get("id")), str(wf.get("kind", "workflow")), wf["result_queue"])


@dataclass(frozen=True, slots=True)
class GroupStart:
    """A group about to start: where its record lives, and what follows it (JSON frames)."""

    queue: str
    id: str
    size: int
    then: bytes


@dataclass(slots=True)
class Started:
    """What starting a node takes: group records to write first, then messages to send."""

    messages: list[Message] = field(default_factory=list)
    groups: list[GroupStart] = field(default_factory=list)


def is_last_step(message: Message) -> bool:
    """The workflow's last task: it stores the result ``handle.result()`` waits on."""
    flow = message.options.get(OPTION)
    return isinstance(flow, dict) and flow.get("then") == []


def final_queue(node: Node) -> str:
    """The queue of the step that ends ``node``: where its result is kept."""
    while "task" not in node:
        node = node["chain"][-1] if "chain" in node else node["group"][0]
    return str(node["queue"])


def first_batches(node: Node) -> set[tuple[str, str]]:
    """The (queue, task) batches that starting ``node`` sends: one guard each."""
    if "task" in node:
        return {(str(node["queue"]), str(node["task"]))}
    if "chain" in node:
        return first_batches(node["chain"][0])
    return set().union(*(first_batches(member) for member in node["group"]))


def start(meta: Meta, node: Node, prefix: list[Any], then: list[Frame], guard: str) -> Started:
    """What starts ``node`` (``prefix``: the previous step's result, if any). Ids derive from
    ``guard`` (what finished, or "root") and the position in the tree: repeatable."""
    out = Started()
    _start(meta, node, prefix, then, f"{meta.id}/{guard}", time.time(), out)
    return out


def _derived_id(meta: Meta, path: str) -> str:
    """A message or group id fixed by its place in the workflow; sorts by the workflow's time."""
    return meta.id[:12] + hashlib.sha256(path.encode()).hexdigest()[:20]


def _start(
    meta: Meta,
    node: Node,
    prefix: list[Any],
    then: list[Frame],
    path: str,
    now: float,
    out: Started,
) -> None:
    if "task" in node:
        args = list(node["args"]) if node.get("immutable") else [*prefix, *node["args"]]
        options = {**node.get("options", {}), OPTION: meta.option(then)}
        message_id = meta.id if not then else _derived_id(meta, path)  # last step: result:<wid>
        task, queue, kwargs = node["task"], node["queue"], dict(node["kwargs"])
        out.messages.append(Message(message_id, task, queue, args, kwargs, now, options=options))
    elif "chain" in node:
        first, *rest = node["chain"]
        after = ([{"chain": rest}] if rest else []) + then
        _start(meta, first, prefix, after, f"{path}.0", now, out)
    else:
        members = node["group"]
        group_id, home = _derived_id(meta, f"{path}/g"), final_queue(node)
        out.groups.append(GroupStart(home, group_id, len(members), orjson.dumps(then)))
        for index, member in enumerate(members):
            join = {"join": group_id, "index": index, "size": len(members), "queue": home}
            _start(meta, member, prefix, [join], f"{path}.{index}", now, out)


def batches(messages: list[Message]) -> Iterator[tuple[str, str, list[Message]]]:
    """Messages grouped by (queue, task), in first-seen order: one enqueue per batch, each in
    its own ``enqueue_context`` (one send span per task)."""
    grouped: dict[tuple[str, str], list[Message]] = {}
    for m in messages:
        grouped.setdefault((m.queue, m.task), []).append(m)
    for (queue, task), batch in grouped.items():
        yield queue, task, batch


@dataclass(frozen=True, slots=True)
class Joined:
    """A group join's answer: complete (with what follows and every result), or not (still
    waiting, or what follows already started)."""

    complete: bool
    then: list[Frame] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)


Join = Callable[[Frame, bytes], Awaitable[Joined]]
"""Record a member's result (JSON) in its group."""
StartOnce = Callable[[Started, str], Awaitable[None]]
"""Write a step's group records, then enqueue its messages, at most once per guard."""
GroupDone = Callable[[str, str], Awaitable[None]]
"""(queue, group id): what follows the group has started; its results may go."""


async def advance(
    message: Message, result: Any, join: Join, start_once: StartOnce, group_done: GroupDone
) -> None:
    """Carry a finished member's result on to what it feeds. Idempotent: safe to repeat after a
    crash, and when two deliveries of the same member finish."""
    meta = meta_of(message)
    frames: list[Frame] = message.options[OPTION]["then"]
    value, guard, value_json = result, message.id, _result_json(message, result)
    completed: tuple[str, str] | None = None  # the group whose results feed this step
    while frames:
        frame = frames[0]
        if "join" in frame:  # always the last frame: what follows a group is kept with it
            joined = await join(frame, value_json)
            if completed is not None:  # its list is recorded in the enclosing group
                await group_done(*completed)
            if not joined.complete:
                return  # other members are still running (or this one is a late duplicate)
            value, guard, frames = joined.results, str(frame["join"]), joined.then
            value_json = orjson.dumps(value)  # what an enclosing group records
            completed = (str(frame["queue"]), guard)
            continue
        first, *after = frame["chain"]
        then = ([{"chain": after}] if after else []) + frames[1:]
        await start_once(start(meta, first, [value], then, guard), guard)
        if completed is not None:
            await group_done(*completed)
        return


def meta_of(message: Message) -> Meta:
    """The workflow of a member; WorkflowError when its option is malformed."""
    meta = Meta.of(message)
    if meta is None:
        raise WorkflowError(
            f"message {message.id} ({message.task}) has a malformed {OPTION!r} option; it was "
            "not built by shoal.chain/group/chord, or by an incompatible Shoal version"
        )
    return meta


def _result_json(message: Message, result: Any) -> bytes:
    try:
        return orjson.dumps(result)
    except TypeError as exc:
        raise WorkflowError(
            f"task {message.task!r} returned a {type(result).__name__}, which is not "
            f"JSON-serialisable ({exc}); a workflow passes results on: return plain data"
        ) from None


def final_result(message: Message, result: Any) -> bytes:
    """What the last step stores for the workflow's handle; WorkflowError when not JSON."""
    return encode_success_json(_result_json(message, result))


def failure(message: Message, reason: Reason, error: str) -> bytes:
    """The result a dead-lettered member leaves for the workflow's handle: what failed, and how
    to carry the workflow on."""
    return encode_failure(
        f"member {message.task} {message.id} on queue {message.queue!r} was "
        f"dead-lettered ({reason}): {error}. Fix the cause, then "
        f"`shoal dlq replay {message.queue} {message.id}` carries the workflow on",
        member=message.id,
        reason=reason,
    )
