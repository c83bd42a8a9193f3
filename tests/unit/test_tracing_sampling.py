"""The inline sampler decides as the SDK's standard samplers do, and knows which it cannot."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import sampling
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from shoal.telemetry.sampling import decider_for

STANDARD = [
    sampling.ALWAYS_ON,
    sampling.ALWAYS_OFF,
    sampling.DEFAULT_ON,
    sampling.DEFAULT_OFF,
    sampling.TraceIdRatioBased(0.1),
    sampling.TraceIdRatioBased(0.0),
    sampling.TraceIdRatioBased(1.0),
    sampling.ParentBasedTraceIdRatio(0.1),
    sampling.ParentBasedTraceIdRatio(0.37),
    sampling.ParentBased(
        sampling.TraceIdRatioBased(0.5),
        remote_parent_sampled=sampling.TraceIdRatioBased(0.25),
        remote_parent_not_sampled=sampling.ALWAYS_ON,
    ),
]


def sdk_decision(sampler: sampling.Sampler, trace_id: int, parent_flags: int | None) -> bool:
    context = None
    if parent_flags is not None:
        parent = SpanContext(trace_id, 0xABC, is_remote=True, trace_flags=TraceFlags(parent_flags))
        context = trace.set_span_in_context(NonRecordingSpan(parent))
    result = sampler.should_sample(context, trace_id, "process q", SpanKind.CONSUMER)
    return result.decision.is_sampled()


@pytest.mark.parametrize("sampler", STANDARD, ids=lambda s: s.get_description()[:70])
def test_decisions_match_the_sdk_sampler(sampler: sampling.Sampler) -> None:
    decider = decider_for(sampler)
    assert decider is not None
    rng = random.Random(15)
    ids = [rng.getrandbits(128) or 1 for _ in range(2000)]
    ids += [1, (1 << 128) - 1, (1 << 64) - 1, 1 << 64]
    for trace_id in ids:
        for parent_flags in (None, 0, 1, 2, 3):
            expected = sdk_decision(sampler, trace_id, parent_flags)
            assert decider.sample(trace_id, parent_flags) is expected, (trace_id, parent_flags)


def test_a_ratio_samples_about_its_share() -> None:
    decider = decider_for(sampling.ParentBasedTraceIdRatio(0.1))
    assert decider is not None
    rng = random.Random(1)
    sampled = sum(decider.sample(rng.getrandbits(128), None) for _ in range(20_000))
    assert 1700 < sampled < 2300


class Custom(sampling.Sampler):
    def should_sample(self, *args: Any, **kwargs: Any) -> sampling.SamplingResult:
        return sampling.SamplingResult(sampling.Decision.RECORD_AND_SAMPLE)

    def get_description(self) -> str:
        return "AlwaysOnSampler"  # claims to be standard: its type says otherwise


class SneakyParentBased(sampling.ParentBased):
    def should_sample(self, *args: Any, **kwargs: Any) -> sampling.SamplingResult:
        return sampling.SamplingResult(sampling.Decision.DROP)


@pytest.mark.parametrize(
    "sampler",
    [
        Custom(),
        SneakyParentBased(sampling.ALWAYS_ON),
        sampling.ParentBased(Custom()),
        sampling.ParentBased(sampling.ALWAYS_ON, remote_parent_sampled=Custom()),
    ],
    ids=["custom", "subclass", "custom root", "custom delegate"],
)
def test_other_samplers_are_left_to_the_sdk(sampler: sampling.Sampler) -> None:
    assert decider_for(sampler) is None
