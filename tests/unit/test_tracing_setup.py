"""Which span path a worker process takes, decided once from its ``OTEL_*`` variables; and with
tracing off, Shoal imports no OpenTelemetry at all. Each case runs in a fresh interpreter: a
global tracer provider can be set only once per process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from otlp_receiver import OTLPReceiver

BOOT = """
import logging, sys
from types import SimpleNamespace
from shoal import App
from shoal.message import Message
from shoal.middleware.tracing import Tracing
from shoal.settings import Settings

logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
tracing = Tracing()
tracing.before_worker_boot(SimpleNamespace(settings=Settings.from_env()))
owned = tracing._owned
"""


def run(script: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**clean, "OTEL_EXPORTER_OTLP_TIMEOUT": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


ENDPOINT = "http://127.0.0.1:9"  # nothing is exported in these cases


@pytest.mark.parametrize(
    ("env", "lean"),
    [
        ({}, True),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"},
            True,
        ),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, True),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, False),
    ],
    ids=["default", "10 %", "always_off", "grpc"],
)
def test_the_lean_path_is_taken_only_where_it_applies(env: dict[str, str], lean: bool) -> None:
    out = run(
        BOOT
        + """
print("LEAN" if owned.process_spans is not None else "SDK")
print(type(owned.provider._active_span_processor._span_processors[0]).__name__)
""",
        OTEL_EXPORTER_OTLP_ENDPOINT=ENDPOINT,
        **env,
    )
    assert ("LEAN" if lean else "SDK") in out.splitlines()
    assert ("Pipeline" if lean else "BatchSpanProcessor") in out.splitlines()
    assert ("lean consumer spans" in out) is lean


def test_a_credential_provider_is_left_to_the_sdk_exporter() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": ENDPOINT,
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER": "not-installed",
    }
    done = subprocess.run(
        [sys.executable, "-c", BOOT],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # The SDK's exporter looked the provider up (and, here, did not find it)
    assert "opentelemetry_otlp_credential_provider" in done.stderr


def test_a_span_processor_added_later_sees_every_consumer_span() -> None:
    out = run(
        BOOT
        + """
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
assert owned.process_spans is not None
memory = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(memory))
assert owned.process_spans is None
with tracing.process_context(None, Message("m1", "t", "q", [], {}, 1.0), "q"):
    pass
print([s.name for s in memory.get_finished_spans()])
""",
        OTEL_EXPORTER_OTLP_ENDPOINT=ENDPOINT,
        OTEL_BSP_SCHEDULE_DELAY="600000",
    )
    assert "['process q']" in out


def test_a_sampler_shoal_cannot_decide_keeps_the_sdk_spans_and_exports_them() -> None:
    with OTLPReceiver() as otlp:
        run(
            """
import shoal.telemetry.sampling as sampling
sampling.decider_for = lambda sampler: None  # as for a custom sampler
"""
            + BOOT
            + """
assert owned.process_spans is None
parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
message = Message("m1", "charge", "billing", [], {}, 1.0, 0, {"traceparent": parent})
with tracing.process_context(None, message, "billing"):
    pass
tracing.after_worker_shutdown(None)
""",
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp.url,
        )
        (span,) = otlp.named("process billing")
    assert span.kind == "SPAN_KIND_CONSUMER" and span.parent_span_id == "00f067aa0ba902b7"
    assert span.links == [(span.trace_id, "00f067aa0ba902b7")]
    assert span.attributes["messaging.message.id"] == "m1"


def test_tracing_off_imports_no_opentelemetry() -> None:
    out = run(
        """
import sys, importlib.abc

class NoOpenTelemetry(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] == "opentelemetry":
            raise ImportError(f"{name} imported with tracing off")

sys.meta_path.insert(0, NoOpenTelemetry())  # libraries that import it optionally do without
"""
        + BOOT
        + """
app = App("redis://127.0.0.1:9/0")
assert owned is None and not tracing.active_in_worker()
with tracing.enqueue_context(None, []), tracing.process_context(None, None, "q"):
    pass
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    )
    assert out.splitlines()[-1] == "[]"
