"""Scriptable listings (issue 17): piped, ``info``, ``info --workers``, ``dlq list``, ``dlq show``
and ``schedules`` print whole, plain, tab-separated rows; each takes ``-o json|yaml|wide``; on a
terminal they draw tables, and ``info --watch`` redraws. Run as a user does: the real command, its
stdout a pipe (or a pseudo-terminal), never a stand-in."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from helpers import on_a_terminal, shoal_env, wait_for
from shoal import App

LONG_QUEUE = "reports-for-the-quarterly-board-meeting-of-the-holding-company"
LONG_ERROR = "the upstream said no " + "and no again " * 20


@pytest.fixture
def env(redis_url: str, key_prefix: str) -> dict[str, str]:
    env = shoal_env(redis_url, key_prefix)
    env.pop("NO_COLOR", None)
    env["COLUMNS"] = "80"
    return env


def shoal(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m shoal ARGS``, its stdout a pipe (what ``| grep``, ``| cut`` see)."""
    done = subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def _plain(out: str) -> None:
    """Nothing a terminal would interpret, no box drawing, no markup."""
    assert "\x1b" not in out, out
    assert not set(out) & set("│┃━─┏┗"), out
    assert "[bold]" not in out, out


def _rows(out: str) -> list[list[str]]:
    return [line.split("\t") for line in out.splitlines() if line]


@pytest.fixture
def dead_letter(app: App, worker: Callable[..., Any]) -> str:
    """The id of a dead letter of queue ``failing`` whose error is long and has a newline."""

    @app.task(name="jobs.explode", queue="failing", max_retries=0)
    def explode() -> None:
        raise RuntimeError(LONG_ERROR + "\nsecond line\tafter a tab")

    handle = explode.enqueue()
    worker(app, ["failing"])
    return handle.id


# --- info ----------------------------------------------------------------------------------------


def test_info_piped_prints_whole_tab_separated_rows(app: App, env: dict[str, str]) -> None:
    app.remote("a.task", queue=LONG_QUEUE).enqueue()
    app.remote("a.task", queue="small").enqueue_many([(), ()])

    out = shoal(env, "info", "--interval", "0").stdout

    _plain(out)
    header, *rows = _rows(out)
    assert header[:7] == ["QUEUE", "STATE", "WAITING", "IN_FLIGHT", "DELAYED", "DEAD", "OLDEST"]
    assert {r[0]: r[2] for r in rows} == {LONG_QUEUE: "1", "small": "2"}  # whole, never "repor…"
    assert all(len(r) == len(header) for r in rows)


def test_info_shows_each_queue_state_and_rate_limit(app: App, env: dict[str, str]) -> None:
    # Given a paused queue with a rate limit, and a queue with neither
    for q in ("limited", "free"):
        app.remote("a.task", queue=q).enqueue()
    app.configure_queue("limited", rate_limit="20/s")
    app.pause("limited")

    # Then piped rows end with the rate limit ("-": none), after the columns scripts cut by
    header, *rows = _rows(shoal(env, "info", "--interval", "0").stdout)
    assert header[-1] == "RATE_LIMIT" and header[1] == "STATE"
    by_queue = {r[0]: r for r in rows}
    assert (by_queue["limited"][1], by_queue["limited"][-1]) == ("paused", "20/s")
    assert (by_queue["free"][1], by_queue["free"][-1]) == ("active", "-")

    # And the records carry both, the limit null when none
    data = json.loads(shoal(env, "info", "--interval", "0", "-o", "json").stdout)
    assert {q["queue"]: (q["paused"], q["rate_limit"]) for q in data} == {
        "limited": (True, "20/s"),
        "free": (False, None),
    }


def test_info_queue_option_takes_commas_as_well_as_repeats(app: App, env: dict[str, str]) -> None:
    for q in ("a", "b", "c"):
        app.remote("a.task", queue=q).enqueue()

    comma = shoal(env, "info", "--interval", "0", "-q", "a,b").stdout
    repeated = shoal(env, "info", "--interval", "0", "-q", "a", "-q", "b").stdout

    assert [r[0] for r in _rows(comma)[1:]] == ["a", "b"]
    assert [r[0] for r in _rows(repeated)[1:]] == ["a", "b"]


@pytest.mark.parametrize("flag", [["-o", "json"], ["--output", "json"], ["--json"]])
def test_info_json(app: App, env: dict[str, str], flag: list[str]) -> None:
    app.remote("a.task", queue="j").enqueue()

    data = json.loads(shoal(env, "info", "--interval", "0", *flag).stdout)

    assert [(q["queue"], q["waiting"], q["dead"]) for q in data] == [("j", 1, 0)]
    assert "completed_per_s" in data[0]


def test_info_yaml_with_workers(app: App, env: dict[str, str], worker: Callable[..., Any]) -> None:
    app.remote("a.task", queue="y").enqueue()
    running = worker(app, ["y"], burst=False)
    try:
        wait_for(app.broker.workers, message="the worker registered")
        out = shoal(env, "info", "--interval", "0", "--workers", "-o", "yaml").stdout
        piped = shoal(env, "info", "--interval", "0", "--workers").stdout
    finally:
        running.stop()

    data = yaml.safe_load(out)
    assert [q["queue"] for q in data["queues"]] == ["y"]
    [registered] = data["workers"]
    assert registered["queues"] == ["y"]
    # piped: the queues' rows, a blank line, the workers' rows; ids whole
    queues_block, workers_block = piped.split("\n\n")
    assert _rows(queues_block)[1][0] == "y"
    assert _rows(workers_block)[0][:3] == ["ID", "HOST", "QUEUES"]
    assert _rows(workers_block)[1][0] == registered["id"]


