"""Periodic schedules on a real Redis: each tick claimed once by many schedulers (one clock,
injected), Queue schedules beside code ones, ``shoal schedules``, and worker processes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from processes import WorkerProcess, runs, shoal_dev

from helpers import wait_for
from shoal import App
from shoal.cli import cli
from shoal.protocol import AsyncBroker
from shoal.scheduler import (
    Scheduler,
    next_unclaimed_tick,
    prune_stale,
    stored,
    write_queue_schedules,
)
from shoal.schedules import Run, Schedule, from_queue_spec, latest_tick, make, message_id
from topologies import Topology


def at(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


def ms(*parts: int) -> int:
    return round(at(*parts) * 1000)


class Clock:
    """The time every scheduler of a test reads: moved by the test, never by the wall clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_schedulers(app: App, queues: list[str], times: Sequence[float], n: int = 4) -> None:
    """``n`` schedulers, each with its own Redis connection, step together at each time."""
    clock = Clock(times[0])

    async def scenario() -> None:
        brokers = [AsyncBroker(app.settings) for _ in range(n)]
        schedulers = [
            Scheduler(app.producer, app.schedules.values(), b, queues, clock=clock) for b in brokers
        ]
        try:
            for now in times:
                clock.now = now
                await asyncio.gather(*(s.step() for s in schedulers))
        finally:
            for b in brokers:
                await b.close()

    asyncio.run(scenario())


def stored_ids(app: App, queue: str) -> set[str]:
    raw: dict[bytes, bytes] = app.broker.redis.hgetall(app.broker.keys(queue).messages)  # type: ignore[assignment]
    return {k.decode() for k in raw}


@pytest.mark.every_topology
def test_each_tick_is_enqueued_once_by_concurrent_schedulers(app: App) -> None:
    @app.periodic("*/5 * * * *", queue="reports", missed="run_once")
    def report() -> None: ...

    # Given four schedulers sharing one clock, stepping together through an hour with a gap
    times = [
        at(2024, 1, 1, 10, 0, 1),  # a new schedule, on time: runs
        at(2024, 1, 1, 10, 0, 30),  # claimed already: nothing
        at(2024, 1, 1, 10, 5, 0),
        at(2024, 1, 1, 10, 9, 59),
        at(2024, 1, 1, 10, 10, 2),
        at(2024, 1, 1, 10, 33, 0),  # no worker since 10:10: run_once runs 10:30, once
        at(2024, 1, 1, 10, 35, 0),
    ]
    run_schedulers(app, ["reports"], times)

    # Then each tick's message was enqueued once, with the tick's deterministic id
    ticks = [ms(2024, 1, 1, 10, m) for m in (0, 5, 10, 30, 35)]
    assert stored_ids(app, "reports") == {message_id("reports", report.name, t) for t in ticks}
    stats = app.measure("reports")
    assert stats.enqueued == 5 and stats.waiting == 5


@pytest.mark.every_topology
def test_queue_schedules_run_beside_code_ones_and_override_them_by_name(
    app: App, worker: Callable[..., Any], topology: Topology
) -> None:
    ran: list[tuple[Any, ...]] = []

    @app.periodic("* * * * *", queue="reports", name="minutely")
    def minutely() -> None:
        ran.append(("minutely",))

    @app.task(queue="reports", name="remote.cleanup")
    def cleanup(days: int) -> None:
        ran.append(("cleanup", days))

    # Given a Queue resource's schedule, as the operator writes it
    cr = {"name": "cr", "cron": "* * * * *", "task": cleanup.name, "args": [7]}
    write_queue_schedules(app.broker, "reports", [from_queue_spec("reports", cr)])
    run_schedulers(app, ["reports"], [at(2024, 1, 1, 10, 0, 1)], n=2)

    # Then both ran once, and the code schedule is listed in Redis too
    worker(app, ["reports"])
    assert sorted(ran) == [("cleanup", 7), ("minutely",)]
    names = topology.admin().hkeys(app.broker.keys("reports").schedules)
    assert sorted(names) == [b"cr", b"minutely"]  # type: ignore[arg-type]

    # When the Queue suspends the code schedule by name, and drops its own
    paused = from_queue_spec(
        "reports", {"name": "minutely", "cron": "* * * * *", "task": "minutely", "suspend": True}
    )
    write_queue_schedules(app.broker, "reports", [paused])
    ran.clear()
    run_schedulers(app, ["reports"], [at(2024, 1, 1, 10, 1, 1)], n=2)

    # Then nothing runs; the tick is claimed as skipped
    assert app.measure("reports").waiting == 0
    assert topology.admin().hkeys(app.broker.keys("reports").schedules) == [b"minutely"]

    # When the Queue drops it too, the code schedule is back (re-published) and runs again
    write_queue_schedules(app.broker, "reports", [])
    run_schedulers(app, ["reports"], [at(2024, 1, 1, 10, 2, 1)], n=2)
    assert b'"source":"code"' in app.broker.redis.hget(  # type: ignore[operator]
        app.broker.keys("reports").schedules, "minutely"
    )
    worker(app, ["reports"])
    assert ran == [("minutely",)]


