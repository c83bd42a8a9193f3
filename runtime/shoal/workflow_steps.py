"""The worker's side of workflows: carry a finished member's result on, report a failed one.

:mod:`shoal.workflow` decides what starts next (pure); this module does it, through the
worker's async broker and the one send pipeline (:class:`~shoal.task.Producer`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from shoal.errors import EnqueueError, WorkflowError
from shoal.message import Message
from shoal.protocol import AsyncBroker, Guard
from shoal.reasons import Reason
from shoal.workflow import (
    OPTION,
    Frame,
    Joined,
    Meta,
    Started,
    advance,
    batches,
    failure,
    first_batches,
    is_last_step,
    meta_of,
)

if TYPE_CHECKING:
    from shoal.middleware.hooks import Hooks
    from shoal.task import Producer


class Steps:
    """The worker's side: carries finished members on, and reports failed ones. Uses the
    worker's async broker and hooks (so a next step's send span is a child of the member's
    process span: one workflow, one trace)."""

    def __init__(self, producer: Producer, broker: AsyncBroker, hooks: Hooks) -> None:
        self.producer = producer
        self.broker = broker
        self.hooks = hooks

    async def finished(self, message: Message, result: Any) -> None:
        """Called after a member's task returned, before its ack; safe to repeat. Raises
        WorkflowError (or EnqueueError) when the result cannot be carried on."""
        meta = meta_of(message)
        if is_last_step(message):
            return  # its ack stores the result
        ttl_ms = int(self.producer.settings.workflow_ttl_s * 1000)

        async def join(frame: Frame, member_json: bytes) -> Joined:
            reply = await self.broker.join(
                frame["queue"], frame["join"], frame["index"], member_json, meta.id
            )
            if reply[0] == b"expired":
                raise WorkflowError(
                    f"workflow {meta.kind} {meta.id}: the state of group {frame['join']} is "
                    "gone from Redis (expired after SHOAL_WORKFLOW_TTL, or deleted); the steps "
                    "after it cannot run. Raise SHOAL_WORKFLOW_TTL above the longest a "
                    "workflow may take, and enqueue the workflow again"
                )
            if reply[0] in (b"waiting", b"started"):
                return Joined(False)
            return Joined(True, orjson.loads(reply[1]), [orjson.loads(v) for v in reply[2:]])

        async def start_once(started: Started, guard: str) -> None:
            for group in started.groups:  # before any member can finish and join it
                await self.broker.start_group(group.queue, group.id, group.size, group.then)
            for queue, task_name, batch in batches(started.messages):
                task = self.producer.task_on(task_name, queue)
                key = self.broker.keys(queue).workflow(meta.id)
                once = Guard(key, "once", f"{guard}>{task_name}", "1", ttl_ms)
                await self.producer.send_async(self.broker, task, batch, once, self.hooks)

        try:
            await advance(message, result, join, start_once, self.broker.group_done)
        except EnqueueError as exc:  # the next step's message is refused (too large, …)
            raise WorkflowError(f"workflow {meta.kind} {meta.id}: {exc}") from None

    async def failed(self, message: Message, reason: Reason, error: str) -> None:
        """A member was dead-lettered: the workflow fails with its error, unless the member had
        already fed its next step (a redelivery failing after the first run carried on) or the
        workflow already succeeded. A replayed member that succeeds carries the workflow on."""
        meta = meta_of(message)
        if reason != "workflow_error" and await self._carried_on(meta, message):
            return  # (a workflow_error may strike after the join: every delivery would fail)
        await self.broker.fail_workflow(meta.result_queue, meta.id, failure(message, reason, error))

    async def _carried_on(self, meta: Meta, message: Message) -> bool:
        frames: list[Frame] = message.options[OPTION]["then"]
        if not frames:
            return False  # the last step: a stored success is kept by fail_workflow
        frame = frames[0]
        if "join" in frame:
            return await self.broker.group_fed(frame["queue"], frame["join"], frame["index"])
        for queue, task in first_batches(frame["chain"][0]):  # every batch, or it did not
            if not await self.broker.steps_started(queue, meta.id, [f"{message.id}>{task}"]):
                return False
        return True
