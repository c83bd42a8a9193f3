"""The autoscaling policy: one pure function from a queue snapshot to a replica count and why.

No I/O here (import-linter forbids ``redis``): the operator and ``shoal dev`` measure, this
decides, they act. It is built to beat KEDA + HPA defaults on the failures users hit:

* a burst at zero replicas is answered on the next poll (default 2 s), not the next 30 s;
* scale-up goes to what is needed in one decision, sized from measured per-replica
  throughput when a latency target is set, not by "+4 or double" steps every 15 s;
* in-flight work counts (KEDA's LLEN sees only the waiting list);
* scale-down waits out a stabilisation window (the highest recommendation in it wins, like
  HPA's), moves in bounded steps, and reaches zero only after real idleness, measured from the
  last task activity rather than the last poll;
* unless the load's shape says holding costs more: each replica level remembers its last quiet
  spells (the time between two polls that needed it); a level whose recent spells last on
  average ``RELEASE_FACTOR`` pod start-ups, and each at least one, is released as soon as
  waiting + in flight say so (down to zero once idle for a poll), since starting its pod again
  costs less than holding it. Noise gives the levels it touches short spells, so a noisy load
  keeps the window: no flapping;
* when the schedules explain all the recent work (no arrival outside a tick's run for
  ``UNSCHEDULED_MEMORY_S``), releases follow the upcoming ticks instead: replicas a warm-up
  starting within a start-up and a poll will need are kept, the rest go as soon as waiting + in
  flight allow (to zero when no warm-up is that close);
* missing or stale data never scales anything down;
* a fleet wakes ahead of its queues' next scheduled tick, ready when it fires: the lead is the
  measured pod start-up (``Snapshot.startup_s``; ``schedule_lead_s`` until one was measured),
  the size is what the schedule's last runs produced (``expected_tasks`` / target per replica;
  ticks due together add up);
  it stays up until a worker has claimed that tick, or for at most ``schedule_hold_s`` after
  it: schedules run whether or not tasks keep a worker up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Policy:
    """``Worker.spec.autoscaling``, in seconds."""

    min_replicas: int = 0
    max_replicas: int = 10
    target_per_replica: int = 20
    """Waiting + in-flight tasks one replica should hold (KEDA's ``listLength``)."""
    target_wait_s: float | None = None
    """Size the fleet so the oldest waiting task starts within this (needs measured throughput)."""
    activation_threshold: int = 0
    """Waiting tasks above which a fleet at zero wakes up (KEDA's activation)."""
    scale_to_zero_after_s: float = 300.0
    stabilization_s: float = 45.0
    """Scale-down window: the highest recommendation seen in it is what the fleet shrinks to."""
    max_scale_down_step: int | None = None
    poll_s: float = 2.0
    schedule_lead_s: float = 60.0
    """Wake the fleet this long before a scheduled tick is due, until a pod start-up has been
    measured (then the measured one sets the lead): a pod's start-up (image pull, imports,
    readiness), so a worker is there to claim the tick on time."""
    schedule_hold_s: float = 300.0
    """Keep a woken fleet up at most this long after a tick no worker has claimed (a pod
    that cannot start, a code schedule no longer in the code), so a tick never pins it up."""

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True, slots=True)
class ScheduledTick:
    """The earliest tick of the fleet's schedules that no worker has claimed yet."""

    schedule: str
    queue: str
    in_s: float
    """Seconds until it is due (Redis's clock); negative once due and still unclaimed."""
    due_at: float | None = None
    """When it is due, epoch seconds (Redis's clock), for saying so ("at 03:00" UTC)."""
    expected_tasks: int = 0
    """How many tasks its last runs produced (0: not known yet): how many replicas to warm."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the operator measured this tick. Rates in tasks/s, times in seconds."""

    now: float
    waiting: int
    in_flight: int
    current_replicas: int
    ready_replicas: int
    delayed_due_soon: int = 0
    oldest_wait_s: float = 0.0
    arrival_rate: float = 0.0
    completion_rate: float = 0.0
    fresh: bool = True
    """False when Redis could not be read this tick: then nothing moves."""
    next_tick: ScheduledTick | None = None
    """The next unclaimed scheduled tick of the fleet's queues, if any."""
    upcoming_ticks: tuple[ScheduledTick, ...] = ()
    """The next few ticks of each of the fleet's schedules, earliest first (unclaimed ones
    included): what the fleet will be woken for. Empty: only ``next_tick`` is known."""
    startup_s: float | None = None
    """Measured pod start-up (created → ready), recent median; None until one was seen. The
    lead before a scheduled tick is taken from it rather than a constant."""
    rate_cap: float | None = None
    """Starts per second the rate limits of the fleet's queues allow in all, when every queue
    with work has one (None otherwise): a fleet completing that much is held by its limits, and
    another replica would only idle."""