def test_shoal_schedules_lists_next_run_last_run_and_outcome(
    app: App, worker: Callable[..., Any], monkeypatch: pytest.MonkeyPatch, key_prefix: str
) -> None:
    @app.periodic("*/5 * * * *", queue="jobs", name="ok", timezone="Asia/Tokyo")
    def ok() -> None: ...

    @app.periodic("*/5 * * * *", queue="jobs", name="boom", max_retries=0)
    def boom() -> None:
        raise RuntimeError("boom")

    @app.periodic("1 10 * * *", queue="jobs", name="later")
    def later() -> None: ...

    app.schedule(ok, cron="0 0 1 1 *", name="yearly", missed="run_once")

    # Given ok and boom run at 10:00 (and were executed), yearly's tick was not on time
    # (skipped), and later's 10:01 tick is waiting
    run_schedulers(app, ["jobs"], [at(2024, 1, 1, 10, 0, 1)], n=2)
    worker(app, ["jobs"])
    run_schedulers(app, ["jobs"], [at(2024, 1, 1, 10, 1, 1)], n=2)

    monkeypatch.setenv("SHOAL_REDIS_URL", app.settings.redis_url)
    monkeypatch.setenv("SHOAL_KEY_PREFIX", key_prefix)
    monkeypatch.setenv("COLUMNS", "300")
    result = CliRunner().invoke(cli, ["schedules", "--queue", "jobs"])
    assert result.exit_code == 0, result.output
    lines = {  # piped: plain tab-separated rows, queue then name
        line.split("\t")[1]: line
        for line in result.output.splitlines()
        if line.startswith("jobs\t")
    }
    assert set(lines) == {"ok", "boom", "later", "yearly"}
    assert "failed (dead-lettered)" in lines["boom"]
    assert "waiting/running" in lines["later"] and "2024-01-01 10:01:00 UTC" in lines["later"]
    assert "finished" in lines["ok"] and "(Asia/Tokyo)" in lines["ok"] and "JST" in lines["ok"]
    assert "late" not in lines["ok"]  # claimed 1 s after its time: on time
    assert "not run (new)" in lines["yearly"] and "2024-01-01 00:00:00 UTC" not in lines["yearly"]
    assert lines["yearly"].split("\t")[7] == "-"  # last run: none, its only tick was skipped

    # And since the workers last declared them in (injected) 2024, they are listed as stale,
    # and --prune removes them with their claims
    assert all("stale: no worker declares it" in line for line in lines.values())
    pruned = CliRunner().invoke(cli, ["schedules", "--queue", "jobs", "--prune"])
    assert pruned.exit_code == 0, pruned.output
    assert pruned.output.count("removed stale schedule") == 4
    assert app.broker.redis.hlen(app.broker.keys("jobs").schedules) == 0
    assert app.broker.redis.hlen(app.broker.keys("jobs").schedule_runs) == 0


