"""Leader election among the operator's replicas on a ``coordination.k8s.io/v1`` Lease.

The rules are client-go's ``leaderelection``: a replica holds the Lease while it renews it every
retry period; a standby takes it over only when it has seen no change of the Lease for the
lease's duration *by its own clock* (``time.monotonic``), never by the ``renewTime`` another node
wrote; every write carries the ``resourceVersion`` it read, so two replicas racing for the Lease
cannot both win (the loser gets a 409). A leader that could not renew for the renew deadline
(shorter than the lease) has lost: it stops before any standby may take over. Its deadline
counts from when the winning request was sent (before the standby can have seen it), and is
watched from a thread of its own, so neither the operator's start-up nor a busy event loop can
stretch it. The wall-clock times written in the Lease are for people reading it, never for
deciding.

:class:`Elector` is the state machine (one attempt at a time, clock injected); :func:`lead`
runs it: wait as a standby, run the operator while leading, release the Lease when the
operator stops, and call ``on_lost`` (which exits the process) when leadership is lost.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
import math
import random
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from kubernetes import client
from kubernetes.client.exceptions import ApiException

log = logging.getLogger("shoal_operator.leader")

JITTER = 1.2
"""A standby waits between 1 and 1.2 retry periods between attempts (client-go's
``JitterFactor``), so standbys started together do not ask in lockstep."""


@dataclass(frozen=True)
class LeaseTiming:
    """client-go's three durations, in seconds (see :class:`OperatorSettings`)."""

    lease_duration_s: float = 15.0
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0

    @property
    def request_timeout_s(self) -> float:
        """Each call to the API: half the renew deadline (at least 1 s), so a slow API server
        still answers in time, and a hung call leaves time for another attempt."""
        return max(1.0, self.renew_deadline_s / 2)


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's ``spec``: who holds it, for how long, and the times written for people."""

    holder: str
    lease_duration_s: float
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0


class LeaseConflict(Exception):
    """Raised when the Lease changed since it was read, or was created meanwhile (HTTP 409)."""


class LeaseStore(Protocol):
    """One Lease in the API: read it, create it, replace it at a resourceVersion."""

    def get(self) -> tuple[LeaseRecord, str] | None:
        """The record and its resourceVersion, or None when there is no Lease."""

    def create(self, record: LeaseRecord) -> str:
        """Create the Lease (:class:`LeaseConflict` if it exists); its resourceVersion."""

    def update(self, record: LeaseRecord, resource_version: str) -> str:
        """Replace it if still at ``resource_version`` (else :class:`LeaseConflict`)."""


