"""Pod start-up, measured from readiness timestamps (creation → Ready), per Worker."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import V1ObjectMeta, V1Pod, V1PodCondition, V1PodStatus

from shoal_operator.startup import KEEP, RELIST_S, StartupMeter, startup_seconds

T0 = dt.datetime(2024, 1, 1, 3, 0, tzinfo=dt.UTC)


def pod(name: str, ready_after_s: float | None, *, status: str = "True") -> V1Pod:
    conditions = []
    if ready_after_s is not None:
        when = T0 + dt.timedelta(seconds=ready_after_s)
        conditions.append(V1PodCondition(type="Ready", status=status, last_transition_time=when))
    meta = V1ObjectMeta(name=name, uid=f"uid-{name}", creation_timestamp=T0)
    return V1Pod(metadata=meta, status=V1PodStatus(conditions=conditions))


def test_start_up_is_creation_to_ready() -> None:
    assert startup_seconds(pod("a", 7.5)) == 7.5
    assert startup_seconds(pod("b", None)) is None  # still starting
    assert startup_seconds(pod("c", 9, status="False")) is None  # not ready
    assert startup_seconds(V1Pod(metadata=V1ObjectMeta(name="d"), status=None)) is None


def test_recent_median_one_sample_per_pod_flaps_ignored() -> None:
    meter = StartupMeter()
    assert meter.median_s is None and meter.wants_listing(1, now_s=0)
    meter.observe([pod("a", 4), pod("b", 6), pod("c", None)], ready=2, now_s=0)
    assert meter.median_s == 5.0
    assert not meter.wants_listing(2, now_s=1)  # the same ready count: no new listing
    assert meter.wants_listing(2, now_s=RELIST_S)  # unless a while has passed
    assert not meter.wants_listing(0, now_s=RELIST_S)  # nothing ready: nothing to measure
    # a's readiness flapped (its transition moved), c became ready after 20 s
    meter.observe([pod("a", 300), pod("b", 6), pod("c", 20)], ready=3, now_s=2)
    assert meter.median_s == 6.0


def test_only_the_most_recent_samples_count() -> None:
    meter = StartupMeter()
    meter.observe([pod(f"old{i}", 100) for i in range(KEEP)], ready=KEEP, now_s=0)
    meter.observe([pod(f"new{i}", 5) for i in range(KEEP // 2 + 1)], ready=1, now_s=1)
    assert meter.median_s == 5.0  # the image got faster: the median follows
    assert len(meter.samples) == KEEP


def test_tracing_reads_only_the_standard_variables() -> None:
    from shoal_operator.settings import tracing_settings

    assert not tracing_settings({}).otel_export
    on = tracing_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "SHOAL_X": "1"})
    assert on.otel_export
    off = tracing_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "x", "OTEL_SDK_DISABLED": "true"})
    assert not off.otel_export


def test_an_unusable_tracing_variable_leaves_tracing_off_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from shoal_operator.tracing import start_tracing

    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "json"}
    assert start_tracing(env) is None
    assert "OTEL_EXPORTER_OTLP_PROTOCOL" in caplog.text


def _ready_pod(uid: str, created: dt.datetime, ready_at: dt.datetime | None) -> Any:
    conditions = (
        []
        if ready_at is None
        else [SimpleNamespace(type="Ready", status="True", last_transition_time=ready_at)]
    )
    return SimpleNamespace(
        metadata=SimpleNamespace(uid=uid, name=uid, creation_timestamp=created),
        status=SimpleNamespace(conditions=conditions),
    )


def test_pods_found_ready_long_after_their_creation_do_not_teach_a_days_long_start() -> None:
    # Given an operator restarted over week-old pods, two of which flapped or restarted since
    now = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    week_ago = now - dt.timedelta(days=7)
    pods = [
        _ready_pod("a", week_ago, week_ago + dt.timedelta(seconds=20)),
        _ready_pod("b", week_ago, now - dt.timedelta(minutes=5)),  # readiness flapped
        _ready_pod("c", week_ago, now - dt.timedelta(hours=2)),  # container restarted
    ]
    meter = StartupMeter()
    meter.observe(pods, ready=3, now_s=0.0)
    # Then only the start that is believable counts
    assert meter.median_s == 20.0


def test_a_slow_start_seen_from_the_beginning_counts_whatever_it_took() -> None:
    created = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    meter = StartupMeter()
    meter.observe([_ready_pod("slow", created, None)], ready=0, now_s=0.0)  # seen starting
    meter.observe(
        [_ready_pod("slow", created, created + dt.timedelta(minutes=15))], ready=1, now_s=900.0
    )
    assert meter.median_s == 900.0
