"""The SDK's standard samplers, decided inline for a span whose parent is remote or absent.

``Sampler.should_sample`` needs a parent ``Context`` and returns a ``SamplingResult``: more
objects than the rest of a lean span. The standard samplers (``always_on``, ``always_off``,
``traceidratio`` and their ``parentbased_*`` forms, what ``OTEL_TRACES_SAMPLER`` selects) are one
comparison each: sample when ``trace_id & (2**64 - 1) < bound``, the SDK's own rule. Any other
sampler (a custom one, a subclass that decides differently, ``jaeger_remote``, ``xray``) is not
recognised, and the caller keeps the SDK's path for it. ``ParentBased`` keeps its delegates in
private attributes; if a future SDK renames them, nothing is recognised and the SDK decides.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.sampling import Sampler

ALWAYS = 1 << 64
"""A bound that every trace id passes."""
NEVER = 0


@dataclass(frozen=True, slots=True)
class Decider:
    """Bounds for the three cases a consumer span can be in (its parent is never local)."""

    root: int
    sampled_parent: int
    unsampled_parent: int

    def sample(self, trace_id: int, parent_flags: int | None) -> bool:
        """The decision for a span of ``trace_id`` whose remote parent has ``parent_flags``
        (None: no parent, a root span)."""
        if parent_flags is None:
            bound = self.root
        elif parent_flags & 1:
            bound = self.sampled_parent
        else:
            bound = self.unsampled_parent
        return trace_id & 0xFFFFFFFFFFFFFFFF < bound


def decider_for(sampler: Sampler) -> Decider | None:
    """The inline form of ``sampler``, or None when it is not one of the standard samplers."""
    from opentelemetry.sdk.trace.sampling import ParentBased

    if _plain(sampler, ParentBased):
        delegates = [
            getattr(sampler, name, None)
            for name in ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled")
        ]
        bounds = [_bound(d) for d in delegates]
        if None in bounds:
            return None
        root, sampled, unsampled = bounds
        assert root is not None and sampled is not None and unsampled is not None
        return Decider(root, sampled, unsampled)
    bound = _bound(sampler)
    return None if bound is None else Decider(bound, bound, bound)


def _plain(sampler: object, kind: type) -> bool:
    """``sampler`` is a ``kind`` (or a subclass that only sets it up, like
    ``ParentBasedTraceIdRatio``), deciding and describing itself as ``kind`` does."""
    cls = type(sampler)
    return (
        isinstance(sampler, kind)
        and cls.should_sample is kind.should_sample  # type: ignore[attr-defined]
        and cls.get_description is kind.get_description  # type: ignore[attr-defined]
    )


def _bound(sampler: object) -> int | None:
    """The bound of a static or ratio sampler; None for any other."""
    from opentelemetry.sdk.trace.sampling import StaticSampler, TraceIdRatioBased

    if _plain(sampler, StaticSampler):
        description = sampler.get_description()  # type: ignore[attr-defined]
        return {"AlwaysOnSampler": ALWAYS, "AlwaysOffSampler": NEVER}.get(description)
    if _plain(sampler, TraceIdRatioBased):
        return int(sampler.bound)  # type: ignore[attr-defined]
    return None