@dataclass(frozen=True, slots=True)
class State:
    """What the policy remembers between ticks (kept by the caller, returned anew each tick)."""

    recommendations: tuple[tuple[float, int], ...] = ()
    per_replica_rate: float | None = None
    """Smoothed completions per second per ready replica, measured while there was work."""
    last_activity: float | None = None
    """When the queue last had work or progress; idleness for scale-to-zero counts from here."""
    last_needed: tuple[float, ...] = ()
    """When each replica level (index 0: the first replica) was last needed by the work."""
    warmed: tuple[float, int, str] | None = None
    """The last warm-up for a tick: (last poll it was asked for, replicas, schedule)."""
    ready_before: int | None = None
    """Ready replicas at the previous poll: a throughput sample counts only if they held."""
    quiet_spells: tuple[tuple[float, ...], ...] = ()
    """Each level's last ``SPELLS_KEPT`` quiet spells: seconds between two polls needing it."""
    tick_work_since: float | None = None
    """When the open run of scheduled work began (a warm-up for a tick), None when the queue
    went idle after it: work seen while one is open is explained by the schedule."""
    unscheduled_at: float | None = None
    """The last poll that saw work no tick explains (None: none seen yet)."""
    first_poll: float | None = None
    """When this policy state began (an operator restart begins anew): the schedules are not
    trusted to explain the work until it has watched for UNSCHEDULED_MEMORY_S."""


@dataclass(frozen=True, slots=True)
class Decision:
    replicas: int
    reason: str
    state: State = field(default_factory=State)


def policy_from_spec(autoscaling: dict[str, Any]) -> Policy:
    """``Worker.spec.autoscaling`` (camelCase, as in the CRD) as a Policy."""
    return Policy(
        min_replicas=int(autoscaling.get("minReplicas", 0)),
        max_replicas=int(autoscaling.get("maxReplicas", 10)),
        target_per_replica=int(autoscaling.get("targetPerReplica", 20)),
        target_wait_s=autoscaling.get("targetWaitSeconds"),
        activation_threshold=int(autoscaling.get("activationThreshold", 0)),
        scale_to_zero_after_s=float(autoscaling.get("scaleToZeroAfterSeconds", 300)),
        stabilization_s=float(autoscaling.get("scaleDownStabilizationSeconds", 45)),
        max_scale_down_step=autoscaling.get("maxScaleDownStep"),
        poll_s=float(autoscaling.get("pollSeconds", 2)),
        schedule_lead_s=float(autoscaling.get("scheduleLeadSeconds", 60)),
    )


RATE_SMOOTHING = 0.3
"""Weight of the newest per-replica throughput sample (an EWMA: steady, yet quick to learn)."""
RELEASE_FACTOR = 2.0
"""A level is released early when its recent quiet spells last this many start-ups on average:
holding a pod through them costs twice what starting it again does."""
SPELLS_KEPT = 3
"""Quiet spells remembered per level. Each must outlast one start-up too: a level that came
back sooner than a pod could start is held (one long lull among noise releases nothing)."""
UNSCHEDULED_MEMORY_S = 300.0
"""Releases follow the schedules only once this long has passed without work that no tick
explains: one unscheduled arrival puts the fleet back under the window and its spells."""
TICK_WORK_S = 120.0
"""A tick's work explains what arrives for this long after its warm-up began, if the queue goes
idle within it; a steady load that never idles is not a schedule's, however often ticks come."""
WARM_GRACE_POLLS = 2
"""Polls a warm fleet keeps its size after its tick stopped being reported (claimed): the tick's
tasks are enqueued by the worker that claimed it, just after, and must meet the warm pods."""


