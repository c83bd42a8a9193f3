"""``shoal enqueue`` as a user runs it: arguments the task cannot take are refused before anything
is sent; a task the given ``--app`` does not define, and a queue no live worker consumes, are
each one line of warning on stderr (the message id alone stays on stdout)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import shoal_env, wait_for
from shoal import App

SHOAL = str(Path(sys.executable).with_name("shoal"))

TASKS = """\
import shoal

app = shoal.App()


@app.task(queue="billing")
def charge(customer_id: int, cents: int, *, currency: str = "EUR") -> None: ...
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "billing.py").write_text(TASKS)
    return tmp_path


@pytest.fixture
def env(redis_url: str, key_prefix: str) -> dict[str, str]:
    return shoal_env(redis_url, key_prefix)


def enqueue(project: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHOAL, "enqueue", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "why"),
    [
        pytest.param(["--args", "[42]"], "missing a required argument: 'cents'", id="missing"),
        pytest.param(["--args", "[1, 2, 3]"], "too many positional arguments", id="too-many"),
        pytest.param(
            ["--args", "[1, 2]", "--kwargs", '{"currncy": "USD"}'],
            "got an unexpected keyword argument 'currncy'",
            id="typo",
        ),
    ],
)
def test_arguments_the_function_cannot_take_are_refused_and_nothing_is_sent(
    project: Path, env: dict[str, str], app: App, args: list[str], why: str
) -> None:
    done = enqueue(project, env, "billing.charge", "--app", "billing", *args)

    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "task 'billing.charge' takes (customer_id, cents, *, currency='EUR')" in lines[0]
    assert why in lines[0]
    assert "nothing was enqueued" in lines[0]
    assert app.measure("billing").waiting == 0


def test_arguments_that_fit_are_enqueued_with_a_warning_when_no_worker_consumes_the_queue(
    project: Path, env: dict[str, str], app: App
) -> None:
    done = enqueue(project, env, "billing.charge", "--app", "billing", "--args", "[42, 500]")

    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 32  # the message id, alone: scripts read it
    assert done.stderr.strip().splitlines() == [
        "warning: no live worker consumes queue 'billing': the message waits until one does "
        "(`shoal worker MODULE --queues billing`; `shoal info --workers` lists workers)"
    ]
    assert app.measure("billing").waiting == 1


def test_no_warning_when_a_live_worker_consumes_the_queue(
    project: Path, env: dict[str, str], app: App, worker: Callable[..., Any]
) -> None:
    @app.task(name="billing.charge", queue="billing")
    def charge(customer_id: int, cents: int, *, currency: str = "EUR") -> None: ...

    running = worker(app, ["billing"], burst=False)
    try:
        wait_for(app.broker.workers, message="the worker registered")
        done = enqueue(project, env, "billing.charge", "--app", "billing", "--args", "[1, 2]")
    finally:
        running.stop()

    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_a_task_the_app_does_not_define_is_refused_with_the_likely_name(
    project: Path, env: dict[str, str], app: App
) -> None:
    done = enqueue(project, env, "charge", "--app", "billing", "--queue", "billing")

    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip() == (
        "error: billing defines no task 'charge' (did you mean 'billing.charge'?); nothing was "
        "enqueued (leave out --app to send a task by name that this app does not define)"
    )
    assert app.measure("billing").waiting == 0
    # without --app, a task is sent by name, as before
    assert enqueue(project, env, "charge", "--queue", "billing").returncode == 0
    assert app.measure("billing").waiting == 1


@pytest.mark.parametrize(
    ("option", "value"), [("--delay", "inf"), ("--delay", "nan"), ("--delay", "-1")]
)
def test_a_delay_that_is_not_a_finite_number_of_seconds_is_refused(
    project: Path, env: dict[str, str], option: str, value: str, app: App
) -> None:
    done = enqueue(project, env, "billing.charge", "--args", "[1, 2]", option, value)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "--delay" in done.stderr
    assert app.measure("default").waiting == 0


def test_queue_overrides_a_known_tasks_own_queue(
    project: Path, env: dict[str, str], app: App
) -> None:
    done = enqueue(
        project, env, "billing.charge", "--app", "billing", "--args", "[1, 2]", "-q", "urgent"
    )

    assert done.returncode == 0, done.stderr
    assert "queue 'urgent'" in done.stderr
    assert (app.measure("urgent").waiting, app.measure("billing").waiting) == (1, 0)
