"""How long a Worker's pods take to start, measured from the pods themselves: creation
(``metadata.creationTimestamp``) to readiness (the ``Ready`` condition's
``lastTransitionTime``). The policy wakes a fleet that long before a scheduled tick, instead of
a constant guess, and learns when an image or its imports get slower.

One sample per pod, taken the first time it is seen ready: a later readiness flap of the same
pod moves ``lastTransitionTime`` and must not count as a start. A pod first seen already ready
(listed after the operator restarted, or between two listings) counts only if its creation and
its last Ready transition are at most :data:`TRUSTED_UNSEEN_S` apart: beyond that the
transition is more likely a flap or a container restart (a week-old pod would teach a start-up
of a week). A pod seen not ready first counts whatever it took (a slow image pull is real).
The median of the :data:`KEEP` most recent samples is what the policy gets."""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

KEEP = 9
"""Samples kept per Worker: the recent median follows a changed image within a few rollouts."""
TRUSTED_UNSEEN_S = 600.0
"""The longest start-up believed of a pod not seen starting (see the module's docstring)."""
RELIST_S = 60.0
"""Pods are listed again at least this often while some are ready: a pod replaced between two
polls leaves the ready count as it was, yet its start-up counts."""


def startup_seconds(pod: Any) -> float | None:
    """Seconds from a pod's creation to its ``Ready=True`` transition (a kubernetes client
    ``V1Pod``); None when it is not ready, or a timestamp is missing."""
    created = getattr(pod.metadata, "creation_timestamp", None)
    status = pod.status
    for condition in (status.conditions if status is not None else None) or ():
        if condition.type == "Ready" and condition.status == "True":
            ready = _aware(condition.last_transition_time)
            if created is None or ready is None:
                return None
            return max(0.0, (ready - _aware(created)).total_seconds())  # type: ignore[operator]
    return None


def _aware(when: dt.datetime | None) -> dt.datetime | None:
    if when is None:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


@dataclass
class StartupMeter:
    """One Worker's recent pod start-up times."""

    samples: dict[str, float] = field(default_factory=dict)
    """pod uid → seconds, oldest first (at most :data:`KEEP`)."""
    seen: set[str] = field(default_factory=set)
    """Every pod uid already sampled (bounded: pruned to the pods still listed)."""
    starting: set[str] = field(default_factory=set)
    """Pods seen not ready yet (bounded: pruned to the pods still listed)."""
    listed_at_ready: int | None = None
    """The ready count when the pods were last listed: they are listed again when it changes
    (or after :data:`RELIST_S`), so a steady fleet costs one API call a minute."""
    listed_at_s: float = -RELIST_S
    """When they were last listed (monotonic seconds)."""

    def wants_listing(self, ready: int, now_s: float) -> bool:
        if ready <= 0:
            return False
        return ready != self.listed_at_ready or now_s - self.listed_at_s >= RELIST_S

    def observe(self, pods: Iterable[Any], ready: int, now_s: float) -> None:
        """Take a sample from each pod seen ready for the first time."""
        self.listed_at_ready, self.listed_at_s = ready, now_s
        uids = set()
        for pod in pods:
            uid = str(pod.metadata.uid or pod.metadata.name)
            uids.add(uid)
            if uid in self.seen:
                continue
            took = startup_seconds(pod)
            if took is None:
                self.starting.add(uid)
                continue
            self.seen.add(uid)
            if uid not in self.starting and took > TRUSTED_UNSEEN_S:
                continue  # found ready long after its creation: not a start we can time
            self.samples[uid] = took
            while len(self.samples) > KEEP:
                del self.samples[next(iter(self.samples))]
        self.seen &= uids | set(self.samples)
        self.starting &= uids

    @property
    def median_s(self) -> float | None:
        """The recent median, or None until a pod was seen ready."""
        return statistics.median(self.samples.values()) if self.samples else None