@dataclass(frozen=True, slots=True)
class _Warm:
    """A scheduled tick the fleet must be up for: how many replicas, and why."""

    replicas: int
    why: str
    schedule: str


def decide(policy: Policy, snap: Snapshot, state: State | None = None) -> Decision:
    """The replicas the fleet should have now, and a sentence saying why."""
    state = state or State()
    if state.first_poll is None:
        state = replace(state, first_poll=snap.now)
    current = snap.current_replicas
    if not snap.fresh:
        return Decision(current, f"no fresh measurement: holding {current}", state)

    ready_work = snap.waiting + snap.delayed_due_soon
    busy = ready_work + snap.in_flight > 0
    progressing = snap.completion_rate > 0 or snap.arrival_rate > 0
    warm = _warm(policy, snap)
    if warm is not None:
        state = replace(state, warmed=(snap.now, warm.replicas, warm.schedule))
    elif (
        state.warmed is not None and snap.now - state.warmed[0] <= WARM_GRACE_POLLS * policy.poll_s
    ):
        _, replicas, schedule = state.warmed
        warm = _Warm(replicas, f"kept warm for schedule {schedule}'s tick, just claimed", schedule)
    # A warm-up counts as activity: once its tick is claimed, the fleet idles from here.
    active = busy or progressing or warm is not None
    state = replace(state, last_activity=snap.now if active else state.last_activity)
    state = _learn_origin(state, snap, warm is not None, busy)
    scheduled = _schedule_driven(snap, state)
    state = _learn_rate(state, snap)
    wanted, why = _needed(policy, snap, state)
    if warm is not None and warm.replicas > wanted:
        wanted, why = warm.replicas, warm.why
    state = _learn_spells(state, snap.now, policy.clamp(max(wanted, int(active))), policy)

    if current == 0 and ready_work <= policy.activation_threshold and snap.in_flight == 0:
        floor = policy.min_replicas
        if warm is not None:
            woken = policy.clamp(warm.replicas)
            return Decision(
                woken, f"{warm.why} → {woken}", _remember(state, snap.now, woken, policy)
            )
        reason = (
            f"{ready_work} waiting ≤ activation threshold {policy.activation_threshold}"
            if ready_work
            else "idle"
        )
        return Decision(floor, f"{reason} → {floor}", _remember(state, snap.now, floor, policy))

    if not busy:
        startup = _startup_cost(policy, snap)
        idle_for = snap.now - (state.last_activity if state.last_activity is not None else snap.now)
        asleep = warm is None and policy.min_replicas == 0
        if asleep and idle_for >= policy.scale_to_zero_after_s:
            return Decision(
                0,
                f"idle for {idle_for:.0f}s ≥ {policy.scale_to_zero_after_s:.0f}s → 0",
                _remember(state, snap.now, 0, policy),
            )
        if warm is None and scheduled and snap.arrival_rate == 0 and current > 0:
            return _follow_schedule(policy, snap, state, _needed_soon(policy, snap, startup))
        if asleep:
            early = _sleep_early(policy, state, startup)
            if idle_for >= policy.poll_s and early:
                return Decision(
                    0,
                    f"idle for {idle_for:.0f}s, {early} → 0",
                    _remember(state, snap.now, 0, policy),
                )
        wanted = max(wanted, 1 if current > 0 or warm is not None else 0)
        if warm is None or warm.replicas < wanted:
            why = f"idle for {idle_for:.0f}s (zero after {policy.scale_to_zero_after_s:.0f}s)"
    target = policy.clamp(wanted)
    state = _remember(state, snap.now, target, policy)

    if target >= current:
        return Decision(target, f"{why} → {target}", state)
    if scheduled and warm is None:
        soon = _needed_soon(policy, snap, _startup_cost(policy, snap))
        held = _step(policy, current, policy.clamp(max(target, min(current, soon[0]))))
        if held < current:
            return Decision(held, f"{why}; {_schedule_says(snap, soon)} → {held}", state)
    return _shrink(policy, snap, state, target, why)


