"""One worker process: fetch leased messages, run them, ack them; at-least-once throughout.

Loops share the process's event loop:

* fetch: lease as many messages as there is free capacity (never more, so an idle worker
  elsewhere gets the rest), start each one, and sleep on the queue's notify channel when empty;
  an async task runs on the loop, a sync task is handed to a waiting slot thread
  (:class:`shoal.execution.SlotThreads`) that runs it, and on success queues its ack itself;
* acks: flush finished messages in batches, one script call per queue per flush;
* heartbeat: renew the leases of everything held, and the worker's registration;
* watch: proves the event loop alive to the supervisor, and stops any task whose lease may have
  ended unrenewed (fencing: see :mod:`shoal.leases`).

A message stays *held* (its lease renewed) until its verdict has landed in Redis, and only the
owner of its current lease may decide it. A Redis outage pauses fetching and acking with
backoff; it never ends the process.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import functools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

import orjson

from shoal import dlq, workflow
from shoal.app import App
from shoal.errors import DecodeError, WorkflowError
from shoal.execution import HardTimeout, SlotThreads, SyncCall, TaskStopped, run_async
from shoal.leases import Lease, Leases
from shoal.logs import TaskLogContext, current_task, trace_id_of
from shoal.message import Message, new_message_id
from shoal.middleware import Outcome
from shoal.middleware.hooks import Hooks
from shoal.protocol import (
    MAX_BACKOFF_S,
    MAX_ID_BYTES,
    REDIS_ERRORS,
    AsyncBroker,
    Finished,
    Held,
    Leased,
)
from shoal.protocol.async_broker import Notifications
from shoal.protocol.registry import MAX_RUNNING_LISTED, RunningTask, WorkerRegistration
from shoal.protocol.results import encode_cancelled, encode_failure, encode_success
from shoal.rate_limit import parse_rate
from shoal.reasons import Reason
from shoal.recycling import Recycled, RecycleLimits, Recycler
from shoal.scheduler import Scheduler
from shoal.signing import BadSignature
from shoal.task import EXPIRES_AT, Task
from shoal.task_progress import ProgressSink
from shoal.task_progress import install as install_progress
from shoal.task_progress import uninstall as uninstall_progress
from shoal.version import __version__
from shoal.workflow_steps import Steps

log = logging.getLogger("shoal.worker")

Admitted = tuple[Message | None, Task[Any, Any] | None, tuple[Reason, Exception] | None]
"""What :meth:`Worker._admit` found: the message, its task, and a rejection (DLQ reason, error)."""


class Worker:
    """Consumes ``queues`` with up to ``concurrency`` tasks at once in this process.

    ``burst=True`` drains the queues (nothing waiting, delayed or in flight anywhere) and
    returns: for tests and scripts. ``on_tick`` is called at every heartbeat, ``on_booted``
    once booted (the middleware set up, the loops made), just before the first fetch."""

    recycled: Recycled | None = None
    """Set when this process reached a recycling limit (``recycle=``): it drains, to be
    replaced by the supervisor."""

    def __init__(
        self,
        app: App,
        queues: list[str] | None = None,
        *,
        concurrency: int = 16,
        burst: bool = False,
        on_tick: Callable[[], None] | None = None,
        recycle: RecycleLimits | None = None,
        on_booted: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.settings = app.settings
        self.queues = queues or app.queues() or [self.settings.default_queue]
        self.concurrency = max(1, concurrency)
        self.burst = burst
        self.on_tick, self.on_booted = on_tick or _nothing, on_booted or _nothing
        self.id = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"
        self.started_at = time.time()
        self.broker = AsyncBroker(self.settings)
        self.leases = Leases(self.queues, self.settings.lease_s)
        """What this worker holds: per queue, each message's lease, renewed until the verdict."""
        self.acks: dict[str, list[Finished]] = {q: [] for q in self.queues}
        self._fenced: dict[str, list[Held]] = {}
        """Leases whose tasks were stopped because they could not be renewed: handed back (if
        still this worker's) once Redis answers again."""
        self.queue_defaults: dict[str, dict[str, Any]] = {}
        """Per-queue defaults from Redis (``app.configure_queue``), refreshed each heartbeat."""
        self._merged: dict[tuple[str, str], dict[str, Any]] = {}
        self.replace_requested = False
        """Set after a hard timeout: the process must exit and be replaced to free the slot."""
        self.busy = 0
        """Messages this worker leased and has not finished: running, or ready to run."""
        self.running = 0
        """Of those, the ones started (at most ``concurrency``)."""
        self.in_slots = 0
        """Of the started, the sync ones handed to slot threads and not yet counted back."""
        self.processed, self.recycler = 0, Recycler(recycle) if recycle else None
        self._ready: collections.deque[tuple[str, Leased, Lease | None]] = collections.deque()
        """Leased ahead, waiting for a free slot (see _lease_ahead)."""
        self._avg_run_s = math.inf
        """Moving average of how long tasks here run: short ones are leased ahead."""
        self._stopping = self._grace_over = False
        self._stop_event = asyncio.Event()
        self._capacity = asyncio.Event()
        self._ack_ready = asyncio.Event()
        self._ack_lock = asyncio.Lock()
        self._closing = asyncio.Event()
        self._slots: SlotThreads | None = None
        """Threads for sync task code, started with the first sync task."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acks_lock = threading.Lock()
        """Slot threads queue acks too: appends and the flush's swap must not interleave."""
        self._finished_lock = threading.Lock()
        self._finished_in_slots, self._wake_pending = 0, False
        """Sync tasks done in slot threads, not yet counted by the loop, and whether the loop
        has been asked to count them (see _slot_finished)."""
        self._running: set[asyncio.Future[None]] = set()
        self._rr = 0
        self.hooks = app.hooks
        """The hooks of the middleware active in this process (set again once booted)."""
        self.steps = Steps(app.producer, self.broker, self.hooks)
        """Carries workflow members on (chain, group, chord) before they are acked."""

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Asked to stop (a signal, a recycle, an orphaned process): draining, or done."""
        return self._stopping

    def stop(self) -> None:
        """Stop fetching and drain (call from the loop's thread, e.g. a signal handler)."""
        self._stopping = True
        self._stop_event.set()
        self._capacity.set()

    async def run(self) -> None:
        """Work until stopped (or drained, in burst mode), then hand back what is left."""
        self._loop = asyncio.get_running_loop()
        log.info(
            "worker %s: queues %s, concurrency %d, Redis %r",
            self.id,
            ",".join(self.queues),
            self.concurrency,
            self.app,
        )
        self.app.hooks.emit("before_worker_boot", self)
        sink = ProgressSink(self._loop, self.broker.report_progress)
        install_progress(sink)
        self.hooks = Hooks([m for m in self.app.middleware if m.active_in_worker()])
        self.steps = Steps(self.app.producer, self.broker, self.hooks)
        background = [
            asyncio.create_task(self._ack_loop()),
            asyncio.create_task(self._heartbeat_loop()),
            asyncio.create_task(self._watch_loop()),
        ]
        if not self.burst:  # a burst run drains and exits: ticking schedules is not its job
            scheduler = Scheduler(
                self.app.producer, self.app.schedules.values(), self.broker, self.queues
            )
            background.append(asyncio.create_task(scheduler.run(self._closing)))
        try:
            self.on_booted()
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
            uninstall_progress(sink)
            await self.broker.close()
            if self._slots is not None:
                self._slots.close()
            self.app.hooks.emit("after_worker_shutdown", self)
        log.info("worker %s stopped after %d tasks", self.id, self.processed)

    async def _drain(self) -> None:
        """Let running tasks finish within the grace period, then hand back the rest."""
        deadline = time.monotonic() + self.settings.shutdown_grace_s
        while self.busy and time.monotonic() < deadline:  # what is ready starts, too
            self._capacity.clear()
            try:
                await asyncio.wait_for(self._capacity.wait(), deadline - time.monotonic())
            except TimeoutError:
                break
        self._grace_over = True  # what is still only ready is handed back
        for task in self.leases.running():  # past the grace period: stop them
            task.cancel()
        # Verdicts on their way (fenced in Redis), in slot threads or on the loop, get a little
        # longer; a slot thread's stopped task is counted done when it has let go of it.
        late = deadline + 5
        while self.in_slots and time.monotonic() < late:
            self._capacity.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._capacity.wait(), late - time.monotonic())
        if self._running:
            left = max(0.1, late - time.monotonic())
            await asyncio.wait(set(self._running), timeout=left)
        for running in list(self._running):
            running.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self._flush_acks_until(deadline + 5)
        for queue in self.queues:
            with self._acks_lock:
                acked = {finished[0] for finished in self.acks[queue]}
            unfinished = [(mid, o) for mid, o in self.leases.held(queue) if mid not in acked]
            unfinished += self._fenced.pop(queue, [])
            if unfinished:
                n = await self._retrying(
                    partial(self.broker.handback, queue, unfinished), attempts=5
                )
                log.warning(
                    "worker %s: handed back %s unfinished message(s) on %s", self.id, n, queue
                )
        # A slot that finished after the last flush was left out of the handback: its ack lands
        # now (else its lease would lapse and the task run again).
        await self._flush_acks_until(time.monotonic() + 5)

    async def _internal_error(
        self, queue: str, message_id: str, data: bytes, exc: Exception, lease: Lease
    ) -> None:
        """A message whose handling failed outside its task (a malformed option, a middleware
        bug) goes to the DLQ as ``internal_error``; it must not stay held, renewed for ever."""
        log.exception("worker %s: internal error handling %s", self.id, message_id)
        lease.deciding = True
        try:
            await self._dead_letter(
                queue, message_id, None, None, "internal_error", exc, data, owner=lease.owner
            )
        except Exception:
            log.exception(
                "worker %s: could not dead-letter %s either; its lease will lapse",
                self.id,
                message_id,
            )
            # stop renewing: it is redelivered later
            self.leases.release(queue, message_id, lease.owner)

    # --- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        notifications = self.broker.notifications(self.queues)
        subscribed = False
        backoff = 0.1
        while not self._stopping:
            free = self.concurrency + self._lease_ahead() - self.busy
            if free <= 0:
                self._capacity.clear()
                if self.concurrency + self._lease_ahead() - self.busy <= 0 and not self._stopping:
                    await self._capacity.wait()
                continue
            try:
                if not subscribed:
                    # (Re)connected: renew what we hold before any fetch, which would otherwise
                    # reclaim our own leases if the outage outlasted them.
                    for q in self.queues:
                        await self._renew(q)
                    await notifications.subscribe()
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
            if not await self._wait_for_work(notifications, wait_s):
                subscribed = False  # the channel's node is gone: subscribe anew, elsewhere
        with contextlib.suppress(*REDIS_ERRORS):
            await notifications.close()

    async def _fetch(self, free: int) -> tuple[int, float]:
        """Lease up to ``free`` messages across the queues, round robin; start them."""
        started = 0
        wait_s = self.settings.idle_poll_s
        n = len(self.queues)
        self._rr = (self._rr + 1) % n
        for i in range(n):
            queue = self.queues[(self._rr + i) % n]
            sent_at = time.monotonic()
            fetched = await self.broker.fetch(queue, free - started)
            if fetched.next_due_ms >= 0:
                wait_s = min(wait_s, max(0.001, (fetched.next_due_ms - fetched.now_ms) / 1000))
            for leased in fetched.messages:
                self._start(queue, leased, sent_at, leased.id in fetched.cancelled)
                started += 1
            if started >= free:
                break
        return started, wait_s

    async def _wait_for_work(self, notifications: Notifications, timeout_s: float) -> bool:
        """Sleep until a queue is notified, the next delayed message is due, or stop().

        False when the notify channel failed (its node died, a failover): then this sleeps the
        whole ``timeout_s`` instead, as a poll, so a broken channel never spins the loop."""
        getter = asyncio.ensure_future(notifications.wait(timeout_s))
        stopper = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait(
                {getter, stopper}, timeout=timeout_s + 0.5, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for fut in (getter, stopper):
                fut.cancel()
            outcomes = await asyncio.gather(getter, stopper, return_exceptions=True)
        if isinstance(outcomes[0], REDIS_ERRORS):
            await self._sleep(timeout_s)
            return False
        return True

    async def _drained(self) -> bool:
        if self.busy or any(self.acks.values()) or self.leases:
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

    def _lease_ahead(self) -> int:
        """How many messages to lease beyond the free slots: as many again as the slots while
        tasks here run under LEASE_AHEAD_UNDER_S on average (fewer round trips to Redis per
        task), none otherwise, so no message waits in this worker behind a long task while
        another worker is idle."""
        return self.concurrency if self._avg_run_s < LEASE_AHEAD_UNDER_S else 0

    def _ran_for(self, seconds: float) -> None:
        """Record one task's run time (from any thread: a lost update only blurs the mean)."""
        avg = self._avg_run_s
        self._avg_run_s = seconds if avg == math.inf else avg + (seconds - avg) * 0.1

    def _start(self, queue: str, leased: Leased, sent_at: float, cancelled: bool = False) -> None:
        """Hold a fetched message; it starts as soon as a slot is free (one whose cancel was
        asked while an earlier delivery ran is finished as cancelled instead)."""
        self.busy += 1
        lease = None
        if leased.body is not None and leased.key is None:  # (poison holds no lease of its own)
            lease = self.leases.take(queue, leased.id, leased.owner, sent_at)
            lease.cancel_requested = cancelled
        self._ready.append((queue, leased, lease))
        self._start_ready()

    def _start_ready(self) -> None:
        if self.recycled is not None:  # being replaced: what waits here goes back at once
            self._hand_back_ready()
            return
        while self._ready and self.running < self.concurrency and not self._grace_over:
            queue, leased, lease = self._ready.popleft()
            if lease is not None and (lease.lost or lease.sure_until <= time.monotonic()):
                self._never_start(queue, leased.id, lease)
                continue
            self.running += 1
            self._launch(queue, leased, lease)

    def _never_start(self, queue: str, message_id: str, lease: Lease) -> None:
        """A leased-ahead message whose lease was lost while it waited here, or may have been
        (not renewed in time): another delivery may run it, so this one never starts. One that
        may still be ours is handed back once Redis answers."""
        self.busy -= 1
        self.leases.release(queue, message_id, lease.owner)
        if not lease.lost:
            self.leases.lost += 1
            self._fenced.setdefault(queue, []).append((message_id, lease.owner))
        log.warning(
            "worker %s: %s on %s not started: its lease %s while it waited for a slot",
            self.id,
            message_id,
            queue,
            "was lost" if lease.lost else "could not be renewed in time",
        )
        self._capacity.set()

    def _finished(self, count: int) -> None:
        """``count`` started messages are done (verdict queued or landed): free their slots."""
        self.running -= count
        self.busy -= count
        self.processed += count
        if self.recycler is not None and self.recycled is None and not self._stopping:
            self._recycle_if_due()
        self._capacity.set()
        self._start_ready()

    def _launch(self, queue: str, leased: Leased, lease: Lease | None) -> None:
        if lease is None or leased.body is None:  # poison, not a message to run
            self._keep(asyncio.ensure_future(self._reject_unreadable(queue, leased)))
            return
        try:
            admitted = self._admit(leased.id, leased.body, leased.deliveries)
        except Exception as exc:  # a bug, not the message's fault: still never held forever
            log.exception("worker %s: internal error admitting %s", self.id, leased.id)
            admitted = None, None, ("internal_error", exc)
        task, rejection = admitted[1], admitted[2]
        if rejection is None and task is not None and "rate_limit" in task.options:
            self._keep(asyncio.ensure_future(self._throttled(queue, leased, lease, admitted)))
            return
        self._run_admitted(queue, leased, lease, admitted)

    def _run_admitted(self, queue: str, leased: Leased, lease: Lease, admitted: Admitted) -> None:
        """Start an admitted message: a sync task in a slot thread, the rest on the loop."""
        assert leased.body is not None
        message, task, rejection = admitted
        if message is not None and task is not None:
            lease.task_name, lease.attempt = task.name, message.attempt + 1
            if lease.cancel_requested and rejection is None:  # asked before it started here
                self._cancelled(queue, task, message, lease, on_loop=True)
                self._finished(1)
                return
            lease.started_at = time.time()
        if rejection is None and task is not None and not task.is_async:
            assert message is not None
            lease.task = self._run_in_slot(queue, task, message, lease, leased.body)
            return
        running = lease.task = asyncio.ensure_future(
            self._process(queue, leased.id, leased.body, lease, admitted)
        )
        self._keep(running)

    def _keep(self, running: asyncio.Future[None]) -> None:
        self._running.add(running)  # the loop keeps only weak references to tasks
        running.add_done_callback(self._running.discard)

    async def _throttled(
        self, queue: str, leased: Leased, lease: Lease, admitted: Admitted
    ) -> None:
        """A message of a rate-limited task starts when the task's clock in Redis allows;
        otherwise Redis has put it back as delayed until the start slot reserved for it: it
        waits there, not in this worker's slot."""
        task = admitted[1]
        assert task is not None
        interval_ms = _interval_ms(task.options["rate_limit"])
        try:
            slot = await self._retrying(
                lambda: self.broker.throttle(queue, task.name, interval_ms, leased.id, lease.owner)
            )
        except Exception as exc:  # Redis gone for good (stopping): its lease lapses, it returns
            log.warning("worker %s: rate check of %s failed (%s)", self.id, leased.id, exc)
            slot = -1
        if slot == 0 and not lease.lost:
            self._run_admitted(queue, leased, lease, admitted)
            return
        self.leases.release(queue, leased.id, lease.owner)
        self.running -= 1  # (not a task processed: it runs later, here or elsewhere)
        self.busy -= 1
        self._capacity.set()
        self._start_ready()

    async def _reject_unreadable(self, queue: str, leased: Leased) -> None:
        """Dead-letter what is not even addressable as a message: a waiting token that is not
        ``<ms>:<id>`` (nothing was leased; no message state is touched, the token may name a
        live message), or a key that is not UTF-8 text (filed under a readable escape)."""
        key = leased.key or leased.id.encode()
        if leased.body is None:  # a bare token: nothing leased, filed under an id of its own
            data, owner, dlq_id = key, None, new_message_id()
            why = DecodeError(data, "waiting entry is not <ready_ms>:<id>")
        else:
            data, owner, dlq_id = leased.body, leased.owner, leased.id
            text = f"printable UTF-8 text of at most {MAX_ID_BYTES} bytes"
            why = DecodeError(key, f"message id {leased.id} is not {text}")
        try:
            await self._dead_letter(
                queue, key, None, None, "undecodable", why, data, owner=owner, dlq_id=dlq_id
            )
        except Exception as exc:  # its lease (if any) lapses; it comes back, and is tried again
            log.exception("worker %s: could not dead-letter poison on %s: %s", self.id, queue, exc)
        finally:
            self._finished(1)

    async def _process(
        self,
        queue: str,
        message_id: str,
        body: bytes,
        lease: Lease,
        admitted: Admitted,
    ) -> None:
        """Handle an admitted message on the loop: an async task, or a rejection."""
        owner = lease.owner
        try:
            message, task, rejection = admitted
            if rejection is not None:
                lease.deciding = True
            if message is None:  # not even an envelope (or not this key's): no trace to join
                assert rejection is not None
                reason, error = rejection
                await self._dead_letter(
                    queue, message_id, None, None, reason, error, body, owner=owner
                )
                return
            current_task.set(_log_context(queue, message))
            with self.hooks.context("process_context", task, message, queue):
                if rejection is not None or task is None:
                    assert rejection is not None
                    await self._dead_letter(
                        queue, message_id, message, task, *rejection, body, owner=owner
                    )
                    return
                await self._execute(queue, task, message, lease)
        except asyncio.CancelledError:
            if not lease.lost:
                raise  # shutting down: the lease is handed back
            self._stopped_lease_lost(queue, message_id, owner)
        except Exception as exc:
            await self._internal_error(queue, message_id, body, exc, lease)
        finally:
            self._finished(1)

    def _admit(self, message_id: str, data: bytes, deliveries: int) -> Admitted:
        """Check a fetched message before it runs; a rejection is (DLQ reason, error).

        A message is only returned when it can be trusted to act on its own behalf (its
        workflow, its dedupe key): a forged or mislabelled envelope comes back as None."""
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
        if message.id != message_id:  # the key is the identity; never act for another message
            mismatch = ValueError(
                f"envelope id {message.id[:80]!r} differs from the key it is stored under"
            )
            return None, None, ("id_mismatch", mismatch)
        if _may_be_too_deep(data) and not _reencodes(message):
            deep = ValueError(
                "arguments are nested deeper than a message may be (255 levels); send flatter data"
            )
            return None, None, ("too_deep", deep)
        task = self.app.tasks.get(message.task)
        if task is None:
            missing = LookupError(f"task {message.task!r} is not defined by this worker's app")
            return message, None, ("unknown_task", missing)
        expires_at = message.options.get(EXPIRES_AT) if message.options else None
        if expires_at is not None and message.attempt == 0 and deliveries == 1:  # never started
            late = _late_by(expires_at)
            if late is None or late > 0:
                why = "an expiry that is not a Unix time" if late is None else f"{late:.3g}s"
                return (
                    message,
                    task,
                    ("expired", TimeoutError(f"not started by its expiry: late by {why}")),
                )
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
        cache = self._merged  # (a slot thread may race the heartbeat's reset: keep one dict)
        merged = cache.get(key)
        if merged is None:
            merged = cache[key] = {**self.queue_defaults.get(queue, {}), **task.options}
        return {**merged, **message.options} if message.options else merged

    async def _execute(
        self, queue: str, task: Task[Any, Any], message: Message, lease: Lease
    ) -> None:
        """Run an async task on the loop, then decide its verdict."""
        hooks = self.hooks
        hooks.emit("before_process", task, message)
        options = self._options(queue, task, message)
        timeout_s = float(options.get("timeout", self.settings.default_timeout_s))
        result: Any = None
        stored: bytes | None = None
        error: BaseException | None = None
        started = time.monotonic()
        try:
            result = await run_async(task.fn, message.args, message.kwargs, timeout_s)
            self._ran_for(time.monotonic() - started)
            stored = encode_success(result) if task.store_result else None
        except asyncio.CancelledError:  # its lease was lost, a cancel, or the grace ended
            if lease.cancel_requested and not lease.lost:
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()
                self._cancelled(queue, task, message, lease, on_loop=True)
                return
            why = "its lease was lost" if lease.lost else "shutdown"
            stopped = TaskStopped(f"stopped by the worker: {why}")
            hooks.emit("after_process", task, message, result=None, exception=stopped)
            raise
        except Exception as exc:
            error = exc
        lease.deciding = True  # from here on only the verdict is left: never stop it midway
        if error is None and workflow.OPTION not in message.options:
            self._succeeded(queue, task, message, result, stored, lease, on_loop=True)
            return
        await self._verdict(queue, task, message, options, result, stored, error, lease)

    def _succeeded(
        self,
        queue: str,
        task: Task[Any, Any],
        message: Message,
        result: Any,
        stored: bytes | None,
        lease: Lease,
        *,
        on_loop: bool,
    ) -> None:
        """The common verdict, from the loop or a slot thread: queue the ack (and result).

        A slot thread's ack is flushed once the loop counts the task done (_slot_finished)."""
        self.hooks.after_success(task, message, result)
        dedupe = message.options.get("dedupe_key")
        with self._acks_lock:
            self.acks[queue].append((message.id, lease.owner, stored, dedupe))
        if on_loop:
            self._ack_ready.set()

    def _cancelled(
        self, queue: str, task: Task[Any, Any], message: Message, lease: Lease, *, on_loop: bool
    ) -> None:
        """A cancel was asked while this worker held the message: finished, never retried, its
        result says cancelled (stored whatever ``store_result`` says: a handle waits on it)."""
        lease.deciding = True
        stopped = TaskStopped("cancelled (handle.cancel() or shoal task cancel)")
        self.hooks.emit("after_process", task, message, result=None, exception=stopped)
        log.info("task %s %s on %s cancelled", task.name, message.id, queue)
        result = encode_cancelled("while it ran" if lease.started_at else "before it ran")
        dedupe = message.options.get("dedupe_key")
        with self._acks_lock:
            self.acks[queue].append((message.id, lease.owner, result, dedupe))
        if on_loop:
            self._ack_ready.set()

    async def _verdict(
        self,
        queue: str,
        task: Task[Any, Any],
        message: Message,
        options: dict[str, Any],
        result: Any,
        stored: bytes | None,
        error: BaseException | None,
        lease: Lease,
    ) -> None:
        """Every verdict but a plain success: start what a workflow member feeds, retry, or
        dead-letter. Runs on the loop (Redis calls), inside the message's process context."""
        hooks = self.hooks
        if error is None and workflow.OPTION in message.options:
            try:  # start what this member feeds (or, the last step, keep the result) before ack
                if workflow.is_last_step(message):
                    stored = workflow.final_result(message, result)
                await self._retrying(lambda: self.steps.finished(message, result))
            except WorkflowError as exc:  # retrying the task would not change its result
                hooks.emit("after_process", task, message, result=result, exception=exc)
                await self._dead_letter(
                    queue, message.id, message, task, "workflow_error", exc, owner=lease.owner
                )
                return
        if error is None:
            self._succeeded(queue, task, message, result, stored, lease, on_loop=True)
            return
        if lease.cancel_requested and not isinstance(error, HardTimeout):
            self._cancelled(queue, task, message, lease, on_loop=True)  # not a failure to retry
            return
        if isinstance(error, HardTimeout):
            log.error(
                "task %s %s: %s; this worker process will be replaced", task.name, message.id, error
            )
            self.replace_requested = True
            self.stop()
        hooks.emit("after_process", task, message, result=result, exception=error)
        await self._failed(queue, task, message, options, error, lease.owner)

    # --- sync tasks in slot threads -------------------------------------------------------------

    def _run_in_slot(
        self, queue: str, task: Task[Any, Any], message: Message, lease: Lease, body: bytes
    ) -> _SlotJob:
        """Hand a sync task to a slot thread (started with the first one)."""
        if self._slots is None:
            self._slots = SlotThreads(
                self.concurrency, self.settings.hard_timeout_grace_s, self._abandoned
            )
        job = _SlotJob(queue, task, message, lease, body)
        self.in_slots += 1
        self._slots.submit(partial(self._slot_job, job))
        return job

    def _slot_job(self, job: _SlotJob) -> None:
        """In a slot thread: run the task and, when it succeeded, queue its ack; any other
        verdict is decided on the loop while this thread waits (inside the process span)."""
        queue, task, message, lease = job.queue, job.task, job.message, job.lease
        try:
            current_task.set(_log_context(queue, message))
            with self.hooks.context("process_context", task, message, queue):
                self._slot_execute(job)
        except Exception as exc:  # a middleware or encoding bug: the message must not stay held
            if not job.abandoned:
                self._on_loop(self._internal_error(queue, message.id, job.body, exc, lease))
        finally:
            if not job.abandoned:  # an abandoned job is counted by the loop that decided it
                self._slot_finished()

    def _slot_execute(self, job: _SlotJob) -> None:
        queue, task, message, lease = job.queue, job.task, job.message, job.lease
        hooks = self.hooks
        hooks.emit("before_process", task, message)
        options = job.options = self._options(queue, task, message)
        timeout_s = float(options.get("timeout", self.settings.default_timeout_s))
        result: Any = None
        stored: bytes | None = None
        error: BaseException | None = None
        job.context = contextvars.copy_context()  # for a verdict decided by the timekeeper
        assert self._slots is not None
        started = time.monotonic()
        try:
            result = self._slots.run(job, timeout_s)
            self._ran_for(time.monotonic() - started)
            stored = encode_success(result) if task.store_result else None
        except TaskStopped as exc:
            if job.abandoned:
                return
            if not job.stopped_by_worker:
                error = exc  # the task's own TaskStopped: a failure like any other
            elif lease.cancel_requested and not lease.lost:
                self._cancelled(queue, task, message, lease, on_loop=False)
                return
            else:
                why = "its lease was lost" if lease.lost else "shutdown"
                stopped = TaskStopped(f"stopped by the worker: {why}")
                hooks.emit("after_process", task, message, result=None, exception=stopped)
                if lease.lost:
                    self._on_loop(self._stopped_lease_lost_async(queue, message.id, lease.owner))
                return  # shutting down: the lease is handed back
        except BaseException as exc:  # SystemExit from a task's code too: its failure, not ours
            error = exc
        if job.abandoned:
            return
        lease.deciding = True  # from here on only the verdict is left: never stop it midway
        if error is None and workflow.OPTION not in message.options:
            self._succeeded(queue, task, message, result, stored, lease, on_loop=False)
            return
        self._on_loop(self._verdict(queue, task, message, options, result, stored, error, lease))

    def _on_loop(self, coro: Coroutine[Any, Any, None]) -> None:
        """From a slot thread: run ``coro`` on the loop, in this thread's context (the
        process span), and wait. If the loop is gone (shut down past the grace period), the
        message's lease lapses and it comes back."""
        assert self._loop is not None
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:
            coro.close()
            return
        with contextlib.suppress(concurrent.futures.CancelledError):
            future.result()

    def _slot_finished(self) -> None:
        """From a slot thread: count a task done; the loop is woken once for any number."""
        with self._finished_lock:
            self._finished_in_slots += 1
            if self._wake_pending:
                return
            self._wake_pending = True
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody counts any more
            self._loop.call_soon_threadsafe(self._count_slot_finished)

    def _count_slot_finished(self) -> None:
        with self._finished_lock:
            done, self._finished_in_slots = self._finished_in_slots, 0
            self._wake_pending = False
        self.in_slots -= done
        self._finished(done)
        self._ack_ready.set()

    def _abandoned(self, call: SyncCall) -> None:
        """From the timekeeper: a sync task ignored its soft timeout for the grace period."""
        job = call
        assert isinstance(job, _SlotJob) and self._loop is not None
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._decide_abandoned, job)

    def _decide_abandoned(self, job: _SlotJob) -> None:
        error = HardTimeout(
            f"sync task ignored its {job.timeout_s:g}s soft timeout for "
            f"{self.settings.hard_timeout_grace_s:g}s more (blocked in C code?); "
            "abandoning its thread"
        )
        job.lease.deciding = True
        self.in_slots -= 1  # its thread is lost; the loop decides and counts it
        verdict = self._verdict(
            job.queue, job.task, job.message, job.options, None, None, error, job.lease
        )

        async def decide() -> None:
            try:
                await verdict
            except Exception as exc:
                await self._internal_error(job.queue, job.message.id, job.body, exc, job.lease)
            finally:
                self._finished(1)

        running = asyncio.get_running_loop().create_task(decide(), context=job.context)
        self._running.add(running)
        running.add_done_callback(self._running.discard)

    def _stopped_lease_lost(self, queue: str, message_id: str, owner: int) -> None:
        self.leases.release(queue, message_id, owner)
        log.warning(
            "worker %s: stopped %s on %s: its lease was lost (not renewed in time, or "
            "re-delivered); it is not acked and will run again elsewhere",
            self.id,
            message_id,
            queue,
        )

    async def _stopped_lease_lost_async(self, queue: str, message_id: str, owner: int) -> None:
        self._stopped_lease_lost(queue, message_id, owner)

    async def _failed(
        self,
        queue: str,
        task: Task[Any, Any],
        message: Message,
        options: dict[str, Any],
        error: BaseException,
        owner: int,
    ) -> None:
        """Retry a failed execution or dead-letter it, as the middleware decide."""
        hooks = self.hooks
        outcome = Outcome(error, options)  # a TaskTimeout is retried like any other failure
        if isinstance(error, TypeError) and not task.accepts(message.args, message.kwargs):
            outcome.reason = "bad_arguments"  # the call itself failed: retrying cannot help
        hooks.emit("after_failure", task, message, outcome)
        if outcome.retry_in_s is not None:
            delay = outcome.retry_in_s
            if isinstance(error, HardTimeout):  # its thread runs on until this process exits
                delay = max(delay, self.settings.shutdown_grace_s + 5)
            body = self.app.signer.seal(
                message.next_attempt(last_error=dlq.describe(error)).encode()
            )
            log.warning(
                "task %s %s failed (attempt %d): %s; retrying in %.2fs",
                task.name,
                message.id,
                message.attempt + 1,
                dlq.describe(error),
                delay,
            )
            retried = await self._retrying(
                lambda: self.broker.retry(queue, message.id, delay, body, owner)
            )
            self.leases.release(queue, message.id, owner)
            if not retried:
                self._lost_before_verdict(queue, message.id, "retry")
                return
            hooks.emit("after_retry", task, message, delay)
            return
        await self._dead_letter(
            queue, message.id, message, task, outcome.reason, error, owner=owner
        )

    async def _dead_letter(
        self,
        queue: str,
        message_id: str | bytes,
        message: Message | None,
        task: Task[Any, Any] | None,
        reason: Reason,
        error: BaseException,
        raw: bytes | None = None,
        *,
        owner: int | None,
        dlq_id: str | None = None,
    ) -> None:
        """Set a message aside with its reason; it never runs again unless replayed.

        ``owner``: this worker's owner token of the message's lease; None for a malformed
        waiting token (no message state is touched; the entry is filed under ``dlq_id``).
        ``message_id`` is bytes for a key that is not text, filed under ``dlq_id`` too."""
        flow = workflow.Meta.of(message) if message else None
        shown_id = dlq_id or str(message_id)
        entry = dlq.dead_letter_entry(
            shown_id,
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
            result = encode_failure(f"{reason}: {dlq.describe(error)}")
        log.error(
            "message %s on %s dead-lettered (%s): %s", shown_id, queue, reason, dlq.describe(error)
        )
        dedupe = message.options.get("dedupe_key") if message else None
        defaults = self.queue_defaults.get(queue, {})
        bounds = (
            int(defaults.get("dlq_max_entries", self.settings.dlq_max_entries)),
            float(defaults.get("dlq_max_age", self.settings.dlq_max_age_s)),
        )
        dead = await self._retrying(
            lambda: self.broker.dead(
                queue, message_id, entry, result, dedupe, bounds, owner, dlq_id
            )
        )
        if owner is not None:
            self.leases.release(queue, shown_id, owner)
        if not dead and owner is not None:
            self._lost_before_verdict(queue, shown_id, "dead-letter")
            return
        if dead and flow is not None and message is not None:  # the workflow fails with it
            await self._retrying(lambda: self.steps.failed(message, reason, dlq.describe(error)))
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
        for queue in self.queues:
            with self._acks_lock:
                batch, self.acks[queue] = self.acks[queue], []
            if not batch:
                continue
            try:
                _, refused = await self.broker.ack(queue, batch)
            except REDIS_ERRORS as exc:
                log.warning(
                    "worker %s: ack of %d message(s) failed (%s); will retry",
                    self.id,
                    len(batch),
                    exc,
                )
                with self._acks_lock:
                    self.acks[queue] = batch + self.acks[queue]
                ok = False
                continue
            for finished in batch:
                self.leases.release(queue, finished[0], finished[1])
            for message_id in refused:
                self._lost_before_verdict(queue, message_id, "ack")
        return ok

    async def _flush_acks_until(self, deadline: float) -> None:
        """Flush until nothing is pending (an in-flight flush included) or the deadline."""
        while time.monotonic() < deadline:
            if await self._flush_acks() and not any(self.acks.values()):
                return
            await asyncio.sleep(0.2)

    async def _heartbeat_loop(self) -> None:
        while not self._closing.is_set():
            try:
                for queue in self.queues:
                    await self._renew(queue)
                await self._refresh_queue_defaults()
                info = WorkerRegistration(
                    id=self.id,
                    host=self.settings.instance,
                    pid=os.getpid(),
                    queues=tuple(self.queues),
                    in_flight=self.busy,
                    concurrency=self.concurrency,
                    processed=self.processed,
                    leases_lost=self.leases.lost,
                    started_at=self.started_at,
                    version=__version__,
                    running=self._running_now(),
                )
                await self.broker.register_worker(info, self.settings.worker_ttl_s)
            except REDIS_ERRORS as exc:
                log.warning("worker %s: heartbeat failed (%s)", self.id, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.settings.heartbeat_s)

    def _running_now(self) -> tuple[RunningTask, ...]:
        """What runs here now, for the registration (the dashboard, ``shoal task status``)."""
        started = self.leases.started()[:MAX_RUNNING_LISTED]
        return tuple(
            RunningTask(queue, mid, lease.task_name, lease.attempt, lease.started_at)
            for queue, mid, lease in started
        )

    async def _renew(self, queue: str) -> None:
        """Renew every lease held on ``queue``; stop the tasks whose lease is gone."""
        fenced = self._fenced.pop(queue, [])
        if fenced:  # stopped here while Redis was away: give back what is still ours
            await self.broker.handback(queue, fenced)
        held = self.leases.held(queue)
        if not held:
            return
        sent_at = time.monotonic()
        renewed = await self.broker.renew(queue, held)
        self.leases.renewed(queue, held, sent_at)
        owners = dict(held)
        for message_id in renewed.lost:
            self._lose(queue, message_id, owners[message_id], "another delivery owns it now")
        for message_id in renewed.cancelled:
            self._cancel(queue, message_id, owners[message_id])

    def _cancel(self, queue: str, message_id: str, owner: int) -> None:
        """A cancel was asked of a message this worker holds: stop its task (an async one is
        cancelled, a sync one gets TaskStopped in its thread); one waiting for a slot here is
        finished as cancelled when its turn comes."""
        lease = self.leases.get(queue, message_id)
        if lease is None or lease.owner != owner or lease.lost or lease.cancel_requested:
            return
        lease.cancel_requested = True
        if lease.task is not None and not lease.deciding and not lease.task.done():
            log.info("worker %s: cancelling %s on %s (asked)", self.id, message_id, queue)
            lease.task.cancel()

    def _lose(self, queue: str, message_id: str, owner: int, why: str) -> None:
        """A lease this worker held is (or may be) another's: stop its task, never decide it.

        A task whose own code has returned is left to finish: its verdict is fenced in Redis.
        When the lease may still be this worker's (it only could not renew), it is handed back
        once Redis answers, so the stop does not count as a lost delivery."""
        lease = self.leases.get(queue, message_id)
        if lease is None or lease.owner != owner or lease.lost or lease.deciding:
            return
        if lease.task is None:  # leased ahead, not started: it never will be (_start_ready)
            lease.lost = True
            self.leases.lost += 1
            return
        if lease.task.done():
            return
        lease.lost = True
        self.leases.lost += 1
        log.warning("worker %s: lease of %s on %s lost (%s)", self.id, message_id, queue, why)
        lease.task.cancel()
        if why == _NOT_RENEWED:
            self._fenced.setdefault(queue, []).append((message_id, owner))

    def _lost_before_verdict(self, queue: str, message_id: str, verdict: str) -> None:
        """Redis refused this worker's verdict: its lease had lapsed and another delivery owns
        the message (or finished it). Nothing changed; that delivery decides."""
        self.leases.lost += 1
        log.warning(
            "worker %s: %s of %s on %s refused: its lease lapsed and another delivery owns it",
            self.id,
            verdict,
            message_id,
            queue,
        )

    async def _watch_loop(self) -> None:
        """Tick for the supervisor's watchdog (this loop runs, whatever Redis does), and stop
        tasks whose lease may have ended before a renewal got through."""
        interval = min(0.25, self.settings.lease_s / 20)
        while not self._closing.is_set():
            self.on_tick()
            for queue, message_id, lease in self.leases.overdue():
                self._lose(queue, message_id, lease.owner, _NOT_RENEWED)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), interval)

    async def _refresh_queue_defaults(self) -> None:
        fresh = {q: await self.broker.queue_defaults(q) for q in self.queues}
        if fresh != self.queue_defaults:
            if self.queue_defaults:
                log.info("worker %s: queue defaults changed: %s", self.id, fresh)
            self.queue_defaults = fresh
            self._merged = {}

    async def _deregister(self) -> None:
        with contextlib.suppress(*REDIS_ERRORS):
            await self.broker.deregister_worker(self.id)

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

    # --- recycling (see shoal.recycling) --------------------------------------------------------

    def _recycle_if_due(self) -> None:
        """After a finished task: past a limit, stop fetching (as on SIGTERM), hand back what
        was leased ahead, and drain. Not in the finished task's context: not its log lines."""
        assert self.recycler is not None
        self.recycled = self.recycler.check(self.processed)
        if self.recycled is not None:
            contextvars.Context().run(self._recycle, self.recycled)

    def _recycle(self, recycled: Recycled) -> None:
        log.info(
            "worker %s: recycling this process %s; letting %d running task(s) finish",
            self.id,
            recycled.describe(),
            self.running,
        )
        self.stop()
        self._hand_back_ready()

    def _hand_back_ready(self) -> None:
        """Messages leased ahead go back to waiting now, to run on another process (or this
        one's replacement) instead of behind this one's drain or its lapsed lease."""
        held: dict[str, list[Held]] = {}
        while self._ready:
            queue, leased, lease = self._ready.popleft()
            if lease is None:  # an unreadable message, not a task: dead-letter it here
                self.running += 1
                self._launch(queue, leased, lease)
                continue
            self.busy -= 1
            self.leases.release(queue, leased.id, lease.owner)
            held.setdefault(queue, []).append((leased.id, lease.owner))
        for queue, back in held.items():
            log.info(
                "worker %s: handing back %d message(s) leased ahead on %s",
                self.id,
                len(back),
                queue,
            )
            handback = partial(self.broker.handback, queue, back)
            running = asyncio.ensure_future(self._retrying(handback, attempts=5))
            self._running.add(running)
            running.add_done_callback(self._running.discard)
        self._capacity.set()


