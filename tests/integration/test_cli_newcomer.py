"""The newcomer's path (issue 17), as a user meets it: the real ``shoal`` command run from a
directory of their own. Task modules are found beside them or given as a path; every start-up
mistake (an HTTP server where Redis should be, a port in use, a module that fails to import,
Redis not there at all) ends in one line that says what was wrong and what to do."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from helpers import shoal_env

SHOAL = str(Path(sys.executable).with_name("shoal"))  # the console script, as users run it
ROOT = Path(__file__).resolve().parents[2]

TASKS = """\
import shoal

app = shoal.App()


@app.task(queue="newcomer")
def add(a: int, b: int) -> int:
    return a + b
"""


def shoal(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHOAL, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    """The whole output is one ``error:`` line (log lines of the wait aside), and no traceback."""
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == 2, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    assert output.rstrip().endswith(errors[0]), output
    return errors[0]


@pytest.fixture
def env(redis_url: str, key_prefix: str) -> dict[str, str]:
    return shoal_env(redis_url, key_prefix)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's directory with their own tasks.py."""
    (tmp_path / "tasks.py").write_text(TASKS)
    return tmp_path


# --- finding the task module ---------------------------------------------------------------------


def test_examples_tasks_runs_from_the_repository_root(env: dict[str, str]) -> None:
    env.pop("PYTHONPATH", None)
    done = shoal(ROOT, env, "worker", "examples.tasks", "--burst")
    assert done.returncode == 0, done.stderr


def test_tasks_beside_the_user_runs_by_module_name(project: Path, env: dict[str, str]) -> None:
    env.pop("PYTHONPATH", None)
    done = shoal(project, env, "worker", "tasks", "--burst")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("path", ["./tasks.py", "tasks.py", "./tasks.py:app"])
def test_a_path_to_the_task_file_is_imported_by_its_module_name(
    project: Path, env: dict[str, str], path: str
) -> None:
    done = shoal(project, env, "worker", path, "--burst")
    assert done.returncode == 0, done.stderr
    assert "queues newcomer" in done.stderr  # the worker really imported the user's app


def test_a_symlinked_task_file_in_the_directory_is_imported_by_its_own_name(
    tmp_path: Path, env: dict[str, str]
) -> None:
    # Given tasks kept elsewhere and linked into the project directory
    elsewhere, project = tmp_path / "shared", tmp_path / "project"
    elsewhere.mkdir()
    project.mkdir()
    (elsewhere / "real_tasks.py").write_text(TASKS)
    (project / "linked.py").symlink_to(elsewhere / "real_tasks.py")
    done = shoal(project, env, "worker", "linked.py", "--burst")
    assert done.returncode == 0, done.stderr
    assert "queues newcomer" in done.stderr


def test_a_path_into_a_package_is_its_dotted_name(env: dict[str, str]) -> None:
    done = shoal(ROOT, env, "worker", "examples/tasks.py", "--burst")
    assert done.returncode == 0, done.stderr
    assert "queues emails,reports" in done.stderr


def test_a_path_to_no_file_is_one_line_naming_the_module_to_pass(
    tmp_path: Path, env: dict[str, str]
) -> None:
    line = _one_error_line(shoal(tmp_path, env, "worker", "./tasks.py"))
    assert "no file ./tasks.py" in line
    assert "`shoal worker tasks`" in line