def _learn_origin(state: State, snap: Snapshot, warming: bool, busy: bool) -> State:
    """Tell scheduled work from the rest: a warm-up opens a run of tick work, which ends when
    the queue is idle again; work seen outside one, or after TICK_WORK_S in one, is not a
    schedule's (its time is remembered)."""
    since = state.tick_work_since
    if warming and since is None:
        since = snap.now
    working = busy or snap.arrival_rate > 0
    explained = since is not None and snap.now - since <= TICK_WORK_S
    unscheduled = state.unscheduled_at
    if working and not explained:
        unscheduled = snap.now
    if not working and not warming:
        since = None
    return replace(state, tick_work_since=since, unscheduled_at=unscheduled)


def _schedule_driven(snap: Snapshot, state: State) -> bool:
    """Whether the schedules explain the fleet's work: there are upcoming ticks, and no
    unexplained work was seen for UNSCHEDULED_MEMORY_S."""
    if not _ticks(snap):
        return False
    last = state.unscheduled_at if state.unscheduled_at is not None else state.first_poll
    return last is None or snap.now - last >= UNSCHEDULED_MEMORY_S


def _needed_soon(policy: Policy, snap: Snapshot, startup_s: float) -> tuple[int, str | None, float]:
    """(replicas, schedule, seconds): what the warm-ups starting within a pod start-up and a
    poll will need (holding a pod that long costs no more than starting it again), the first
    of those schedules and when its warm-up starts; (0, None, s) when none is that close (s:
    until the next warm-up, inf with none)."""
    horizon = startup_s + policy.poll_s
    lead = _lead_s(policy, snap)
    ahead = sorted(((max(0.0, t.in_s - lead), t) for t in _ticks(snap)), key=lambda x: x[0])
    close = [t for until, t in ahead if until <= horizon]
    needed = sum(_warm_size(policy, t) for t in close)
    first_in = ahead[0][0] if ahead else math.inf
    return needed, close[0].schedule if close else None, first_in


def _schedule_says(snap: Snapshot, soon: tuple[int, str | None, float]) -> str:
    needed, schedule, until = soon
    if needed and schedule is not None:
        return (
            f"only scheduled work lately: schedule {schedule}'s warm-up in {_seconds(until)} "
            f"needs {needed}"
        )
    nxt = min(_ticks(snap), key=lambda t: t.in_s)
    return (
        f"only scheduled work lately: the next warm-up (schedule {nxt.schedule}) is "
        f"{_seconds(until)} away, more than a pod start-up"
    )


def _step(policy: Policy, current: int, target: int) -> int:
    """``target``, but at most ``max_scale_down_step`` below ``current`` (every way down)."""
    if policy.max_scale_down_step is None:
        return target
    return max(target, current - policy.max_scale_down_step)


def _follow_schedule(
    policy: Policy, snap: Snapshot, state: State, soon: tuple[int, str | None, float]
) -> Decision:
    """An idle fleet whose work is all scheduled: keep what the warm-ups starting within a
    start-up need, release the rest now (to zero when none is that close)."""
    keep = _step(policy, snap.current_replicas, policy.clamp(min(snap.current_replicas, soon[0])))
    why = f"idle, {_schedule_says(snap, soon)} → {keep}"
    return Decision(keep, why, _remember(state, snap.now, keep, policy))


def _shrink(policy: Policy, snap: Snapshot, state: State, target: int, why: str) -> Decision:
    """Scale down: the highest recommendation in the window holds, but for the levels on top
    whose quiet spells outlast RELEASE_FACTOR start-ups; then a bounded step."""
    current, startup = snap.current_replicas, _startup_cost(policy, snap)
    held = max(target, min(current, max(r for _, r in state.recommendations)))
    window_high = held
    # Spells must outlast the window too. (A known warm-up far away is no excuse here: with
    # unscheduled work about, noise between ticks would release levels it needs again; when
    # the schedules explain all the work, decide() releases by them before coming here.)
    at_least = policy.stabilization_s
    while held > target and _long_spells(state, held, startup, at_least):
        held -= 1
    shrink_to = _step(policy, current, held)
    if shrink_to == current:
        return Decision(
            current,
            f"{why} → {target}, held at {current} for the "
            f"{policy.stabilization_s:.0f}s stabilisation window",
            state,
        )
    if held < window_high:
        spell = min(
            _long_spells(state, n, startup, at_least) for n in range(held + 1, window_high + 1)
        )
        which = (
            f"replica {window_high}"
            if held + 1 == window_high
            else (f"replicas {held + 1}-{window_high}")
        )
        why += (
            f"; {which} released early: quiet spells there last ≥ {spell:.0f}s on average "
            f"(pod start-up {startup:.0f}s)"
        )
    return Decision(shrink_to, f"{why} → {shrink_to}", state)


