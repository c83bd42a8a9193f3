"""Shoal with one of issue 18's flow and task control features on (``BENCH_FEATURE``), for the
features step (``--features``; see bench/README.md, "Flow and task control: cost off and on").

The same task body as the other rows, the same queue; only the feature differs:

* ``off``: nothing on (the no-op row as it is);
* ``queue-rate``: ``app.configure_queue("bench", rate_limit="100000/s")``, which never binds;
* ``task-rate``: ``@app.task(rate_limit="100000/s")``, which never binds;
* ``prio0``: every message ``with_options(priority=0)``;
* ``prio-mixed``: messages alternately ``with_options(priority=9)`` and plain (default 5),
  enqueued one at a time so that they interleave in the waiting list;
* ``progress``: the task calls ``shoal.progress(1, 2)`` every run (a mid-way report: the
  first of its message, so written at once);
* ``expires``: every message ``with_options(expires=600)``.

``build`` makes the app, the task and the producer for sync or async bodies; it uses nothing a
runtime older than the features lacks when the feature is ``off`` (``--baseline-rev``).
"""

from __future__ import annotations

import os
from typing import Any

import record
from shoal import App

FEATURES = ("off", "queue-rate", "task-rate", "prio0", "prio-mixed", "progress", "expires")
NEVER_BINDS = "100000/s"  # (1000000 would be stored as "1e+06/s": see README)
QUEUE = "bench"


def feature() -> str:
    name = os.environ.get("BENCH_FEATURE", "off")
    if name not in FEATURES:
        raise SystemExit(f"BENCH_FEATURE={name!r}: expected one of {', '.join(FEATURES)}")
    return name


def build(asynchronous: bool) -> tuple[App, Any, type]:
    """``(app, task, Producer)`` for ``BENCH_FEATURE``, with ``async def`` or ``def`` bodies."""
    which = feature()
    app = App()  # SHOAL_REDIS_URL is set by the harness
    options: dict[str, Any] = {"rate_limit": NEVER_BINDS} if which == "task-rate" else {}
    progress: Any = None
    if which == "progress":
        from shoal import progress

    if asynchronous:

        async def work(run: str, i: int, t_enq: float, sleep: float) -> None:
            if progress is not None:
                progress(1, 2)
            await record.run_async(run, i, t_enq, sleep)

    else:

        def work(run: str, i: int, t_enq: float, sleep: float) -> None:  # type: ignore[misc]
            if progress is not None:
                progress(1, 2)
            record.run_sync(run, i, t_enq, sleep)

    task = app.task(queue=QUEUE, name="work", **options)(work)

    class Producer:
        bulk_api = f"task.enqueue_many, feature {which}"
        enqueue_api = "task.enqueue"

        def __init__(self) -> None:
            if which == "queue-rate":  # stored in Redis: the workers' fetch reads it
                app.configure_queue(QUEUE, rate_limit=NEVER_BINDS)

        def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
            task.enqueue(run, i, t_enq, sleep)

        def bulk(self, run: str, items: list[tuple[int, float]], sleep: float) -> None:
            calls = [(run, i, t_enq, sleep) for i, t_enq in items]
            if which == "prio0":
                task.with_options(priority=0).enqueue_many(calls)
            elif which == "expires":
                task.with_options(expires=600).enqueue_many(calls)
            elif which == "prio-mixed":  # one at a time: 9 and 5 alternate in the waiting list
                last = task.with_options(priority=9)
                for call in calls:
                    (last if call[1] % 2 else task).enqueue(*call)
            else:
                task.enqueue_many(calls)

    return app, task, Producer