def test_info_wide_adds_columns_on_a_terminal(app: App, env: dict[str, str]) -> None:
    app.remote("a.task", queue="w").enqueue()
    env = {**env, "TERM": "xterm-256color", "COLUMNS": "250"}

    narrow = on_a_terminal(env, ["info", "--interval", "0"])
    wide = on_a_terminal(env, ["info", "--interval", "0", "-o", "wide"])

    assert "dead total" not in narrow and "dead total" in wide
    assert "rate limit" not in narrow and "rate limit" in wide
    assert "┃" in narrow  # a drawn table, not rows


def test_info_watch_redraws_on_a_terminal_until_interrupted(app: App, env: dict[str, str]) -> None:
    app.remote("a.task", queue="watched").enqueue()
    env = {**env, "TERM": "xterm-256color", "COLUMNS": "200"}

    out = on_a_terminal(
        env, ["info", "--watch", "--interval", "0.2"], until=lambda o: o.count("watched") >= 3
    )

    assert out.count("watched") >= 3  # drawn, then redrawn


def test_info_watch_piped_prints_a_block_per_refresh(app: App, env: dict[str, str]) -> None:
    app.remote("a.task", queue="watched").enqueue()
    proc = subprocess.Popen(
        [sys.executable, "-m", "shoal", "info", "--watch", "--interval", "0.1"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        headers = 0
        while headers < 2:
            line = proc.stdout.readline()
            assert line, "shoal info --watch stopped printing"
            headers += line.startswith("QUEUE\t")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        proc.stdout.close()
    assert proc.returncode == 0


# --- dlq -----------------------------------------------------------------------------------------


def test_dlq_list_piped_keeps_each_entry_whole_on_one_line(
    dead_letter: str, env: dict[str, str]
) -> None:
    out = shoal(env, "dlq", "list", "failing").stdout

    _plain(out)
    header, *rows = _rows(out)
    assert header == ["ID", "TASK", "REASON", "ATTEMPTS", "FAILED_AT", "ERROR"]
    [row] = rows
    assert row[0] == dead_letter  # the whole id: `cut -f1` gives what `dlq show` takes
    assert row[1:4] == ["jobs.explode", "retries_exhausted", "1"]
    assert row[5] == f"RuntimeError: {LONG_ERROR}\\nsecond line\\tafter a tab"  # whole, escaped


def test_dlq_list_json_and_yaml(dead_letter: str, env: dict[str, str]) -> None:
    as_json = json.loads(shoal(env, "dlq", "list", "failing", "-o", "json").stdout)
    as_yaml = yaml.safe_load(shoal(env, "dlq", "list", "failing", "-o", "yaml").stdout)

    assert as_json == as_yaml
    [entry] = as_json
    assert entry["id"] == dead_letter
    assert entry["error"].endswith("second line\tafter a tab")


def test_dlq_show_piped_is_field_tab_value_without_markup(
    dead_letter: str, env: dict[str, str]
) -> None:
    out = shoal(env, "dlq", "show", "failing", dead_letter).stdout

    _plain(out)
    fields = dict(line.split("\t", 1) for line in out.splitlines())
    assert fields["id"] == dead_letter
    assert fields["reason"] == "retries_exhausted"
    assert fields["error"].endswith("\\nsecond line\\tafter a tab")
    assert fields["traceback"].startswith("Traceback (most recent call last):\\n")
    assert json.loads(fields["message"])["id"] == dead_letter


def test_dlq_show_json(dead_letter: str, env: dict[str, str]) -> None:
    data = json.loads(shoal(env, "dlq", "show", "failing", dead_letter, "-o", "json").stdout)

    assert (data["id"], data["task"], data["replayable"]) == (dead_letter, "jobs.explode", True)
    assert data["traceback"].startswith("Traceback")


def test_dlq_show_on_a_terminal_prints_no_literal_markup(
    dead_letter: str, env: dict[str, str]
) -> None:
    out = on_a_terminal({**env, "TERM": "xterm-256color"}, ["dlq", "show", "failing", dead_letter])

    assert "[bold]" not in out and "[/bold]" not in out
    assert "retries_exhausted" in out


# --- schedules -----------------------------------------------------------------------------------


def test_schedules_json_and_a_schedule_that_never_ran(app: App, env: dict[str, str]) -> None:
    from shoal.scheduler import write_queue_schedules
    from shoal.schedules import from_queue_spec

    write_queue_schedules(
        app.broker,
        "nightly",
        [from_queue_spec("nightly", {"name": "rollup", "cron": "0 3 * * *", "task": "x.rollup"})],
    )

    piped = shoal(env, "schedules", "-q", "nightly").stdout
    data = json.loads(shoal(env, "schedules", "-q", "nightly", "-o", "json").stdout)

    _plain(piped)
    header, row = _rows(piped)
    assert dict(zip(header, row, strict=True))["LAST_RUN"] == "-"
    [entry] = data
    assert (entry["name"], entry["task"], entry["last_run_ms"]) == ("rollup", "x.rollup", None)