def _startup_cost(policy: Policy, snap: Snapshot) -> float:
    """What starting a pod costs, in seconds: measured, else the configured schedule lead."""
    return snap.startup_s if snap.startup_s is not None else policy.schedule_lead_s


def _lead_s(policy: Policy, snap: Snapshot) -> float:
    """How long before a tick to start pods: the measured start-up plus one poll (decisions
    come a poll apart, so pods are ready up to a poll early, never late for a median pod); the
    configured lead until a start-up has been measured."""
    if snap.startup_s is None:
        return policy.schedule_lead_s
    return snap.startup_s + policy.poll_s


def _ticks(snap: Snapshot) -> tuple[ScheduledTick, ...]:
    """The upcoming ticks the snapshot knows: all of them, or at least the next one."""
    if snap.upcoming_ticks:
        return snap.upcoming_ticks
    return () if snap.next_tick is None else (snap.next_tick,)


def _warm_size(policy: Policy, tick: ScheduledTick) -> int:
    return max(1, math.ceil(tick.expected_tasks / policy.target_per_replica))


def _warm(policy: Policy, tick_snap: Snapshot) -> _Warm | None:
    """The replicas the scheduled ticks need now, or None: ticks due within the lead, or due
    and unclaimed for less than the hold, each sized from what its last runs produced (ticks
    that close together add up). Said for the earliest."""
    lead = _lead_s(policy, tick_snap)
    due = [t for t in _ticks(tick_snap) if -policy.schedule_hold_s <= t.in_s <= lead]
    if not due:
        return None
    tick = min(due, key=lambda t: t.in_s)
    replicas = sum(_warm_size(policy, t) for t in due)
    if tick.in_s <= 0:
        why = f"schedule {tick.schedule} on {tick.queue} due {_seconds(-tick.in_s)} ago, "
        why += "not claimed yet"
    elif tick.due_at is not None:
        at = datetime.fromtimestamp(tick.due_at, UTC).strftime("%H:%M")
        source = "measured start-up" if tick_snap.startup_s is not None else "scheduleLeadSeconds"
        why = (
            f"warming for schedule {tick.schedule} at {at} on {tick.queue}, due in "
            f"{_seconds(tick.in_s)} (lead {_seconds(lead)}, {source})"
        )
    else:
        why = f"schedule {tick.schedule} on {tick.queue} due in {_seconds(tick.in_s)}"
    if tick.expected_tasks:
        why += f", {tick.expected_tasks} tasks last run"
    if len(due) > 1:
        why += f" (and {len(due) - 1} more tick{'s' if len(due) > 2 else ''} with it)"
    return _Warm(replicas, why, tick.schedule)


def _seconds(s: float) -> str:
    whole = max(0, math.ceil(s))
    return f"{whole}s" if whole < 60 else f"{whole // 60}m {whole % 60}s"


RATE_BOUND = 0.9
"""A fleet completing this share of its queues' rate limits is held by them (see rate_cap)."""


