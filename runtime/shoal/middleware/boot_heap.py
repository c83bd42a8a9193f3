"""The ``shoal worker`` process's own middleware: keeping full garbage collections short."""

from __future__ import annotations

import gc
from typing import Any

from shoal.middleware.base import Middleware


class FreezeBootHeap(Middleware):
    """Takes what a worker process allocated to boot (the task module and everything it
    imports, the Redis client, the telemetry set-up) out of the garbage collector's sight: it
    lives as long as the process, and every full collection walked all of it again, a pause
    of 25-40 ms with every slot waiting (a task that slept 50 ms ended after 90), many times a
    minute under load. Collections then walk only what tasks allocate. Only in processes
    ``shoal worker`` owns: in an application's own process the heap is the application's."""

    def after_worker_boot(self, worker: Any) -> None:
        gc.collect()
        gc.freeze()
