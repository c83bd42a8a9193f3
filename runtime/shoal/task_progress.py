"""``shoal.progress(done, total, note=)``: a running task reports how far it got.

Cheap enough to call in a tight loop: a report is written to Redis (``{p}:{q}:progress:<id>``,
kept for the result TTL) at most every :data:`MIN_INTERVAL_S` per message, and the write never
blocks the task: it is handed to the worker's event loop. The first report, and one that says
the work is complete, are written at once; of the reports in between, the latest is written when
the interval has passed, so what Redis holds is never more than the interval behind.
``handle.progress()`` and ``shoal task status`` read it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import orjson

from shoal.logs import current_task

MIN_INTERVAL_S = 0.5
"""Writes of one message's reports are at least this far apart."""
MAX_NOTE_CHARS = 200
_TRACKED = 4096
"""Messages whose last write time is remembered (a bounded map: old ones fall out)."""

log = logging.getLogger("shoal.progress")


@dataclass(frozen=True, slots=True)
class Progress:
    """A task's last progress report."""

    done: float
    total: float | None
    note: str | None
    at: float
    """Unix time of the report."""

    @property
    def fraction(self) -> float | None:
        """``done / total`` in [0, 1], or None without a total."""
        if not self.total:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    def describe(self) -> str:
        """``3/10 (30%) copying files``, as ``shoal task status`` shows it."""
        shown = f"{self.done:g}" if self.total is None else f"{self.done:g}/{self.total:g}"
        if self.fraction is not None:
            shown += f" ({self.fraction:.0%})"
        return f"{shown} {self.note}" if self.note else shown

    def to_json(self) -> bytes:
        return orjson.dumps(
            {"done": self.done, "total": self.total, "note": self.note, "at": self.at}
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> Progress | None:
        """A stored report; None for bytes that are not one (written by something else)."""
        try:
            data = orjson.loads(raw)
            total = data.get("total")
            return cls(
                float(data["done"]),
                None if total is None else float(total),
                None if data.get("note") is None else str(data["note"]),
                float(data.get("at") or 0.0),
            )
        except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
            return None


Writer = Callable[[str, str, bytes], Coroutine[Any, Any, None]]
"""``(queue, message id, report JSON)``: the worker's asynchronous write."""


class ProgressSink:
    """The worker side: rate-limits reports per message and writes them on the worker's loop,
    from the loop itself (an async task) or from a slot thread (a sync task), never waiting."""

    def __init__(self, loop: asyncio.AbstractEventLoop, write: Writer) -> None:
        self._loop = loop
        self._write = write
        self._lock = threading.Lock()
        self._last: OrderedDict[str, float] = OrderedDict()
        """message id -> when its last report was written (monotonic); bounded."""
        self._held: dict[str, tuple[str, Progress]] = {}
        """message id -> (queue, latest report) not written yet: a write is scheduled."""
        self._pending: set[asyncio.Future[None]] = set()

    def report(self, queue: str, message_id: str, progress: Progress) -> None:
        """Write ``progress`` now, or hold it as the message's latest until MIN_INTERVAL_S has
        passed since its last write (a complete report is written at once)."""
        now = time.monotonic()
        complete = progress.total is not None and progress.done >= progress.total
        with self._lock:
            last = self._last.get(message_id)
            if last is not None and now - last < MIN_INTERVAL_S and not complete:
                if message_id not in self._held:  # the first held: schedule its write
                    self._on_loop(
                        self._loop.call_later,
                        last + MIN_INTERVAL_S - now,
                        self._release,
                        message_id,
                    )
                self._held[message_id] = (queue, progress)
                return
            self._held.pop(message_id, None)
            self._mark(message_id, now)
        self._on_loop(self._send, queue, message_id, progress)

    def _mark(self, message_id: str, now: float) -> None:
        self._last[message_id] = now
        self._last.move_to_end(message_id)
        while len(self._last) > _TRACKED:
            self._last.popitem(last=False)

    def _release(self, message_id: str) -> None:
        """On the loop: write a held report, its interval over."""
        with self._lock:
            held = self._held.pop(message_id, None)
            if held is None:
                return
            self._mark(message_id, time.monotonic())
        self._send(*held[:1], message_id, held[1])

    def _send(self, queue: str, message_id: str, progress: Progress) -> None:
        """On the loop: start the write, keeping a reference until it is done."""
        task = self._loop.create_task(self._guarded(queue, message_id, progress.to_json()))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    def _on_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the worker's loop: now when called from it, else soon."""
        try:
            here = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            here = False
        if here:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed: the worker is gone
                self._loop.call_soon_threadsafe(fn, *args)

    async def _guarded(self, queue: str, message_id: str, report: bytes) -> None:
        try:
            await self._write(queue, message_id, report)
        except Exception as exc:  # a report is best effort: never the task's failure
            log.warning("progress of %s on %s not stored: %s", message_id, queue, exc)


_sink: ProgressSink | None = None


def install(sink: ProgressSink) -> None:
    """Set this process's sink: a worker does when it starts (the latest one started wins)."""
    global _sink
    _sink = sink


def uninstall(sink: ProgressSink) -> None:
    """Clear the sink when it is still ``sink``: a worker does when it stops (another worker of
    the same process keeps its own)."""
    global _sink
    if _sink is sink:
        _sink = None


def progress(done: float, total: float | None = None, *, note: str | None = None) -> None:
    """Report how far the running task got: ``shoal.progress(3, 10, note="resizing")``.

    Call it from inside a task a worker runs (sync or async); it returns at once. ``done`` and
    ``total`` are non-negative numbers (any unit: items, bytes, percent); ``note`` is a short
    text (cut at 200 characters)."""
    ctx = current_task.get()
    sink = _sink
    if ctx is None or sink is None:
        raise RuntimeError(
            "shoal.progress() reports on the task a worker is running: call it from inside a "
            "task (it has no task to report on here)"
        )
    for name, value in (("done", done), ("total", total)):
        if value is None and name == "total":
            continue
        if not _non_negative(value):
            raise ValueError(f"shoal.progress(): {name} must be a number >= 0, got {value!r}")
    text = None if note is None else str(note)[:MAX_NOTE_CHARS]
    report = Progress(float(done), None if total is None else float(total), text, time.time())
    sink.report(ctx.queue, ctx.task_id, report)


def _non_negative(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and value >= 0
