"""The start-up decisions of the ``shoal`` command, without processes: how long a worker waits for
Redis and what it says meanwhile; how a path names a task module; which arguments a task's
function refuses. The sleeps are recorded, never slept."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from shoal import cli_startup as startup
from shoal.cli import module_spec
from shoal.errors import BrokerError, ConfigurationError, EnqueueError


class FlakyBroker:
    """Fails ``failures`` pings with ``error``, then answers."""

    def __init__(self, failures: int, error: BaseException | None = None) -> None:
        self.failures = failures
        self.error = error or BrokerError("cannot reach Redis at redis://r:1/0: refused.")
        self.pings = 0

    def ping(self) -> None:
        self.pings += 1
        if self.pings <= self.failures:
            raise self.error


def _app(broker: FlakyBroker) -> Any:
    return SimpleNamespace(broker=broker, settings=SimpleNamespace(redis_url="redis://r:1/0"))


def test_the_wait_backs_off_with_one_line_per_try_and_returns_once_redis_answers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    slept: list[float] = []
    broker = FlakyBroker(failures=6)

    with caplog.at_level(logging.INFO, "shoal.startup"):
        startup.wait_for_redis(_app(broker), float("inf"), sleep=slept.append)

    assert slept == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0]  # doubling, capped at 10 s
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 6
    assert all("waiting for ever" in w for w in warnings)
    assert caplog.records[-1].getMessage() == "Redis at redis://r:1/0 answers; starting"


def test_the_wait_gives_up_with_one_error_naming_the_option() -> None:
    broker = FlakyBroker(failures=10**6)
    clock = [0.0]

    def sleep(seconds: float) -> None:  # time passes only in the recorded sleeps
        clock[0] += seconds

    real = startup.time.monotonic
    startup.time.monotonic = lambda: clock[0]  # type: ignore[assignment]
    try:
        with pytest.raises(BrokerError) as raised:
            startup.wait_for_redis(_app(broker), 30.0, sleep=sleep)
    finally:
        startup.time.monotonic = real  # type: ignore[assignment]

    assert clock[0] == 30.0  # 0.5+1+2+4+8+10 = 25.5, then the 4.5 s left: never past the bound
    message = str(raised.value)
    assert message.startswith("cannot reach Redis at redis://r:1/0: refused (waited 30s, 8 tries)")
    assert message.endswith("--wait-for-redis SECONDS waits longer at start-up")


def test_no_wait_tries_once() -> None:
    broker = FlakyBroker(failures=1)
    with pytest.raises(BrokerError, match=r"refused; --wait-for-redis"):
        startup.wait_for_redis(_app(broker), 0, sleep=pytest.fail)
    assert broker.pings == 1


def test_a_server_that_is_not_redis_fails_at_once() -> None:
    import redis

    broker = FlakyBroker(failures=1, error=redis.exceptions.InvalidResponse("got '<'"))
    with pytest.raises(ConfigurationError, match=r"answered, but not as Redis \(got '<'\)"):
        startup.wait_for_redis(_app(broker), float("inf"), sleep=pytest.fail)


def test_wrong_credentials_are_not_waited_for() -> None:
    import redis

    error = BrokerError("cannot reach Redis at redis://r:1/0: invalid password.")
    error.__cause__ = redis.exceptions.AuthenticationError("invalid password")
    with pytest.raises(BrokerError, match="invalid password"):
        startup.wait_for_redis(_app(FlakyBroker(1, error)), 60, sleep=pytest.fail)


def _charge(customer_id: int, cents: int, *, currency: str = "EUR") -> None: ...


def test_arguments_are_bound_to_the_signature() -> None:
    startup.check_arguments(_charge, "b.charge", [1, 2], {"currency": "USD"})
    with pytest.raises(EnqueueError) as refused:
        startup.check_arguments(_charge, "b.charge", [1], {})
    assert str(refused.value) == (
        "task 'b.charge' takes (customer_id, cents, *, currency='EUR'), not --args [1] "
        "--kwargs {}: missing a required argument: 'cents'; nothing was enqueued"
    )


def test_a_function_without_a_signature_is_let_through() -> None:
    startup.check_arguments(print.__call__, "builtin", [1, 2, 3], {"x": 1})


@pytest.mark.parametrize(
    ("known", "hint"),
    [
        (["billing.charge", "billing.refund"], "did you mean 'billing.charge'?"),
        (["billing.chrage"], "did you mean 'billing.chrage'?"),
        (["other.thing"], "it has: other.thing"),
        ([], "it has: none"),
    ],
)
def test_an_unknown_task_name_gets_the_likeliest_known_ones(known: list[str], hint: str) -> None:
    name = "charge" if known[:1] != ["billing.chrage"] else "billing.charge"
    assert startup.unknown_task_hint(name, known) == hint


@pytest.fixture
def in_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    for path in ("tasks.py", "pkg/__init__.py", "pkg/sub/jobs.py", "my-tasks.py"):
        (tmp_path / path).write_text("")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("given", "module"),
    [
        ("tasks", "tasks"),
        ("tasks:app", "tasks:app"),
        ("pkg.sub.jobs:worker_app", "pkg.sub.jobs:worker_app"),
        ("./tasks.py", "tasks"),
        ("tasks.py:app", "tasks:app"),
        ("pkg/sub/jobs.py", "pkg.sub.jobs"),
        ("pkg/__init__.py", "pkg"),
    ],
)
def test_module_spec_turns_a_path_under_the_current_directory_into_its_module(
    in_project: Path, given: str, module: str
) -> None:
    assert module_spec(given) == module


def test_module_spec_takes_an_absolute_path_under_the_current_directory(in_project: Path) -> None:
    assert module_spec(os.path.join(in_project, "pkg", "sub", "jobs.py")) == "pkg.sub.jobs"


@pytest.mark.parametrize(
    ("given", "says"),
    [
        ("./nope.py", "no file ./nope.py"),
        ("pkg/sub", "is not a Python file"),
        ("my-tasks.py", "cannot be imported as a module"),
        ("/etc/passwd.py", "no file /etc/passwd.py"),
    ],
)
def test_module_spec_refuses_what_cannot_be_a_module_in_one_line(
    in_project: Path, given: str, says: str
) -> None:
    with pytest.raises(ConfigurationError, match=says) as raised:
        module_spec(given)
    assert "\n" not in str(raised.value)
