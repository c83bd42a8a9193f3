"""One worker process: fetch leased messages, run them, ack them; at-least-once throughout.

Three loops share the process's event loop:

* fetch: lease as many messages as there is free capacity (never more, so an idle worker
  elsewhere gets the rest), start each one, and sleep on the queue's notify channel when empty;
* acks: flush finished messages in batches, one script call per queue per flush;
* heartbeat: renew the leases of everything held, and the worker's registration.

A message stays *held* (its lease renewed) until its ack has landed in Redis. A Redis outage
pauses fetching and acking with backoff; it never ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import orjson

from shoal import __version__, dlq, workflow
from shoal.app import App
from shoal.broker import MAX_BACKOFF_S, REDIS_ERRORS, AsyncBroker, Finished
from shoal.errors import DecodeError, WorkflowError
from shoal.execution import HardTimeout, run_async, run_sync
from shoal.keys import worker_key, workers_key
from shoal.logs import TaskLogContext, current_task, trace_id_of
from shoal.message import Message
from shoal.middleware import Outcome
from shoal.middleware.hooks import Hooks
from shoal.scheduler import Scheduler
from shoal.signing import BadSignature
from shoal.task import Task

log = logging.getLogger("shoal.worker")


class Worker:
    """Consumes ``queues`` with up to ``concurrency`` tasks at once in this process.

    ``burst=True`` drains the queues (nothing waiting, delayed or in flight anywhere) and
    returns: for tests and scripts."""

    def __init__(
        self,
        app: App,
        queues: list[str] | None = None,
        *,
        concurrency: int = 16,
        burst: bool = False,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.queues = queues or app.queues() or [self.settings.default_queue]
        self.concurrency = max(1, concurrency)
        self.burst = burst
        self.on_tick = on_tick or (lambda: None)
        self.id = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.started_at = time.time()
        self.broker = AsyncBroker(self.settings)
        self.held: dict[str, dict[str, int]] = {q: {} for q in self.queues}
        """queue → id → the delivery this worker holds: its lease, renewed until the verdict."""
        self.acks: dict[str, list[Finished]] = {q: [] for q in self.queues}
        self.queue_defaults: dict[str, dict[str, Any]] = {}
        """Per-queue defaults from Redis (``app.configure_queue``), refreshed each heartbeat."""
        self._merged: dict[tuple[str, str], dict[str, Any]] = {}
        self.replace_requested = False
        """Set after a hard timeout: the process must exit and be replaced to free the slot."""
        self.busy = 0
        self.processed = 0
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._capacity = asyncio.Event()
        self._ack_ready = asyncio.Event()
        self._ack_lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._running: set[asyncio.Future[None]] = set()
        self._rr = 0
        self.hooks = app.hooks
        """The hooks of the middleware active in this process (set again once booted)."""
        self.steps = workflow.Steps(app, self.broker, self.hooks)
        """Carries workflow members on (chain, group, chord) before they are acked."""

    # --- lifecycle ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop fetching and drain (call from the loop's thread, e.g. a signal handler)."""
        self._stopping = True
        self._stop_event.set()
        self._capacity.set()

    async def run(self) -> None:
        """Work until stopped (or drained, in burst mode), then hand back what is left."""
        log.info(
            "worker %s: queues %s, concurrency %d, Redis %r",
            self.id,
            ",".join(self.queues),
            self.concurrency,
            self.app,
        )
        self.app.hooks.emit("before_worker_boot", self)
        self.hooks = Hooks([m for m in self.app.middleware if m.active_in_worker()])
        self.steps = workflow.Steps(self.app, self.broker, self.hooks)
        background = [
            asyncio.create_task(self._ack_loop()),
            asyncio.create_task(self._heartbeat_loop()),
        ]
        if not self.burst:  # a burst run drains and exits: ticking schedules is not its job
            scheduler = Scheduler(self.app, self.broker, self.queues)
            background.append(asyncio.create_task(scheduler.run(self._closing)))
        try:
            await self._fetch_loop()
            self.app.hooks.emit("before_worker_shutdown", self)
            await self._drain()
        finally:
            # Let the ack and heartbeat loops finish their current Redis call and return: a
            # call cancelled midway could lose an ack or leave a connection half-read.
            self._closing.set()
            self._ack_ready.set()
            _, late = await asyncio.wait(background, timeout=10)
            for t in late:
                t.cancel()
            await self._deregister()
            await self.broker.close()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
            self.app.hooks.emit("after_worker_shutdown", self)
        log.info("worker %s stopped after %d tasks", self.id, self.processed)

    async def _drain(self) -> None:
        """Let running tasks finish within the grace period, then hand back the rest."""
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while self.busy and time.monotonic() < deadline:
            self._capacity.clear()
            try:
                await asyncio.wait_for(self._capacity.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        for running in list(self._running):  # past the grace period: stop waiting for them
            running.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self._flush_acks_until(deadline + 5)
        for queue, held in self.held.items():
            acked = {finished[0] for finished in self.acks[queue]}
            unfinished = [(mid, d) for mid, d in held.items() if mid not in acked]
            if unfinished:
                n = await self._retrying(
                    partial(self.broker.handback, queue, unfinished), attempts=5
                )
                log.warning(
                    "worker %s: handed back %s unfinished message(s) on %s", self.id, n, queue
                )

    async def _internal_error(
        self, queue: str, message_id: str, data: bytes, exc: Exception
    ) -> None:
        """A message whose handling failed outside its task (a malformed option, a middleware
        bug) goes to the DLQ as ``internal_error``; it must not stay held, renewed for ever."""
        log.exception("worker %s: internal error handling %s", self.id, message_id)
        try:
            await self._dead_letter(queue, message_id, None, None, "internal_error", exc, data)
        except Exception:
            log.exception(
                "worker %s: could not dead-letter %s either; its lease will lapse",
                self.id,
                message_id,
            )
            self.held[queue].pop(message_id, None)  # stop renewing: it is redelivered later

    # --- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        pubsub = self.broker.redis.pubsub()
        subscribed = False
        backoff = 0.1
        while not self._stopping:
            self.on_tick()
            free = self.concurrency - self.busy
            if free <= 0:
                self._capacity.clear()
                if self.concurrency - self.busy <= 0 and not self._stopping:
                    await self._capacity.wait()
                continue
            try:
                if not subscribed:
                    # (Re)connected: renew what we hold before any fetch, which would otherwise
                    # reclaim our own leases if the outage outlasted them.
                    for q, held in self.held.items():
                        await self.broker.renew(q, list(held.items()))
                    await pubsub.subscribe(*(self.broker.keys(q).notify for q in self.queues))
                    subscribed = True
                started, wait_s = await self._fetch(free)
                backoff = 0.1
            except REDIS_ERRORS as exc:
                log.warning(
                    "worker %s: Redis unavailable (%s); retrying in %.1fs", self.id, exc, backoff
                )
                subscribed = False
                await self._sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                continue
            if started:
                continue
            if self.burst and await self._drained():
                break
            await self._wait_for_work(pubsub, wait_s)
        with contextlib.suppress(*REDIS_ERRORS):
            await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _fetch(self, free: int) -> tuple[int, float]:
        """Lease up to ``free`` messages across the queues, round robin; start them."""
        started = 0
        wait_s = self.settings.idle_poll_s
        n = len(self.queues)
        self._rr = (self._rr + 1) % n
        for i in range(n):
            queue = self.queues[(self._rr + i) % n]
            fetched = await self.broker.fetch(queue, free - started)
            if fetched.next_due_ms >= 0:
                wait_s = min(wait_s, max(0.001, (fetched.next_due_ms - fetched.now_ms) / 1000))
            for message_id, body, deliveries in fetched.messages:
                self._start(queue, message_id, body, deliveries)
                started += 1
            if started >= free:
                break
        return started, wait_s

    async def _wait_for_work(self, pubsub: Any, timeout_s: float) -> None:
        """Sleep until a queue is notified, the next delayed message is due, or stop()."""
        getter = asyncio.ensure_future(
            pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        )
        stopper = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait(
                {getter, stopper}, timeout=timeout_s + 0.5, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for fut in (getter, stopper):
                fut.cancel()
            await asyncio.gather(getter, stopper, return_exceptions=True)

    async def _drained(self) -> bool:
        if self.busy or any(self.acks.values()) or any(self.held.values()):
            return False
        for queue in self.queues:
            s = await self.broker.measure(queue)
            if s.waiting or s.delayed or s.in_flight:
                return False
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    # --- executing ------------------------------------------------------------------------------

    def _start(self, queue: str, message_id: str, body: bytes | None, deliveries: int) -> None:
        self.busy += 1
        self.held[queue][message_id] = deliveries
        running = asyncio.ensure_future(self._process(queue, message_id, body, deliveries))
        self._running.add(running)  # the loop keeps only weak references to tasks
        running.add_done_callback(self._running.discard)

    async def _process(
        self, queue: str, message_id: str, body: bytes | None, deliveries: int
    ) -> None:
        try:
            # A malformed waiting entry comes back as its own id, with no body: judge the entry.
            data = body if body is not None else message_id.encode()
            message, task, rejection = self._admit(data, deliveries)
            if message is None:  # not even an envelope: no trace to join
                assert rejection is not None
                reason, error = rejection
                await self._dead_letter(
                    queue, message_id, None, None, reason, error, data, stored=body is not None
                )
                return
            current_task.set(
                TaskLogContext(
                    message.id,
                    message.task,
                    queue,
                    message.attempt + 1,
                    trace_id_of(message.headers.get("traceparent")),
                )
            )
            with self.hooks.context("process_context", task, message, queue):
                if rejection is not None or task is None:
                    assert rejection is not None
                    await self._dead_letter(queue, message_id, message, task, *rejection, data)
                    return
                await self._execute(queue, task, message)
        except Exception as exc:
            await self._internal_error(queue, message_id, data, exc)
        finally:
            self.busy -= 1
            self.processed += 1
            self._capacity.set()

    def _admit(
        self, data: bytes, deliveries: int
    ) -> tuple[Message | None, Task[Any, Any] | None, tuple[str, Exception] | None]:
        """Check a fetched message before it runs; a rejection is (DLQ reason, error)."""
        limit = self.settings.max_message_bytes + 64  # room for a signature
        if len(data) > limit:
            too_big = ValueError(f"message is {len(data)} bytes, over the {limit}-byte limit")
            return None, None, ("too_large", too_big)
        try:
            message = Message.decode(self.app.signer.open(data))
        except BadSignature as bad:
            return None, None, ("bad_signature", bad)
        except DecodeError as bad:
            return None, None, ("undecodable", bad)
        task = self.app.tasks.get(message.task)
        if task is None:
            missing = LookupError(f"task {message.task!r} is not defined by this worker's app")
            return message, None, ("unknown_task", missing)
        lost = deliveries - 1 - message.attempt
        if lost > self.settings.max_lost_deliveries:
            gone = RuntimeError(
                f"delivered {deliveries} times; {lost} workers vanished while running it "
                "(killed, OOM, node lost): it may be what kills them"
            )
            return message, task, ("worker_lost", gone)
        return message, task, None

    def _options(self, queue: str, task: Task[Any, Any], message: Message) -> dict[str, Any]:
        """Effective options: the message's, then the task's, then the queue's defaults."""
        key = (queue, task.name)
        merged = self._merged.get(key)
        if merged is None:
            merged = self._merged[key] = {**self.queue_defaults.get(queue, {}), **task.options}
        return {**merged, **message.options} if message.options else merged

    async def _execute(self, queue: str, task: Task[Any, Any], message: Message) -> None:
        hooks = self.hooks
        hooks.emit("before_process", task, message)
        options = self._options(queue, task, message)
        timeout_s = float(options.get("timeout", self.settings.default_timeout_s))
        result: Any = None
        error: BaseException | None = None
        try:
            if task.is_async:
                result = await run_async(task.fn, message.args, message.kwargs, timeout_s)
            else:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="shoal")
                result = await run_sync(
                    self._pool,
                    task.fn,
                    message.args,
                    message.kwargs,
                    timeout_s,
                    self.settings.hard_timeout_grace_s,
                )
            stored = orjson.dumps({"ok": True, "value": result}) if task.store_result else None
        except HardTimeout as exc:
            error = exc
            log.error(
                "task %s %s: %s; this worker process will be replaced", task.name, message.id, exc
            )
            self.replace_requested = True
            self.stop()
        except Exception as exc:
            error = exc
        if error is None and workflow.OPTION in message.options:
            try:  # start what this member feeds (or, the last step, keep the result) before ack
                if workflow.is_last_step(message):
                    stored = workflow.final_result(message, result)
                await self._retrying(lambda: self.steps.finished(message, result))
            except WorkflowError as exc:  # retrying the task would not change its result
                hooks.emit("after_process", task, message, result=result, exception=exc)
                await self._dead_letter(queue, message.id, message, task, "workflow_error", exc)
                return
        hooks.emit("after_process", task, message, result=result, exception=error)
        if error is None:
            self.acks[queue].append((message.id, stored, message.options.get("dedupe_key")))
            self._ack_ready.set()
            return
        outcome = Outcome(error, options)  # a TaskTimeout is retried like any other failure
        hooks.emit("after_failure", task, message, outcome)
        if outcome.retry_in_s is not None:
            delay = outcome.retry_in_s
            if isinstance(error, HardTimeout):  # its thread runs on until this process exits
                delay = max(delay, self.settings.shutdown_grace_s + 5)
            body = self.app.signer.seal(message.next_attempt(last_error=_describe(error)).encode())
            log.warning(
                "task %s %s failed (attempt %d): %s; retrying in %.2fs",
                task.name,
                message.id,
                message.attempt + 1,
                _describe(error),
                delay,
            )
            delivery = self.held[queue][message.id]
            await self._retrying(
                lambda: self.broker.retry(queue, message.id, delay, body, delivery)
            )
            self.held[queue].pop(message.id, None)
            hooks.emit("after_retry", task, message, delay)
            return
        await self._dead_letter(queue, message.id, message, task, outcome.reason, error)

    async def _dead_letter(
        self,
        queue: str,
        message_id: str,
        message: Message | None,
        task: Task[Any, Any] | None,
        reason: str,
        error: BaseException,
        raw: bytes | None = None,
        stored: bool = True,
    ) -> None:
        """Set a message aside with its reason; it never runs again unless replayed."""
        flow = workflow.Meta.of(message) if message else None
        dlq_id = message_id if stored else dlq.dead_letter_id(message_id)  # a bad token: bounded
        entry = dlq.dead_letter_entry(
            dlq_id,
            queue,
            message,
            reason,
            error,
            raw,
            signer=self.app.signer,
            workflow={"id": flow.id, "kind": flow.kind} if flow else None,
        )
        result = None
        if task is not None and task.store_result and flow is None:  # a workflow: see below
            result = orjson.dumps({"ok": False, "error": f"{reason}: {_describe(error)}"})
        log.error(
            "message %s on %s dead-lettered (%s): %s", dlq_id, queue, reason, _describe(error)
        )
        dedupe = message.options.get("dedupe_key") if message else None
        defaults = self.queue_defaults.get(queue, {})
        bounds = (
            int(defaults.get("dlq_max_entries", self.settings.dlq_max_entries)),
            float(defaults.get("dlq_max_age", self.settings.dlq_max_age_s)),
        )
        delivery = self.held[queue].get(message_id) if stored else None
        dead = await self._retrying(
            lambda: self.broker.dead(queue, dlq_id, entry, result, dedupe, bounds, delivery)
        )
        self.held[queue].pop(message_id, None)
        if dead and flow is not None and message is not None:  # the workflow fails with it
            await self._retrying(lambda: self.steps.failed(message, reason, _describe(error)))
        self.hooks.emit("after_dead_letter", queue, message, reason, error)

    # --- acks and heartbeats --------------------------------------------------------------------

    async def _ack_loop(self) -> None:
        while not self._closing.is_set():
            await self._ack_ready.wait()
            self._ack_ready.clear()
            if not await self._flush_acks():
                await asyncio.sleep(0.5)
                self._ack_ready.set()

    async def _flush_acks(self) -> bool:
        """Send every pending ack; on a Redis error keep them pending and report False.

        Serialised by a lock, so whoever flushes next also waits for a flush in flight."""
        async with self._ack_lock:
            return await self._flush_acks_locked()

    async def _flush_acks_locked(self) -> bool:
        ok = True
        for queue, batch in self.acks.items():
            if not batch:
                continue
            self.acks[queue] = []
            try:
                await self.broker.ack(queue, batch)
            except REDIS_ERRORS as exc:
                log.warning(
                    "worker %s: ack of %d message(s) failed (%s); will retry",
                    self.id,
                    len(batch),
                    exc,
                )
                self.acks[queue] = batch + self.acks[queue]
                ok = False
                continue
            held = self.held[queue]
            for message_id, _, _ in batch:
                held.pop(message_id, None)
        return ok

    async def _flush_acks_until(self, deadline: float) -> None:
        """Flush until nothing is pending (an in-flight flush included) or the deadline."""
        while time.monotonic() < deadline:
            if await self._flush_acks() and not any(self.acks.values()):
                return
            await asyncio.sleep(0.2)

    async def _heartbeat_loop(self) -> None:
        prefix = self.settings.key_prefix
        while not self._closing.is_set():
            self.on_tick()
            try:
                for queue, held in self.held.items():
                    await self.broker.renew(queue, list(held.items()))
                await self._refresh_queue_defaults()
                info = orjson.dumps(
                    {
                        "id": self.id,
                        "host": self.settings.instance,
                        "pid": os.getpid(),
                        "queues": self.queues,
                        "in_flight": self.busy,
                        "concurrency": self.concurrency,
                        "processed": self.processed,
                        "started_at": self.started_at,
                        "version": __version__,
                    }
                )
                pipe = self.broker.redis.pipeline(transaction=False)
                ttl_ms = int(self.settings.worker_ttl_s * 1000)
                pipe.set(worker_key(prefix, self.id), info, px=ttl_ms)
                pipe.zadd(workers_key(prefix), {self.id: time.time()})
                await pipe.execute()
            except REDIS_ERRORS as exc:
                log.warning("worker %s: heartbeat failed (%s)", self.id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.settings.heartbeat_s)

    async def _refresh_queue_defaults(self) -> None:
        fresh = {q: await self.broker.queue_defaults(q) for q in self.queues}
        if fresh != self.queue_defaults:
            if self.queue_defaults:
                log.info("worker %s: queue defaults changed: %s", self.id, fresh)
            self.queue_defaults = fresh
            self._merged = {}

    async def _deregister(self) -> None:
        prefix = self.settings.key_prefix
        try:
            await self.broker.redis.delete(worker_key(prefix, self.id))
            await self.broker.redis.zrem(workers_key(prefix), self.id)
        except REDIS_ERRORS:
            pass

    async def _retrying(self, op: Callable[[], Awaitable[Any]], attempts: int = 0) -> Any:
        """Run a Redis operation until it succeeds (or ``attempts`` tries, if > 0), with backoff.

        Giving up is safe: the message is still leased, and returns to waiting when the lease
        lapses."""
        backoff = 0.1
        tries = 0
        while True:
            try:
                return await op()
            except REDIS_ERRORS as exc:
                tries += 1
                if attempts and tries >= attempts:
                    log.error("worker %s: giving up after %d tries (%s)", self.id, tries, exc)
                    return None
                log.warning("worker %s: Redis error (%s); retrying in %.1fs", self.id, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)


def _describe(error: BaseException) -> str:
    return dlq.describe(error)  # bounded: it goes into log lines, envelopes and results