def _nothing() -> None:
    pass


_NOT_RENEWED = "not renewed in time: Redis unreachable or slow"

LEASE_AHEAD_UNDER_S = 0.005
"""Tasks shorter than this on average are leased ahead: a message leased ahead waits about
one task's run time for a slot."""


class _SlotJob(SyncCall):
    """A sync task handed to a slot thread: the call, and what its verdict needs."""

    __slots__ = (
        "body",
        "context",
        "lease",
        "message",
        "options",
        "queue",
        "stopped_by_worker",
        "task",
    )

    def __init__(
        self, queue: str, task: Task[Any, Any], message: Message, lease: Lease, body: bytes
    ) -> None:
        super().__init__(task.fn, message.args, message.kwargs)
        self.queue, self.task, self.message, self.lease, self.body = (
            queue,
            task,
            message,
            lease,
            body,
        )
        self.options: dict[str, Any] = {}
        self.context: contextvars.Context | None = None
        self.stopped_by_worker = False

    def cancel(self) -> None:
        """Stop the task (its lease was lost, or shutdown's grace ended)."""
        self.stopped_by_worker = True
        super().cancel()


def _log_context(queue: str, message: Message) -> TaskLogContext:
    traceparent = message.headers.get("traceparent")
    return TaskLogContext(
        message.id, message.task, queue, message.attempt + 1, trace_id_of(traceparent)
    )


@functools.cache
def _interval_ms(rate_limit: str) -> float:
    """Milliseconds between two starts of a task's (validated) ``rate_limit``."""
    return parse_rate(rate_limit, "rate_limit").interval_ms


def _late_by(expires_at: Any) -> float | None:
    """Seconds past an ``expires_at`` (negative: still in time); None when it is no time."""
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        return None
    return time.time() - expires_at


def _may_be_too_deep(data: bytes) -> bool:
    """Cheap pre-check: can ``data`` nest deeper than the encoder allows? (C-speed counts.)"""
    return data.count(b"[") + data.count(b"{") > _MAX_DEPTH


def _reencodes(message: Message) -> bool:
    """Whether the message can be encoded again (to retry it or file it): the decoder accepts
    nesting up to 1,024 levels, the encoder only 255."""
    try:
        message.encode()
    except orjson.JSONEncodeError:
        return False
    return True


_MAX_DEPTH = 254