def test_a_path_outside_the_current_directory_says_where_to_run(
    project: Path, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    line = _one_error_line(shoal(elsewhere, env, "worker", str(project / "tasks.py")))
    assert f"cd {project} && shoal worker tasks" in line


def test_worker_help_says_where_modules_are_found_and_what_start_up_waits_for(
    tmp_path: Path, env: dict[str, str]
) -> None:
    done = shoal(tmp_path, env, "worker", "--help")
    text = " ".join(done.stdout.split())
    assert "current directory first on sys.path" in text
    assert "./tasks.py is `tasks`" in text
    assert "--wait-for-redis" in text


# --- one-line start-up errors --------------------------------------------------------------------


@pytest.fixture
def http_port() -> Iterator[int]:
    """A web server on a loopback port: what a mistyped SHOAL_REDIS_URL often points at."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["info", "--interval", "0"], id="info"),
        pytest.param(["worker", "tasks", "--burst"], id="worker"),
        pytest.param(["enqueue", "tasks.add", "--args", "[1, 2]"], id="enqueue"),
    ],
)
def test_a_redis_url_at_a_server_that_is_not_redis_is_one_line(
    project: Path, http_port: int, key_prefix: str, command: list[str]
) -> None:
    env = shoal_env(f"redis://127.0.0.1:{http_port}/0", key_prefix)
    line = _one_error_line(shoal(project, env, *command))
    assert f"the server at redis://127.0.0.1:{http_port}/0 answered, but not as Redis" in line
    assert "check its host and port" in line


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["worker", "tasks", "--burst"], id="worker"),
        pytest.param(["enqueue", "tasks.add", "--args", "[1, 2]"], id="enqueue"),
    ],
)
def test_redis_refusing_a_command_is_not_called_another_service(
    project: Path, redis_client: redis.Redis, redis_url: str, key_prefix: str, command: list[str]
) -> None:
    # Given an ACL user that may only read (Redis answers, and refuses what Shoal needs)
    redis_client.acl_setuser(
        "reader", enabled=True, passwords=["+pw"], keys=["*"], commands=["+@read", "+auth"]
    )
    try:
        url = redis_url.replace("redis://", "redis://reader:pw@", 1)
        line = _one_error_line(shoal(project, shoal_env(url, key_prefix), *command))
    finally:
        redis_client.acl_deluser("reader")
    assert "refused a command" in line and "no permissions" in line, line
    assert "not as Redis" not in line
    assert "pw@" not in line  # the password is masked


def test_a_health_port_in_use_is_one_line(project: Path, env: dict[str, str]) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = _one_error_line(
            shoal(project, env, "worker", "tasks", "--burst", "--health-port", str(port))
        )
    assert f"--health-port {port}: cannot listen there" in line
    assert "pass another port" in line


def test_a_module_that_fails_to_import_ends_with_its_errors_last_line(
    tmp_path: Path, env: dict[str, str]
) -> None:
    (tmp_path / "broken.py").write_text("import shoal\n\nraise KeyError('DATABASE_URL')\n")
    done = shoal(tmp_path, env, "worker", "broken")
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: could not import 'broken': KeyError: 'DATABASE_URL'."), last
    assert "python -c 'import broken'" in last


def test_a_redis_that_never_answers_is_waited_for_a_bounded_time_then_one_line(
    project: Path, key_prefix: str
) -> None:
    with socket.socket() as closed:  # a free port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = shoal_env(f"redis://127.0.0.1:{port}/0", key_prefix)
    done = shoal(project, env, "worker", "tasks", "--wait-for-redis", "2")
    line = _one_error_line(done)
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in line
    assert "(waited 2s," in line
    assert "--wait-for-redis SECONDS waits longer" in line
    waits = [x for x in done.stderr.splitlines() if "does not answer yet" in x]
    assert 1 <= len(waits) <= 4, done.stderr  # one line per backoff step: 0.5 s, 1 s, the rest


def test_no_wait_fails_at_once(project: Path, key_prefix: str) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = shoal_env(f"redis://127.0.0.1:{port}/0", key_prefix)
    done = shoal(project, env, "worker", "tasks", "--wait-for-redis", "0")
    _one_error_line(done)
    assert "does not answer yet" not in done.stderr


def test_version_flag(tmp_path: Path, env: dict[str, str]) -> None:
    from shoal.version import __version__

    for flag in ("--version", "-V"):
        done = shoal(tmp_path, env, flag)
        assert (done.returncode, done.stdout) == (0, f"shoal {__version__}\n")
