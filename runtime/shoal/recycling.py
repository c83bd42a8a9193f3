"""Worker recycling: a worker process that has finished N tasks, or grown past M MiB, is
replaced between tasks (Celery's ``max_tasks_per_child`` and ``max_memory_per_child``), the
cure for task code that leaks.

The worker checks after each finished task (:meth:`Recycler.check`); when a limit is reached it
stops fetching, lets running tasks finish, hands back what it leased ahead, and exits with
:data:`EXIT_RECYCLED`. The supervisor reads why from a shared page (:class:`RecycleNote`), logs
it, and starts a replacement at once: a recycle is not a crash. No imports beyond the standard
library: the lean supervisor loads this module too.
"""

from __future__ import annotations

import mmap
import os
import resource
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

EXIT_RECYCLED = 4
"""A worker process exits with this when it reached a recycling limit: replace it at once."""

MEMORY_CHECK_EVERY_S = 0.05
"""Least time between two reads of the process's RSS (one ``pread`` of ``/proc/self/statm``):
a task that finishes every few microseconds does not pay a system call each time."""

REASONS = ("tasks", "memory")
"""The ``reason`` label of ``shoal_worker_recycles_total``."""

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RecycleLimits:
    """When a worker process is replaced; 0 turns a limit off."""

    max_tasks: int = 0
    """Finished tasks (successes, failures, dead letters alike); ``--max-tasks-per-process``."""

    max_memory_mib: int = 0
    """Resident set size in MiB; ``--max-memory-per-process``."""

    def __bool__(self) -> bool:
        return self.max_tasks > 0 or self.max_memory_mib > 0


@dataclass(frozen=True, slots=True)
class Recycled:
    """Why a worker process asked to be replaced."""

    reason: str
    """``tasks`` or ``memory`` (:data:`REASONS`)."""

    value: int
    """Tasks finished, or the RSS in MiB that reached the limit."""

    limit: int

    def describe(self) -> str:
        """``after 1000 tasks`` or ``after reaching 512 MiB (limit 500)``, for log lines."""
        if self.reason == "tasks":
            return f"after {self.value} tasks"
        return f"after reaching {self.value} MiB (limit {self.limit})"


class Recycler:
    """Decides, after each finished task, whether this process has reached a limit."""

    def __init__(
        self,
        limits: RecycleLimits,
        *,
        rss_mib: Callable[[], float] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limits = limits
        self._rss_mib = rss_mib or ResidentMemory().mib
        self._clock = clock
        self._next_memory_check = 0.0

    def check(self, finished: int) -> Recycled | None:
        """``finished``: tasks this process finished so far. None while under every limit."""
        limits = self.limits
        if limits.max_tasks and finished >= limits.max_tasks:
            return Recycled("tasks", finished, limits.max_tasks)
        if limits.max_memory_mib:
            now = self._clock()
            if now < self._next_memory_check:
                return None
            self._next_memory_check = now + MEMORY_CHECK_EVERY_S
            rss = self._rss_mib()
            if rss > limits.max_memory_mib:
                return Recycled("memory", round(rss), limits.max_memory_mib)
        return None


class ResidentMemory:
    """This process's resident set size: current, from ``/proc/self/statm`` (Linux, kept open
    and re-read with one ``pread``); elsewhere the peak, from ``getrusage``."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def mib(self) -> float:
        if self._fd is None:
            try:
                self._fd = os.open("/proc/self/statm", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return _peak_rss_mib()
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page / _MIB


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / _MIB if sys.platform == "darwin" else peak / 1024  # bytes there, KiB here


class RecycleNote:
    """How a worker process tells the supervisor why it was recycled: three integers in a page
    shared across the fork (reason index + 1, value, limit), written just before it exits."""

    _FORMAT = "qqq"

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, struct.calcsize(self._FORMAT))

    def write(self, recycled: Recycled) -> None:
        code = REASONS.index(recycled.reason) + 1
        struct.pack_into(self._FORMAT, self._page, 0, code, recycled.value, recycled.limit)

    def read(self) -> Recycled | None:
        code, value, limit = struct.unpack_from(self._FORMAT, self._page)
        if not 1 <= code <= len(REASONS):
            return None
        return Recycled(REASONS[code - 1], value, limit)