def test_shoal_schedules_shows_a_late_tick_and_why(
    app: App, monkeypatch: pytest.MonkeyPatch, key_prefix: str
) -> None:
    @app.periodic("*/5 * * * *", queue="woken", name="woke-late")
    def woke_late() -> None: ...

    @app.periodic("0 * * * *", queue="busy", name="delayed")
    def delayed() -> None: ...

    @app.periodic("0 * * * *", queue="asleep", name="skipper")
    def skipper() -> None: ...

    @app.periodic("0 * * * *", queue="asleep", name="catcher", missed="run_once")
    def catcher() -> None: ...

    # Given a worker that started 41 s after a tick (a fleet at zero woken too late): it runs
    run_schedulers(app, ["woken"], [at(2024, 1, 1, 10, 0, 41)], n=1)
    # a worker up since 9:00 that could not claim 10:00 until 10:00:30 (Redis was away)
    run_schedulers(app, ["busy"], [at(2024, 1, 1, 9, 0, 0), at(2024, 1, 1, 10, 0, 30)], n=1)
    # and no worker at all between 9:00 and 10:05: skip drops 10:00, run_once runs it
    run_schedulers(app, ["asleep"], [at(2024, 1, 1, 9, 0, 0)], n=1)
    run_schedulers(app, ["asleep"], [at(2024, 1, 1, 10, 5, 0)], n=1)

    monkeypatch.setenv("SHOAL_REDIS_URL", app.settings.redis_url)
    monkeypatch.setenv("SHOAL_KEY_PREFIX", key_prefix)
    monkeypatch.setenv("COLUMNS", "400")
    queues = ["--queue", "woken", "--queue", "busy", "--queue", "asleep"]
    result = CliRunner().invoke(cli, ["schedules", *queues])
    assert result.exit_code == 0, result.output
    lines = {  # piped: plain tab-separated rows, queue then name
        line.split("\t")[1]: line
        for line in result.output.splitlines()
        if line.count("\t") > 3 and not line.startswith("QUEUE\t")
    }
    assert set(lines) == {"woke-late", "delayed", "skipper", "catcher"}, result.output

    # Then each says how late its last tick was, and why
    assert "waiting/running, late 41s: no worker was running at the tick" in lines["woke-late"]
    assert "late 30s: the running workers could not claim it in time" in lines["delayed"]
    assert "skipped: missed while no worker ran (claimed 5m 0s late)" in lines["skipper"]
    assert lines["skipper"].split("\t")[7] == "-"  # skipped: no last run to show
    assert "late 5m 0s: missed while no worker ran (run_once)" in lines["catcher"]


def test_next_unclaimed_tick_is_what_a_fleet_at_zero_is_woken_for(app: App) -> None:
    # Given a Queue's minutely schedule and a suspended every-second one, a code schedule the
    # workers still declare (yearly), one they stopped declaring 11 minutes before their
    # latest declaration (removed from the code), and an unreadable entry
    keys = app.broker.keys("q")
    now_ms = app.broker.time_ms()
    every_second = {"cron": "* * * * * *", "task": "t"}
    write_queue_schedules(
        app.broker,
        "q",
        [
            from_queue_spec("q", {"name": "minutely", "cron": "* * * * *", "task": "t"}),
            from_queue_spec("q", {"name": "paused", "suspend": True, **every_second}),
        ],
    )
    code = {n: make(name=n, queue="q", **every_second) for n in ("removed", "kept")}
    code["kept"] = make(name="kept", queue="q", cron="0 0 1 1 *", task="t")
    app.broker.redis.hset(
        keys.schedules, mapping={**{n: s.to_json() for n, s in code.items()}, "broken": b"{"}
    )
    app.broker.redis.hset(
        keys.schedules_seen, mapping={"removed": now_ms - 11 * 60_000, "kept": now_ms}
    )

    # Then the fleet is woken for the minutely one: its latest tick while a worker would still
    # run it (within its 30 s grace; never claimed), else its next one
    first = next_unclaimed_tick(app.broker, ["q", "empty"], hold_s=300)
    assert first is not None and first.schedule == "minutely" and first.queue == "q"
    assert -30 <= first.in_s <= 60

    # When a worker has claimed up to the coming minute, the next is the one after it
    raw = app.broker.redis.hget(keys.schedules, "minutely")
    minutely = Schedule.from_json("q", raw)  # type: ignore[arg-type]
    tick_ms = latest_tick(minutely, app.broker.time_ms() + 60_000)
    claim = Run(tick_ms, "id", tick_ms, minutely.timing, "due")
    app.broker.redis.hset(keys.schedule_runs, "minutely", claim.encode())
    second = next_unclaimed_tick(app.broker, ["q"], hold_s=300)
    assert second is not None and second.schedule == "minutely"
    assert second.in_s > first.in_s

    # And with nothing but suspended or far schedules, nothing is imminent
    app.broker.redis.hdel(keys.schedules, "minutely", "removed")
    far = next_unclaimed_tick(app.broker, ["q"], hold_s=300)
    assert far is not None and far.schedule == "kept" and far.in_s > 0
    assert next_unclaimed_tick(app.broker, ["empty"], hold_s=300) is None


