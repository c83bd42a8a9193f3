"""Workflows as users write them: ``chain``, ``group`` and ``chord`` of task signatures.

``add.s(1, 2)`` is a signature: a task call as JSON data, waiting for its first argument from
the step before it (``add.si(1, 2)`` takes none). ``chain(a.s(1), b.s(), c.s())`` runs them one
after another, each result becoming the next one's first argument; ``group([...])`` runs its
members in parallel and gathers their results in order; ``chord(group, callback)`` runs the
callback once, after every member, with the list of their results. Each ``.enqueue()`` is one
call and returns a :class:`~shoal.task.Handle` whose ``result(timeout=…)`` waits for the final
result. How the steps move on in the workers is :mod:`shoal.workflow`'s business.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from shoal import workflow
from shoal.errors import EnqueueError
from shoal.message import new_message_id
from shoal.task import Handle

if TYPE_CHECKING:
    from shoal.task import Producer, Task


class Part:
    """Anything that can be a step of a workflow; ``.enqueue()`` starts it."""

    kind = "workflow"

    @property
    def producer(self) -> Producer:
        """The send pipeline of the App this step's tasks belong to."""
        raise NotImplementedError

    def node(self) -> workflow.Node:
        """This step as JSON data."""
        raise NotImplementedError

    def __or__(self, other: Part) -> chain:
        """``a.s() | b.s()`` is ``chain(a.s(), b.s())``."""
        return chain(self, other)

    def enqueue(self) -> Handle[Any]:
        """Send the first messages (one call) and return the handle of the final result.

        One Redis call per queue and task of the first step: if this raises (Redis went away
        midway), some first members may already run; enqueueing again starts a new workflow."""
        producer, node = self.producer, self.node()
        _same_app(producer, self)
        meta = workflow.Meta(new_message_id(), self.kind, workflow.final_queue(node))
        started = workflow.start(meta, node, [], [], "root")
        messages = started.messages
        with producer.hooks.context("workflow_context", self.kind, meta.id, messages):
            for g in started.groups:  # each group's record first: members join it
                producer.broker.start_group(g.queue, g.id, g.size, g.then)
            for queue, task_name, batch in workflow.batches(messages):
                producer.send(producer.task_on(task_name, queue), batch)
        return Handle(producer, meta.result_queue, self.kind, meta.id)


class Signature(Part):
    """One task call as data. Build with ``task.s(*args, **kwargs)`` or ``task.si(...)``."""

    kind = "task"
    __slots__ = ("args", "immutable", "kwargs", "options", "task")

    def __init__(
        self,
        task: Task[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        immutable: bool = False,
        options: dict[str, Any] | None = None,
    ) -> None:
        self.task = task
        self.args = list(args)
        self.kwargs = kwargs
        self.immutable = immutable
        self.options = options or {}
        """Per-message options of this step (``timeout``), from ``task.with_options(...)``."""
        for name, value in [*enumerate(self.args), *kwargs.items()]:
            try:
                orjson.dumps(value)
            except TypeError as exc:
                label = f"args[{name}]" if isinstance(name, int) else f"{name}="
                raise EnqueueError(
                    f"task {task.name!r}: signature argument {label} ({type(value).__name__}) "
                    f"is not JSON-serialisable ({exc}); pass plain data or an id"
                ) from None

    def __repr__(self) -> str:
        call = ", ".join([*map(repr, self.args), *(f"{k}={v!r}" for k, v in self.kwargs.items())])
        return f"{self.task.name}.{'si' if self.immutable else 's'}({call})"

    @property
    def producer(self) -> Producer:
        return self.task.producer

    def node(self) -> workflow.Node:
        node: workflow.Node = {
            "task": self.task.name,
            "queue": self.task.queue,
            "args": self.args,
            "kwargs": self.kwargs,
        }
        if self.immutable:
            node["immutable"] = True
        if self.options:
            node["options"] = self.options
        return node


class chain(Part):  # noqa: N801 - named like a function, as in Celery, because it reads as one
    """Steps one after another: ``chain(a.s(1), b.s(), c.s())`` runs ``c(b(a(1)))``."""

    kind = "chain"

    def __init__(self, *steps: Part | Iterable[Part]) -> None:
        flat = _parts("chain", steps)
        self.steps: list[Part] = []
        for step in flat:  # chain(chain(a, b), c) is chain(a, b, c)
            self.steps.extend(step.steps if isinstance(step, chain) else [step])

    def __repr__(self) -> str:
        return " | ".join(map(repr, self.steps))

    @property
    def producer(self) -> Producer:
        return self.steps[0].producer

    def node(self) -> workflow.Node:
        return {"chain": [s.node() for s in self.steps]}


class group(Part):  # noqa: N801
    """Members in parallel: ``group([a.s(1), a.s(2)])``; its result is the list of theirs, in
    order. In a chain, each member gets the previous step's result as its first argument."""

    kind = "group"

    def __init__(self, *members: Part | Iterable[Part]) -> None:
        self.members = _parts("group", members)

    def __repr__(self) -> str:
        return f"group([{', '.join(map(repr, self.members))}])"

    @property
    def producer(self) -> Producer:
        return self.members[0].producer

    def node(self) -> workflow.Node:
        return {"group": [m.node() for m in self.members]}


class chord(Part):  # noqa: N801
    """``chord(group, callback)``: the callback runs once, after every member finished, with
    the list of their results (in member order) as its first argument. A member that fails
    for good fails the chord: the callback never runs, and the handle raises its error."""

    kind = "chord"

    def __init__(self, header: group | Iterable[Part], callback: Part) -> None:
        if not isinstance(header, group):
            members = list(header)
            if not members:
                raise EnqueueError("chord() needs at least one member before its callback")
            header = group(members)
        self.header = header
        if not isinstance(callback, Part):
            raise EnqueueError(
                f"chord callback must be a signature such as task.s(), got "
                f"{type(callback).__name__}"
            )
        self.callback = callback

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.callback!r})"

    @property
    def producer(self) -> Producer:
        return self.callback.producer

    def node(self) -> workflow.Node:
        return {"chain": [self.header.node(), self.callback.node()]}


def _parts(kind: str, given: tuple[Part | Iterable[Part], ...]) -> list[Part]:
    """Accept ``f(a, b)`` and ``f([a, b])``; refuse empties and non-steps, saying what to pass."""
    one_iterable = len(given) == 1 and not isinstance(given[0], Part)
    items: list[Any] = list(given[0]) if one_iterable else list(given)  # type: ignore[arg-type]
    if not items:
        raise EnqueueError(f"{kind}() needs at least one step, such as task.s(...)")
    for item in items:
        if not isinstance(item, Part):
            raise EnqueueError(
                f"{kind}() takes signatures (task.s(...)), chains, groups or chords; got "
                f"{type(item).__name__}: {item!r}. Did you call the task instead of task.s()?"
            )
    return items


def _same_app(producer: Producer, root: Part) -> None:
    """Every task must belong to the App that enqueues: one Redis, one signer."""
    stack = [root]
    while stack:
        part = stack.pop()
        if isinstance(part, Signature):
            if part.task.producer is not producer:
                raise EnqueueError(
                    f"task {part.task.name!r} belongs to another App than the workflow's first "
                    "task; build every signature from the same App (use app.remote for tasks "
                    "defined elsewhere)"
                )
        elif isinstance(part, chain):
            stack.extend(part.steps)
        elif isinstance(part, group):
            stack.extend(part.members)
        elif isinstance(part, chord):
            stack.extend([part.header, part.callback])
