"""Queue figures (``app.measure``) and the CLI that shows them: ``shoal info``, ``enqueue``."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner

from helpers import wait_for
from shoal import App
from shoal.cli import cli


@pytest.fixture
def shoal_env(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str
) -> Iterator[dict[str, str]]:
    """The environment a ``shoal`` command reads: this test's Redis and key prefix."""
    for name in [k for k in os.environ if k.startswith("SHOAL_")]:
        monkeypatch.delenv(name)
    env = {"SHOAL_REDIS_URL": redis_url, "SHOAL_KEY_PREFIX": key_prefix, "COLUMNS": "250"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield env


def shoal(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``python -m shoal`` command."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_measure_reports_every_figure(
    app: App, worker: Callable[..., Any], redis_client: redis.Redis
) -> None:
    release = threading.Event()
    started = threading.Event()

    @app.task(queue="m", max_retries=0)
    def blocker() -> None:
        started.set()
        assert release.wait(20)

    @app.task(queue="m", max_retries=0)
    def fails() -> None:
        raise ValueError("no")

    @app.task(queue="m")
    def quick() -> None: ...

    # Given: an empty queue measures all zeros
    empty = app.measure("m")
    assert (empty.waiting, empty.in_flight, empty.delayed, empty.dead) == (0, 0, 0, 0)
    assert empty.oldest_age_s == 0.0

    # When: one fails to the DLQ and one completes
    fails.enqueue()
    quick.enqueue()
    worker(app, ["m"])
    done = app.measure("m")
    assert (done.dead, done.dead_total, done.completed, done.enqueued) == (1, 1, 1, 2)

    # When: one is running, two wait and one is delayed
    running = worker(app, ["m"], concurrency=1, burst=False)
    blocker.enqueue()
    assert started.wait(10)
    quick.enqueue()
    quick.enqueue()
    quick.with_options(delay=3600).enqueue()

    # Then every figure says so, and the oldest waiting message has an age
    stats = wait_for(
        lambda: (s := app.measure("m")).oldest_age_s > 0 and s, message="an oldest age > 0"
    )
    assert (stats.waiting, stats.in_flight, stats.delayed, stats.dead) == (2, 1, 1, 1)
    assert 0 < stats.oldest_age_s < 60
    assert stats.enqueued == 6
    assert stats.completed == 1

    # And once the blocker is released the two quick ones complete too
    release.set()
    wait_for(lambda: app.measure("m").completed == 4, message="4 completions")
    running.stop()
    final = app.measure("m")
    assert (final.waiting, final.in_flight, final.delayed) == (0, 0, 1)


def test_info_json_shows_the_figures(app: App, shoal_env: dict[str, str]) -> None:
    @app.task(queue="reports")
    def report(n: int) -> None: ...

    report.enqueue_many([(1,), (2,), (3,)])
    report.with_options(delay=600).enqueue(4)

    result = CliRunner().invoke(cli, ["info", "--json", "--interval", "0.01"])
    assert result.exit_code == 0, result.output
    rows = {row["queue"]: row for row in orjson.loads(result.output)}
    assert set(rows) == {"reports"}
    assert rows["reports"]["waiting"] == 3
    assert rows["reports"]["delayed"] == 1
    assert rows["reports"]["in_flight"] == 0
    assert rows["reports"]["enqueued"] == 4


def test_info_table_shows_the_figures(
    app: App, shoal_env: dict[str, str], worker: Callable[..., Any]
) -> None:
    @app.task(queue="emails", max_retries=0)
    def email(ok: bool) -> None:
        if not ok:
            raise RuntimeError("bounced")

    email.enqueue(False)
    worker(app, ["emails"])
    email.enqueue_many([(True,)] * 7)

    done = shoal("info", "--interval", "0.01", env=shoal_env)
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "emails" in line)
    cells = row.split("\t")  # piped: plain tab-separated rows
    # queue, state, waiting, in flight, delayed, dead, oldest, done/s, enqueued/s, completed, …,
    # rate limit (last)
    assert cells[:6] == ["emails", "active", "7", "0", "0", "1"], row
    assert cells[9] == "0"  # completed: the one that ran failed
    assert cells[-1] == "-"  # no rate limit on the queue


def test_info_with_no_queues_says_so(shoal_env: dict[str, str], redis_url: str) -> None:
    result = CliRunner().invoke(cli, ["info", "--interval", "0"])
    assert result.exit_code == 0
    assert "No queues yet" in result.output


def test_enqueue_cli_puts_a_message_a_worker_runs(
    app: App, shoal_env: dict[str, str], worker: Callable[..., Any]
) -> None:
    got: list[tuple[Any, ...]] = []

    @app.task(name="cli.say", queue="cli")
    def say(word: str, *, times: int = 1) -> None:
        got.append((word, times))

    done = shoal(
        "enqueue",
        "cli.say",
        "--queue",
        "cli",
        "--args",
        '["hello"]',
        "--kwargs",
        '{"times": 3}',
        env=shoal_env,
    )
    assert done.returncode == 0, done.stderr
    message_id = done.stdout.strip()
    assert len(message_id) == 32
    assert app.measure("cli").waiting == 1

    worker(app, ["cli"])
    assert got == [("hello", 3)]


def test_enqueue_cli_refuses_bad_json(shoal_env: dict[str, str]) -> None:
    result = CliRunner().invoke(cli, ["enqueue", "x.y", "--args", "{oops"])
    assert result.exit_code == 2
    assert "--args/--kwargs must be JSON" in result.output


WRONG_URL = {"SHOAL_REDIS_URL": "redis://:secret@127.0.0.1:1/0"}


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["info", "--interval", "0"], id="info"),
        pytest.param(["enqueue", "a.task"], id="enqueue"),
    ],
)
def test_cli_wrong_redis_url_is_a_clear_error_without_the_password(command: list[str]) -> None:
    done = shoal(*command, env=WRONG_URL)
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    assert done.returncode == 2, output
    assert "secret" not in output
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in " ".join(output.split())


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["info", "--interval", "0"], id="info"),
        pytest.param(["enqueue", "a.task"], id="enqueue"),
    ],
)
def test_cli_wrong_redis_url_error_is_one_line(command: list[str]) -> None:
    done = shoal(*command, env=WRONG_URL)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "cannot reach Redis at redis://:***@127.0.0.1:1/0" in lines[0]
