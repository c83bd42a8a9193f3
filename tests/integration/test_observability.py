"""Traces from a real worker process, exported over OTLP/HTTP to an in-process receiver; the
Prometheus endpoint scraped over HTTP; task fields on every log line."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from processes import worker_env

from helpers import wait_for
from otlp_receiver import OTLPReceiver, ReceivedSpan
from shoal import App, Retries
from shoal.middleware.tracing import Tracing
from shoal.protocol.server import free_port

HERE = Path(__file__).parent


@pytest.fixture
def otlp() -> Iterator[OTLPReceiver]:
    with OTLPReceiver() as receiver:
        yield receiver


class TracedWorker:
    def __init__(self, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.popen, self.log = popen, log

    def stop(self) -> str:
        self.popen.terminate()
        assert self.popen.wait(30) == 0, self.log.read_text()
        return self.log.read_text()


@pytest.fixture
def start_worker(
    redis_url: str, key_prefix: str, tmp_path: Path
) -> Iterator[Callable[..., TracedWorker]]:
    started: list[TracedWorker] = []

    def start(*args: str, **env: str) -> TracedWorker:
        full_env = worker_env(redis_url, SHOAL_KEY_PREFIX=key_prefix, **env)
        log = tmp_path / f"worker-{len(started)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "shoal",
                    "worker",
                    "traced_tasks:app",
                    "-Q",
                    "traced",
                    *args,
                ],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        started.append(TracedWorker(popen, log))
        return started[-1]

    yield start
    for w in started:
        if w.popen.poll() is None:
            w.popen.kill()
            w.popen.wait(10)


def producer_app(redis_url: str, key_prefix: str, otlp: OTLPReceiver) -> App:
    """A producer with its own (non-global) tracer provider exporting to the receiver."""
    provider = TracerProvider(resource=Resource({"service.name": "web"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(f"{otlp.url}/v1/traces")))
    return App(redis_url, key_prefix=key_prefix, middleware=[Tracing(provider), Retries()])


def one(spans: list[ReceivedSpan]) -> ReceivedSpan:
    assert len(spans) == 1, spans
    return spans[0]


def test_one_trace_from_enqueue_to_execution_retries_and_dead_letter(  # noqa: PLR0915
    redis_url: str, key_prefix: str, otlp: OTLPReceiver, start_worker: Callable[..., TracedWorker]
) -> None:
    # Given a producer and a worker process both exporting to the OTLP receiver
    producer = producer_app(redis_url, key_prefix, otlp)
    charge = producer.remote("charge", queue="traced")
    flaky = producer.remote("flaky", queue="traced")
    notify = producer.remote("notify", queue="traced")
    worker = start_worker(
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url,
        OTEL_SERVICE_NAME="billing-worker",
        OTEL_BSP_SCHEDULE_DELAY="600000",  # no timed export: only the shutdown flush sends
        SHOAL_LOG_FORMAT="json",
    )

    # When a task is enqueued, a batch is enqueued, and a failing task retries into the DLQ
    handle = charge.enqueue(7)
    notify.enqueue_many([(1,), (2,)])
    dead = flaky.enqueue(9)
    assert handle.result(timeout=20) == 7
    wait_for(lambda: producer.measure("traced").dead == 1, timeout=20, message="a dead letter")
    assert otlp.named("process traced") == []  # batched in the worker until it stops
    log = worker.stop()  # SIGTERM: the worker flushes its spans before it exits

    # Then the producer span is a PRODUCER span with the messaging attributes
    sends = otlp.named("send traced")
    send = next(s for s in sends if s.attributes.get("messaging.message.id") == handle.id)
    assert send.kind == "SPAN_KIND_PRODUCER"
    assert send.service == "web"
    assert send.attributes["messaging.system"] == "shoal"
    assert send.attributes["messaging.destination.name"] == "traced"
    assert send.attributes["messaging.operation.type"] == "send"
    batch = next(s for s in sends if "messaging.batch.message_count" in s.attributes)
    assert batch.attributes["messaging.batch.message_count"] == 2

    # And the consumer span continues the producer's trace, as a child with a link
    process = one(
        [
            s
            for s in otlp.named("process traced")
            if s.attributes["messaging.message.id"] == handle.id
        ]
    )
    assert process.kind == "SPAN_KIND_CONSUMER"
    assert process.service == "billing-worker"
    assert process.trace_id == send.trace_id
    assert process.parent_span_id == send.span_id
    assert process.links == [(send.trace_id, send.span_id)]
    assert process.attributes["shoal.task.name"] == "charge"
    assert process.attributes["shoal.attempt"] == 1
    assert process.attributes["messaging.operation.type"] == "process"

    # And the task's own span nests under the consumer span (sync task, in a thread)
    inner = one(otlp.named("call payment provider"))
    assert (inner.trace_id, inner.parent_span_id) == (process.trace_id, process.span_id)
    # ... and under the consumer span of an async task too
    batch_processes = [s for s in otlp.named("process traced") if s.trace_id == batch.trace_id]
    assert len(batch_processes) == 2
    renders = otlp.named("render notification")
    assert {r.parent_span_id for r in renders} == {p.span_id for p in batch_processes}

    # And each retry is a new consumer span in the same trace, with the retry and DLQ events
    flaky_send = next(s for s in sends if s.attributes.get("messaging.message.id") == dead.id)
    attempts = sorted(
        (
            s
            for s in otlp.named("process traced")
            if s.attributes["messaging.message.id"] == dead.id
        ),
        key=lambda s: s.attributes["shoal.attempt"],
    )
    assert [a.attributes["shoal.attempt"] for a in attempts] == [1, 2]
    assert {a.trace_id for a in attempts} == {flaky_send.trace_id}
    assert all(a.status_code == "STATUS_CODE_ERROR" for a in attempts)
    assert "retry scheduled" in [name for name, _ in attempts[0].events]
    dlq_event = dict(attempts[1].events)["dead-lettered"]
    assert dlq_event["shoal.dlq.reason"] == "retries_exhausted"
    assert "exception" in [name for name, _ in attempts[1].events]

    # And the DLQ entry carries the trace id
    entry = producer.dlq("traced").get(dead.id)
    assert entry is not None and entry.trace_id == flaky_send.trace_id

    # And the task's log line carries its id, name, queue, attempt and trace id (JSON logs)
    lines = [orjson.loads(x) for x in log.splitlines() if x.startswith("{")]
    charged = next(x for x in lines if x["message"] == "charging order 7")
    assert charged["task_id"] == handle.id
    assert charged["task_name"] == "charge"
    assert charged["queue"] == "traced"
    assert charged["attempt"] == 1
    assert charged["trace_id"] == send.trace_id


def test_prometheus_endpoint_matches_the_work_done(
    redis_url: str, key_prefix: str, start_worker: Callable[..., TracedWorker]
) -> None:
    port = free_port()
    worker = start_worker("--processes", "2", "--metrics-port", str(port))
    producer = App(redis_url, key_prefix=key_prefix)
    charge = producer.remote("charge", queue="traced")
    flaky = producer.remote("flaky", queue="traced")
    handles = charge.enqueue_many([(n,) for n in range(10)])
    flaky.enqueue(1)
    assert handles[-1].result(timeout=20) == 9
    wait_for(lambda: producer.measure("traced").dead == 1, timeout=20, message="a dead letter")
    wait_for(lambda: producer.measure("traced").completed == 10, timeout=20, message="10 done")

    def scrape() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    metrics = wait_for(
        lambda: (
            (m := scrape()).get('shoal_tasks_total{outcome="ok",queue="traced",task="charge"}')
            == 10
            and m
        ),
        timeout=20,
        message="10 ok tasks in /metrics",
    )
    assert metrics['shoal_tasks_total{outcome="failed",queue="traced",task="flaky"}'] == 2
    assert metrics['shoal_tasks_total{outcome="retried",queue="traced",task="flaky"}'] == 1
    assert metrics['shoal_tasks_total{outcome="dead",queue="traced",task="flaky"}'] == 1
    assert metrics['shoal_task_duration_seconds_count{queue="traced",task="charge"}'] == 10
    assert metrics['shoal_task_queue_wait_seconds_count{queue="traced"}'] == 11
    assert metrics['shoal_queue_dead{queue="traced"}'] == 1
    assert metrics['shoal_queue_waiting{queue="traced"}'] == 0
    assert metrics["shoal_redis_up"] == 1
    assert metrics['shoal_tasks_in_flight{queue="traced"}'] == 0
    worker.stop()


def test_tracing_off_creates_no_spans_and_no_headers(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()

    @app.task(queue="q", store_result=True)
    def echo(x: int) -> int:
        return x

    handle = echo.enqueue(1)
    raw = app.broker.redis.hget(app.broker.keys("q").messages, handle.id)
    assert raw is not None and orjson.loads(raw)["headers"] == {}
    worker(app, ["q"])
    assert handle.result(timeout=5) == 1