def test_worker_processes_run_each_tick_once(
    redis_url: str,
    key_prefix: str,
    redis_client: redis.Redis,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    # Given two replicas of two worker processes each, all ticking an every-second schedule
    env = {"SHOAL_KEY_PREFIX": key_prefix}
    procs = [
        worker_process(redis_url, "--processes", "2", app_spec="scheduled_tasks:app", **env)
        for _ in range(2)
    ]

    # Then ticks run, each exactly once, under distinct ids
    wait_for(
        lambda: len(runs(redis_client, key_prefix)) >= 2,
        timeout=20,
        message=f"2 ticks run; logs: {procs[0].log()}",
    )
    for proc in procs:
        proc.kill()
    counts = runs(redis_client, key_prefix)
    # A tick claimed twice would enqueue its (deterministic) id twice, and run twice under it
    assert set(counts.values()) == {1}, counts
    enqueued = int(redis_client.hget(f"{key_prefix}:{{ticks}}:stats", "enqueued") or 0)
    assert enqueued >= len(counts)  # a tick enqueued just before the kill may not have run


# --- robustness (found in review) --------------------------------------------------------


def test_a_broken_claim_or_schedule_never_stops_the_others(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    @app.periodic("* * * * *", queue="q", name="a")
    def a() -> None: ...

    @app.periodic("* * * * *", queue="q", name="b")
    def b() -> None: ...

    # Given a claim value nobody can parse (written by hand, or by a future version)
    app.broker.redis.hset(app.broker.keys("q").schedule_runs, "a", "garbage")

    run_schedulers(app, ["q"], [at(2024, 1, 1, 10, 0, 1)], n=2)

    # Then both ticks ran: the claim script reads a broken value as "never claimed"
    assert stored_ids(app, "q") == {message_id("q", n, ms(2024, 1, 1, 10, 0)) for n in "ab"}


def test_a_schedule_that_cannot_be_ticked_is_reported_once_and_the_others_run(
    app: App, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.periodic("* * * * *", queue="q", name="fine")
    def fine() -> None: ...

    @app.periodic("*/2 * * * *", queue="q", name="cursed")
    def cursed() -> None: ...

    import shoal.scheduler as scheduler_module

    real = scheduler_module.decide

    def decide(schedule: Any, last: Any, now_ms: int) -> Any:
        if schedule.name == "cursed":
            raise ValueError("croniter cannot walk this")
        return real(schedule, last, now_ms)

    monkeypatch.setattr(scheduler_module, "decide", decide)
    run_schedulers(app, ["q"], [at(2024, 1, 1, 10, 0, 1), at(2024, 1, 1, 10, 1, 1)], n=1)

    assert stored_ids(app, "q") == {
        message_id("q", "fine", ms(2024, 1, 1, 10, 0)),
        message_id("q", "fine", ms(2024, 1, 1, 10, 1)),
    }
    reports = [r for r in caplog.records if "croniter cannot walk this" in r.getMessage()]
    assert len(reports) == 1 and "schedule cursed on q: cannot tick it" in reports[0].getMessage()


def test_schedulers_keep_redis_time_whatever_their_host_clock_says(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shoal.scheduler as scheduler_module

    real_time = scheduler_module.time.time
    monkeypatch.setattr(scheduler_module.time, "time", lambda: real_time() + 86_400)  # a day ahead

    async def now_after_refresh() -> float:
        broker = AsyncBroker(app.settings)
        try:
            scheduler = Scheduler(app.producer, app.schedules.values(), broker, ["q"])
            await scheduler.refresh()
            return scheduler.now()
        finally:
            await broker.close()

    redis_now = float(app.broker.redis.time()[0])  # type: ignore[index]
    assert abs(asyncio.run(now_after_refresh()) - redis_now) < 5


def test_a_queue_schedule_removed_and_added_back_starts_afresh(app: App) -> None:
    every = from_queue_spec(
        "q", {"name": "d", "cron": "0 * * * *", "task": "t", "missed": "runOnce"}
    )
    write_queue_schedules(app.broker, "q", [every])
    run_schedulers(app, ["q"], [at(2024, 1, 1, 10, 0, 1)], n=1)
    assert len(stored_ids(app, "q")) == 1

    # When it is removed, its claim goes with it; added back days later, it runs no backlog
    write_queue_schedules(app.broker, "q", [])
    assert app.broker.redis.hget(app.broker.keys("q").schedule_runs, "d") is None
    write_queue_schedules(app.broker, "q", [every])
    run_schedulers(app, ["q"], [at(2024, 1, 5, 10, 30)], n=1)
    assert len(stored_ids(app, "q")) == 1


def test_an_invalid_edit_keeps_the_last_valid_version(app: App) -> None:
    paused = from_queue_spec("q", {"name": "d", "cron": "0 * * * *", "task": "t", "suspend": True})
    assert write_queue_schedules(app.broker, "q", [paused])

    # When the Queue's entry becomes invalid (a typo in its zone), it is kept as it was
    assert not write_queue_schedules(app.broker, "q", [], keep={"d"})
    assert b'"suspend":true' in app.broker.redis.hget(app.broker.keys("q").schedules, "d")  # type: ignore[operator]
    assert not write_queue_schedules(app.broker, "q", [paused])  # nothing differs: no write


def test_the_same_queue_schedule_on_two_queues_runs_on_both(app: App) -> None:
    spec = {"name": "purge", "cron": "* * * * *", "task": "t"}
    for q in ("qa", "qb"):
        write_queue_schedules(app.broker, q, [from_queue_spec(q, spec)])

    run_schedulers(app, ["qa", "qb"], [at(2024, 1, 1, 10, 0, 1)], n=2)

    assert stored_ids(app, "qa") == {message_id("qa", "purge", ms(2024, 1, 1, 10, 0))}
    assert stored_ids(app, "qb") == {message_id("qb", "purge", ms(2024, 1, 1, 10, 0))}


def test_prune_keeps_what_live_workers_declare_whatever_the_cli_clock_says(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shoal.scheduler as scheduler_module

    @app.periodic("* * * * *", queue="q", name="live")
    def live() -> None: ...

    async def declare() -> None:  # what a worker does at each refresh, on Redis's clock
        broker = AsyncBroker(app.settings)
        try:
            await Scheduler(app.producer, app.schedules.values(), broker, ["q"]).refresh()
        finally:
            await broker.close()

    asyncio.run(declare())
    real_time = scheduler_module.time.time
    monkeypatch.setattr(scheduler_module.time, "time", lambda: real_time() + 11 * 60)
    assert prune_stale(app.broker, "q") == []


def test_a_new_release_updates_a_code_schedule_whatever_its_arguments_say(app: App) -> None:
    def declare(cron: str) -> None:
        fresh = App(redis_url=app.settings.redis_url, key_prefix=app.settings.key_prefix)
        fresh.periodic(cron, queue="q", name="odd", args=['"source":"queue"'])(lambda _: None)

        async def refresh() -> None:
            broker = AsyncBroker(fresh.settings)
            try:
                await Scheduler(fresh.producer, fresh.schedules.values(), broker, ["q"]).refresh()
            finally:
                await broker.close()

        asyncio.run(refresh())
        fresh.close()

    declare("0 * * * *")
    declare("30 * * * *")
    stored = app.broker.redis.hget(app.broker.keys("q").schedules, "odd")
    assert stored is not None and b'"cron":"30 * * * *"' in stored  # type: ignore[operator]


DEV_MANIFEST = """
apiVersion: shoal.dev/v1alpha1
kind: Queue
metadata: {name: burst}
spec:
  redis: {url: "redis://cluster-redis:6379/0", keyPrefix: %(prefix)s}
  schedules:
    - {name: daily, cron: "%(cron)s", task: crunch, args: [1]}
---
apiVersion: shoal.dev/v1alpha1
kind: Worker
metadata: {name: crunchers}
spec:
  image: example/tasks:1
  module: dev_tasks
  queues: [burst]
  autoscaling:
    enabled: true
    minReplicas: 0
    maxReplicas: 2
    pollSeconds: 0.5
    scaleToZeroAfterSeconds: 0
    scaleDownStabilizationSeconds: 0
    scheduleLeadSeconds: 6
"""


def test_shoal_dev_wakes_its_fleet_at_zero_for_a_schedule(
    redis_url: str, key_prefix: str, app: App, tmp_path: Path
) -> None:
    # Given shoal dev with a Worker at zero, and a Queue schedule due 10 s from now (daily)
    due_ms = (app.broker.time_ms() // 1000 + 10) * 1000
    due = datetime.fromtimestamp(due_ms / 1000, UTC)
    manifest = tmp_path / "queue.yaml"
    cron = f"{due.minute} {due.hour} * * * {due.second}"
    manifest.write_text(DEV_MANIFEST % {"prefix": key_prefix, "cron": cron})
    log = tmp_path / "dev.log"
    with shoal_dev(manifest, redis_url, log):
        # Then a local worker starts with nothing waiting, the tick runs, and the fleet goes
        # back to zero once it is claimed
        wait_for(app.broker.workers, timeout=20, message="a worker woken")
        wait_for(
            lambda: app.measure("burst").completed == 1, timeout=30, message="the tick's task run"
        )
        (row,) = stored(app.broker, "burst")
        assert row.last is not None and row.last.tick_ms == due_ms
        wait_for(lambda: app.broker.workers() == [], timeout=30, message="back to zero")
    logged = " ".join(log.read_text().split())  # a long line may wrap
    assert "crunchers: 0 → 1 (warming for schedule daily at " in logged
    assert " on burst, due in " in logged


def test_a_code_schedule_removed_from_the_only_code_that_had_one_stops_waking_the_fleet(
    app: App,
) -> None:
    """Workers running code with no schedules for a queue declare none; they must still mark
    the queue as declared, or a removed schedule would look current (and wake a fleet at zero
    at every tick) for ever."""
    keys = app.broker.keys("q")
    now_ms = app.broker.time_ms()
    every_second = make(name="removed", queue="q", cron="* * * * * *", task="t")
    app.broker.redis.hset(keys.schedules, "removed", every_second.to_json())
    app.broker.redis.hset(keys.schedules_seen, "removed", now_ms - 24 * 3600_000)
    assert next_unclaimed_tick(app.broker, ["q"], hold_s=300) is not None  # nothing newer yet

    # When a worker of the new code (no schedules on q) refreshes
    async def refresh() -> None:
        broker = AsyncBroker(app.settings)
        try:
            await Scheduler(app.producer, app.schedules.values(), broker, ["q"]).refresh()
        finally:
            await broker.close()

    asyncio.run(refresh())

    # Then the removed schedule no longer wakes anyone
    assert next_unclaimed_tick(app.broker, ["q"], hold_s=300) is None
