"""KEDA (redis-list scaler) + HPA v2, at their documented defaults.

KEDA polls every ``pollingInterval`` (30 s): it reads LLEN (waiting tasks only), wakes a
Deployment at 0 to 1 replica when the list is above ``activationListLength`` (0), and scales it
to 0 once ``cooldownPeriod`` (300 s) has passed since the last poll that saw it active. The value
it read is what the HPA sees until the next poll (the metric is refreshed at each poll).

The HPA syncs every 15 s (``--horizontal-pod-autoscaler-sync-period``) while replicas > 0, on an
External metric with an AverageValue target of ``listLength`` (5) per replica:

* raw = ceil(LLEN / 5), unless LLEN / (5 x replicas) is within 10 % of 1 (then: no change);
* scale-up: no stabilisation window, at most max(+4 pods, +100 %) per 15 s period, counted from
  the replicas at the start of the period (``selectPolicy: Max``);
* scale-down: the highest raw recommendation of the last 300 s, at most -100 % per 15 s,
  never below 1 (KEDA's minReplicaCount 0 makes the HPA's minReplicas 1);
* which pods go is the ReplicaSet's choice: not-yet-ready pods first, then (no
  pod-deletion-cost is set) a random ready one; the tasks it was running are interrupted.

Phases: KEDA polls at t ≡ 0 (mod 30 s), the HPA syncs at t ≡ 0 (mod 15 s), and when both fall on
the same instant the poll comes first, so the HPA acts on a fresh value at once. Real phases are
arbitrary; this is the most favourable alignment for KEDA.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .simulator import Fleet, Pod

EPS = 1e-6


@dataclass(frozen=True, slots=True)
class KedaConfig:
    polling_s: float = 30.0
    cooldown_s: float = 300.0
    list_length: int = 5
    activation_list_length: int = 0
    sync_s: float = 15.0
    tolerance: float = 0.1
    up_pods: int = 4
    up_percent: int = 100
    up_period_s: float = 15.0
    down_stabilization_s: float = 300.0
    down_percent: int = 100
    down_period_s: float = 15.0
    max_replicas: int = 100


@dataclass
class KedaHpa:
    config: KedaConfig = field(default_factory=KedaConfig)
    seed: int = 0
    drains: bool = False
    metric: int = 0
    last_active: float | None = None
    next_poll: float = 0.0
    next_sync: float = 0.0
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    events: list[tuple[float, int]] = field(default_factory=list)
    """HPA scale events (time, change in replicas): the scale-up and -down rate limits."""

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def tick(self, now: float, fleet: Fleet) -> int | None:
        replicas = fleet.replicas
        wanted: int | None = None
        if now + EPS >= self.next_poll:
            self.next_poll += self.config.polling_s
            wanted = self._poll(now, fleet.waiting, replicas)
            replicas = replicas if wanted is None else wanted
        if now + EPS >= self.next_sync:
            self.next_sync += self.config.sync_s
            if replicas > 0:
                synced = self._sync(now, replicas)
                wanted = synced if synced != replicas else wanted
        return wanted

    def _poll(self, now: float, waiting: int, replicas: int) -> int | None:
        cfg = self.config
        self.metric = waiting
        if waiting > cfg.activation_list_length:
            self.last_active = now
            return 1 if replicas == 0 else None
        idle_since = self.last_active if self.last_active is not None else -math.inf
        if replicas > 0 and now - idle_since >= cfg.cooldown_s - EPS:
            return 0
        return None

    def _sync(self, now: float, current: int) -> int:
        cfg = self.config
        ratio = self.metric / (cfg.list_length * current)
        raw = current if abs(1.0 - ratio) <= cfg.tolerance else -(-self.metric // cfg.list_length)
        # Stabilisation: none upwards; downwards, the highest recommendation in the window.
        window = [r for t, r in self.recommendations if t > now - cfg.down_stabilization_s + EPS]
        self.recommendations = [
            (t, r) for t, r in self.recommendations if t > now - cfg.down_stabilization_s + EPS
        ]
        self.recommendations.append((now, raw))
        desired = min(max(current, raw), max([raw, *window]))
        if desired > current:
            start = current - self._changed(now, cfg.up_period_s, up=True)
            limit = max(start + cfg.up_pods, math.ceil(start * (1 + cfg.up_percent / 100)))
            desired = min(desired, max(limit, current), cfg.max_replicas)
        elif desired < current:
            start = current + self._changed(now, cfg.down_period_s, up=False)
            floor = math.floor(start * (1 - cfg.down_percent / 100))
            desired = max(desired, floor, 1)
        if desired != current:
            self.events.append((now, desired - current))
            self.events = [(t, d) for t, d in self.events if now - t < 600]
        return desired

    def _changed(self, now: float, period: float, *, up: bool) -> int:
        """Replicas added (up) or removed (down) by the HPA within the last period."""
        return sum(abs(d) for t, d in self.events if t > now - period + EPS and (d > 0) == up)

    def victims(self, pods: Sequence[Pod], count: int) -> list[Pod]:
        starting = [p for p in pods if not p.ready]
        ready = [p for p in pods if p.ready]
        chosen = starting[:count]
        if count > len(chosen):
            chosen += self.rng.sample(ready, count - len(chosen))
        return chosen