def micro_time(when: dt.datetime | None = None) -> str:
    """A Kubernetes ``MicroTime``: RFC 3339 in UTC with microseconds."""
    return (when or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Elector:
    """One replica's view of the Lease. Every method makes blocking API calls: run them in
    a thread (:func:`lead` gives them one of their own). Attempts never overlap (a lock)."""

    def __init__(
        self,
        store: LeaseStore,
        identity: str,
        timing: LeaseTiming,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store, self.identity, self.timing, self.clock = store, identity, timing, clock
        self.observed: LeaseRecord | None = None
        """The record last seen (read or written)."""
        self.observed_at = 0.0
        """When (by :attr:`clock`) the record last changed in our eyes."""
        self.attempted_at: float | None = None
        """When the last attempt ended, whatever its outcome (a standby's liveness)."""
        self.won_at: float | None = None
        """When the last attempt that won (acquired or renewed) started: its requests went out
        after, so a standby saw that write after it too. The renew deadline counts from it."""
        self._lock = threading.Lock()

    @property
    def holder(self) -> str:
        """Who holds the Lease as last seen ("" : nobody, or not seen yet)."""
        return self.observed.holder if self.observed is not None else ""

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this replica holds the Lease now (acquired or renewed)."""
        with self._lock:
            started = self.clock()
            try:
                won = self._attempt()
            finally:
                self.attempted_at = self.clock()
            if won:
                self.won_at = started
            return won

    def _attempt(self) -> bool:
        now_text = micro_time()
        found = self.store.get()
        if found is None:
            record = LeaseRecord(self.identity, self.timing.lease_duration_s, now_text, now_text, 0)
            try:
                self.store.create(record)
            except LeaseConflict:
                return False  # another replica created it first
            self._observe(record)
            return True
        record, resource_version = found
        if record != self.observed:
            self._observe(record)
        if (
            record.holder
            and record.holder != self.identity
            and self.clock() < self.observed_at + record.lease_duration_s
        ):
            return False  # held by another, and it renewed within its duration (our clock)
        mine = record.holder == self.identity
        new = LeaseRecord(
            holder=self.identity,
            lease_duration_s=self.timing.lease_duration_s,
            acquire_time=record.acquire_time if mine else now_text,
            renew_time=now_text,
            transitions=record.transitions if mine else record.transitions + 1,
        )
        try:
            self.store.update(new, resource_version)
        except LeaseConflict:
            return False  # it changed since we read it: someone else won this round
        self._observe(new)
        return True

    def release(self) -> bool:
        """Give the Lease up (holder emptied) if this replica holds it: a standby takes it at
        its next attempt instead of waiting for it to expire. True when released."""
        with self._lock:
            found = self.store.get()
            if found is None or found[0].holder != self.identity:
                return False
            record, resource_version = found
            now_text = micro_time()
            # As client-go: no holder, a one-second duration, the transitions count kept.
            released = LeaseRecord("", 1, now_text, now_text, record.transitions)
            try:
                self.store.update(released, resource_version)
            except LeaseConflict:
                return False
            self._observe(released)
            return True

    def _observe(self, record: LeaseRecord) -> None:
        self.observed, self.observed_at = record, self.clock()


# --- the Lease in the Kubernetes API ---------------------------------------------------------


class KubeLeaseStore:
    """:class:`LeaseStore` over the kubernetes client (its own ApiClient, bounded calls)."""

    def __init__(
        self, api: client.CoordinationV1Api, name: str, namespace: str, timeout_s: float
    ) -> None:
        self.api, self.name, self.namespace, self.timeout_s = api, name, namespace, timeout_s

    def get(self) -> tuple[LeaseRecord, str] | None:
        try:
            lease = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.timeout_s
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        spec = lease.spec or client.V1LeaseSpec()
        record = LeaseRecord(
            holder=spec.holder_identity or "",
            lease_duration_s=float(spec.lease_duration_seconds or 0),
            acquire_time=_text(spec.acquire_time),
            renew_time=_text(spec.renew_time),
            transitions=int(spec.lease_transitions or 0),
        )
        return record, str((lease.metadata or client.V1ObjectMeta()).resource_version)

    def create(self, record: LeaseRecord) -> str:
        body = {"metadata": {"name": self.name}, "spec": _spec(record)}
        return self._call(self.api.create_namespaced_lease, self.namespace, body)

    def update(self, record: LeaseRecord, resource_version: str) -> str:
        body = {
            "metadata": {"name": self.name, "resourceVersion": resource_version},
            "spec": _spec(record),
        }
        return self._call(self.api.replace_namespaced_lease, self.name, self.namespace, body)

    def _call(self, method: Callable[..., Any], *args: Any) -> str:
        try:
            lease = method(*args, _request_timeout=self.timeout_s)
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflict(f"Lease {self.namespace}/{self.name} changed") from None
            raise
        return str(lease.metadata.resource_version)


def _spec(record: LeaseRecord) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "holderIdentity": record.holder,
        # An integer in the API: rounded up, so a standby never waits less than the leader's
        # renew deadline (10.5 with a 10.2 deadline is 11, not 10)
        "leaseDurationSeconds": max(1, math.ceil(record.lease_duration_s)),
        "leaseTransitions": record.transitions,
    }
    if record.acquire_time:
        spec["acquireTime"] = record.acquire_time
    if record.renew_time:
        spec["renewTime"] = record.renew_time
    return spec


def _text(when: dt.datetime | str | None) -> str:
    if when is None:
        return ""
    return micro_time(when) if isinstance(when, dt.datetime) else str(when)


# --- running it ------------------------------------------------------------------------------


class Campaign:
    """Runs an :class:`Elector`'s attempts in a thread of their own, so the operator's own
    blocking work (which fills the loop's default executor) never delays a renewal, and keeps
    the Lease from another thread, so a busy event loop (kopf starting up on a slow CPU) never
    delays a renewal nor the stop at the renew deadline."""

    def __init__(self, elector: Elector) -> None:
        self.elector = elector
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shoal-lease")
        self._keeper = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shoal-keep")
        self._pending: concurrent.futures.Future[bool] | None = None
        self._last_error = ""

    def _submit(self) -> concurrent.futures.Future[bool]:
        """The attempt under way, or a new one: an attempt still hung on the API when the next
        is due is waited for, not queued behind."""
        if self._pending is None or self._pending.done():
            self._pending = self._pool.submit(self.elector.try_acquire_or_renew)
        return self._pending

    def _failed(self, exc: BaseException, timeout_s: float) -> bool:
        if isinstance(exc, TimeoutError):
            error = f"no answer within {timeout_s:.3g}s"
        else:
            error = f"{type(exc).__name__}: {exc}".strip()
        if error != self._last_error:
            log.warning("cannot reach Lease %s: %s", self.lease, error.splitlines()[0])
        self._last_error = error
        return False

    def _won(self, won: bool) -> bool:
        self._last_error = ""
        return won

    async def attempt(self, timeout_s: float) -> bool:
        """One attempt, False when it failed or took longer than ``timeout_s``."""
        try:
            won = await asyncio.wait_for(asyncio.wrap_future(self._submit()), timeout_s)
        except Exception as exc:  # an API error, a timeout, a refused connection: one attempt
            return self._failed(exc, timeout_s)
        return self._won(won)

    def attempt_blocking(self, timeout_s: float) -> bool:
        """:meth:`attempt`, for a thread."""
        try:
            won = self._submit().result(timeout_s)
        except Exception as exc:
            return self._failed(exc, timeout_s)
        return self._won(won)

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Try every retry period until this replica holds the Lease (True), or ``stopping``
        is set first (False)."""
        timing, waiting_on = self.elector.timing, None
        while not stopping.is_set():
            if await self.attempt(timing.request_timeout_s * 2):
                return True
            holder = self.elector.holder
            if holder and holder != waiting_on:
                log.info("standby: Lease %s is held by %s; waiting", self.lease, holder)
                waiting_on = holder
            pause = timing.retry_period_s * random.uniform(1.0, JITTER)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), pause)
        return False

    async def keep(self, on_lost: Callable[[str], None]) -> str:
        """Renew every retry period while leading, from a thread of its own; when leadership
        is lost, call ``on_lost(why)`` at once from that thread, then return why. Cancelled
        (the operator stopped first): the thread ends at its next wake-up."""
        stop = threading.Event()
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._keeper, self._keep, on_lost, stop)
        finally:
            stop.set()

    def _keep(self, on_lost: Callable[[str], None], stop: threading.Event) -> str:
        timing, clock, elector = self.elector.timing, self.elector.clock, self.elector
        deadline = timing.renew_deadline_s
        renewed_at = elector.won_at if elector.won_at is not None else clock()
        while True:
            # Wake at the next renewal, or at the deadline if that comes first
            if stop.wait(max(0.0, min(timing.retry_period_s, renewed_at + deadline - clock()))):
                return ""
            left = renewed_at + deadline - clock()
            if left <= 0:
                why = f"not renewed for {deadline:g}s"
                break
            if self.attempt_blocking(left):
                renewed_at = elector.won_at if elector.won_at is not None else renewed_at
                continue
            holder = elector.holder
            if holder and holder != elector.identity:
                why = f"the Lease is held by {holder}"
                break
        if not stop.is_set():
            on_lost(why)
        return why

    async def release(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            released = await asyncio.wait_for(
                loop.run_in_executor(self._pool, self.elector.release),
                self.elector.timing.request_timeout_s * 2,
            )
        except Exception as exc:  # a standby takes over after the lease expires instead
            log.warning("cannot release Lease %s (%s); it expires by itself", self.lease, exc)
            return
        if released:
            log.info("released Lease %s: a standby takes over now", self.lease)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._keeper.shutdown(wait=False, cancel_futures=True)

    @property
    def lease(self) -> str:
        store = self.elector.store
        name = getattr(store, "name", "")
        return f"{getattr(store, 'namespace', '')}/{name}" if name else "(lease)"


async def lead(
    campaign: Campaign,
    run: Callable[[asyncio.Event], Awaitable[None]],
    *,
    on_role: Callable[[bool], Awaitable[None]],
    on_lost: Callable[[], NoReturn],
) -> None:
    """Stand by until this replica holds the Lease, then ``on_role(True)`` and ``run(stopping)``
    (the operator) while renewing it. SIGTERM or SIGINT set ``stopping``; when ``run`` returns,
    the Lease is released. The renewals start the moment the Lease is won, whatever
    ``on_role`` and ``run`` take. Leadership lost calls ``on_lost`` at once, from the renewals'
    thread, ``run`` still running: the operator's handlers may be mid-call in threads no one
    can stop, and the event loop may be busy, so the process must end there."""
    elector = campaign.elector
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)

    def lost(why: str) -> None:
        log.error(
            "lost leadership of Lease %s (%s): exiting, so that Kubernetes restarts this "
            "replica as a standby",
            campaign.lease,
            why,
        )
        on_lost()

    await on_role(False)
    try:
        if not await campaign.acquire(stopping):
            log.info("stopped while standing by")
            return
        keeper = asyncio.create_task(campaign.keep(lost), name="lease renewal")
        log.info(
            "became the leader (Lease %s, identity %s): running the operator",
            campaign.lease,
            elector.identity,
        )
        operator = asyncio.create_task(_run(on_role, run, stopping), name="operator")
        await asyncio.wait({keeper, operator}, return_when=asyncio.FIRST_COMPLETED)
        if keeper.done() and not operator.done():  # on_lost returned or raised: a test's
            operator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await operator
            keeper.result()
            return
        keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await keeper
        try:
            await operator
        finally:
            await campaign.release()
            await on_role(False)
    finally:
        campaign.close()


async def _run(
    on_role: Callable[[bool], Awaitable[None]],
    run: Callable[[asyncio.Event], Awaitable[None]],
    stopping: asyncio.Event,
) -> None:
    await on_role(True)
    await run(stopping)