def _needed(policy: Policy, snap: Snapshot, state: State) -> tuple[int, str]:
    """Replicas the work needs: by backlog per replica, and by throughput for the latency
    target. The larger wins."""
    backlog = snap.waiting + snap.delayed_due_soon + snap.in_flight
    by_backlog = math.ceil(backlog / policy.target_per_replica)
    parts = [f"{snap.waiting} waiting", f"{snap.in_flight} in flight"]
    if snap.arrival_rate:
        parts.append(f"{snap.arrival_rate:.1f}/s arriving")
    wanted = by_backlog
    rate = state.per_replica_rate
    if rate:
        parts.append(f"{rate:.1f}/s per replica")
        sustain = math.ceil(snap.arrival_rate / rate) if snap.arrival_rate else 0
        wanted = max(wanted, sustain)
        if policy.target_wait_s:
            drain = (
                snap.arrival_rate + (snap.waiting + snap.delayed_due_soon) / policy.target_wait_s
            )
            wanted = max(wanted, math.ceil(drain / rate))
            if snap.oldest_wait_s > policy.target_wait_s:
                parts.append(f"oldest waited {snap.oldest_wait_s:.1f}s > {policy.target_wait_s:g}s")
                wanted = max(wanted, snap.current_replicas + 1)
    cap = snap.rate_cap
    if cap and wanted > snap.current_replicas > 0 and snap.completion_rate >= RATE_BOUND * cap:
        parts.append(f"held by the queues' rate limits ({cap:g}/s): more replicas would idle")
        wanted = snap.current_replicas
    return wanted, ", ".join(parts)


def _learn_rate(state: State, snap: Snapshot) -> State:
    """Per-replica throughput, learned only while tasks were waiting: then every ready slot is
    busy (workers pull whenever a slot frees), so completions measure capacity. A fleet with
    free slots completes what arrives, which says nothing about what it could do; replicas that
    became ready during the poll did not work all of it, so such a poll is skipped too."""
    saturated = snap.waiting > 0
    held = state.ready_before in (None, snap.ready_replicas)
    state = replace(state, ready_before=snap.ready_replicas)
    if snap.ready_replicas <= 0 or snap.completion_rate <= 0 or not saturated or not held:
        return state
    sample = snap.completion_rate / snap.ready_replicas
    old = state.per_replica_rate
    rate = sample if old is None else old + RATE_SMOOTHING * (sample - old)
    return replace(state, per_replica_rate=rate)


def _learn_spells(state: State, now: float, needed: int, policy: Policy) -> State:
    """Levels 1..needed are needed now: a level not needed at the previous poll ends a quiet
    spell, remembered (the last SPELLS_KEPT) to judge how long its next one will be."""
    if needed <= 0:
        return state
    last, spells = list(state.last_needed), list(state.quiet_spells)
    for level in range(needed):
        if level == len(last):
            last.append(now)
            spells.append(())
            continue
        spell = now - last[level]
        if spell > 1.5 * policy.poll_s:  # at least one poll did not need it
            spells[level] = (*spells[level][1 - SPELLS_KEPT :], spell)
        last[level] = now
    return replace(state, last_needed=tuple(last), quiet_spells=tuple(spells))


def _long_spells(state: State, level: int, startup_s: float, at_least_s: float = 0.0) -> float:
    """The mean quiet spell of a level (1-based) when its spells are long enough to release it
    early (mean ≥ RELEASE_FACTOR start-ups; each ≥ one, and ≥ at_least_s); 0 when not, or none
    known. With at_least_s the stabilisation window, an early release only moves a release the
    window would make anyway to the start of the spell: it adds no scale-up."""
    if not 0 < level <= len(state.quiet_spells) or not state.quiet_spells[level - 1]:
        return 0.0
    spells = state.quiet_spells[level - 1]
    mean = sum(spells) / len(spells)
    long = mean >= RELEASE_FACTOR * startup_s and min(spells) >= max(startup_s, at_least_s)
    return mean if long else 0.0


def _sleep_early(policy: Policy, state: State, startup_s: float) -> str | None:
    """Why an idle fleet may go to zero now rather than after scale_to_zero_after_s, or None:
    its idle spells outlast the window and RELEASE_FACTOR start-ups."""
    spell = _long_spells(state, 1, startup_s, policy.stabilization_s)
    if spell:
        return f"quiet spells here last {spell:.0f}s on average (pod start-up {startup_s:.0f}s)"
    return None


def _remember(state: State, now: float, replicas: int, policy: Policy) -> State:
    keep = tuple((t, r) for t, r in state.recommendations if now - t < policy.stabilization_s)
    return replace(state, recommendations=(*keep, (now, replicas)))
