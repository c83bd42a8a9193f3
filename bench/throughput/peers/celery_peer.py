"""Celery 5 on its Redis broker (kombu); prefork pool for no-op, thread pool for I/O.

Traced (``BENCH_TRACING=1``, the ``celery-traced`` row): the official instrumentation,
``CeleryInstrumentor().instrument()``, in each prefork child (``worker_process_init``, as its
documentation says) or in the worker process itself for the thread pool, and in the producer;
spans are flushed when the worker or the producer stops.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, group, signals

import otel_sdk
import record

app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6390/0"))
app.conf.update(
    task_default_queue="bench",
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.work")
def work(run: str, i: int, t_enq: float, sleep: float) -> None:
    record.run_sync(run, i, t_enq, sleep)


_provider: list[Any] = []  # the worker process's tracer provider, once instrumented


def instrument(service_name: str) -> Any:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor

    provider = otel_sdk.install(service_name)
    CeleryInstrumentor().instrument(tracer_provider=provider)
    return provider


def _worker_process_init(**_: Any) -> None:
    _provider.append(instrument("bench-celery-worker"))


def _worker_init(sender: Any = None, **_: Any) -> None:
    if "prefork" not in str(getattr(sender, "pool_cls", "prefork")):
        _provider.append(instrument("bench-celery-worker"))  # threads: tasks run right here


def _flush(**_: Any) -> None:
    for provider in _provider:
        otel_sdk.shutdown(provider)


if otel_sdk.enabled():
    signals.worker_process_init.connect(_worker_process_init, weak=False)
    signals.worker_init.connect(_worker_init, weak=False)
    signals.worker_process_shutdown.connect(_flush, weak=False)
    signals.worker_shutdown.connect(_flush, weak=False)


class Producer:
    bulk_api = "group().apply_async() (one publish per task)"
    enqueue_api = "task.apply_async"

    def __init__(self) -> None:
        self.tracer_provider = instrument("bench-producer") if otel_sdk.enabled() else None

    def close(self) -> None:
        otel_sdk.shutdown(self.tracer_provider)

    def single(self, run: str, i: int, t_enq: float, sleep: float) -> None:
        work.apply_async((run, i, t_enq, sleep))

    def bulk(self, run: str, items: list[tuple[int, float]], sleep: float) -> None:
        group(work.s(run, i, t_enq, sleep) for i, t_enq in items).apply_async()
