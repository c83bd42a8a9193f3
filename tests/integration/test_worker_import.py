"""``shoal worker MODULE``: imported from the current directory; a module that raises at import
shows its own traceback and one line of advice, without Shoal's, click's or importlib's frames,
whether it fails in the supervisor or only in a worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

SHOAL = str(Path(sys.executable).with_name("shoal"))  # the console script, as users run it

BROKEN = """\
import shoal

app = shoal.App()


def connect_to_billing():
    raise RuntimeError("billing endpoint is not configured")


connect_to_billing()
"""

BROKEN_IN_WORKER_ONLY = """\
import multiprocessing

import shoal

app = shoal.App()


@app.task
def noop() -> None: ...


def open_pool():
    raise RuntimeError("no database in worker processes")


if multiprocessing.parent_process() is not None:  # a spawned worker process, not the supervisor
    open_pool()
"""

INTERNAL_FRAMES = ("click", "importlib", "shoal/cli.py", "shoal/app.py", "multiprocessing")


def _env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    env.pop("PYTHONPATH", None)  # the module must be found in the current directory
    env["SHOAL_REDIS_URL"] = redis_url
    return env


def _shoal_worker(cwd: Path, redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SHOAL, "worker", *args],
        cwd=cwd,
        env=_env(redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_only_user_frames(output: str, module: str) -> None:
    frames = [line for line in output.splitlines() if line.lstrip().startswith("File ")]
    assert frames, output
    assert all(f"{module}.py" in line for line in frames), output
    for internal in INTERNAL_FRAMES:
        assert internal not in output, f"{internal!r} frames in:\n{output}"


def test_a_module_that_raises_at_import_shows_its_traceback_and_one_line_of_advice(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "billing_tasks.py").write_text(BROKEN)

    done = _shoal_worker(tmp_path, redis_url, "billing_tasks", "--burst")

    err = done.stderr
    assert done.returncode == 2, err
    assert "Traceback (most recent call last):" in err
    assert 'billing_tasks.py", line 10, in <module>' in err
    assert 'billing_tasks.py", line 7, in connect_to_billing' in err
    assert "RuntimeError: billing endpoint is not configured" in err
    _assert_only_user_frames(err, "billing_tasks")
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: could not import 'billing_tasks'"), last
    assert "python -c 'import billing_tasks'" in last
    assert err.count("Traceback (most recent call last):") == 1
    assert last.startswith(
        "error: could not import 'billing_tasks': RuntimeError: billing endpoint is not configured."
    ), last


def test_a_module_missing_a_dependency_shows_the_users_import_line(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "needs_dep.py").write_text("import shoal\nimport no_such_dependency_xyz\n")

    done = _shoal_worker(tmp_path, redis_url, "needs_dep")

    err = done.stderr
    assert done.returncode == 2, err
    assert 'needs_dep.py", line 2, in <module>' in err
    assert "No module named 'no_such_dependency_xyz'" in err
    assert "PYTHONPATH" not in err  # the module was found: it is its import that failed
    _assert_only_user_frames(err, "needs_dep")


def test_a_module_that_is_not_there_is_one_line(tmp_path: Path, redis_url: str) -> None:
    done = _shoal_worker(tmp_path, redis_url, "no_such_tasks")

    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: cannot import task module 'no_such_tasks': No module named 'no_such_tasks'. "
        "Run shoal from the directory that holds it, or add that directory to PYTHONPATH."
    ]


def test_a_module_that_fails_only_in_worker_processes_shows_only_its_traceback(
    tmp_path: Path, redis_url: str
) -> None:
    (tmp_path / "pool_tasks.py").write_text(BROKEN_IN_WORKER_ONLY)
    log_path = tmp_path / "worker.log"

    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [SHOAL, "worker", "pool_tasks", "--burst"],
            cwd=tmp_path,
            env=_env(redis_url),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            # the supervisor imported it; its worker process cannot, and keeps being replaced
            deadline = time.monotonic() + 30
            while log_path.read_text().count("could not import") < 2:
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
        finally:
            procs = [proc.pid] + [p.pid for p in psutil.Process(proc.pid).children(True)]
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            psutil.wait_procs([p for p in map(_process, procs) if p is not None], timeout=10)

    out = log_path.read_text()
    assert 'pool_tasks.py", line 17, in <module>' in out
    assert "RuntimeError: no database in worker processes" in out
    assert "error: could not import 'pool_tasks'" in out
    _assert_only_user_frames(out, "pool_tasks")


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def test_shoal_worker_imports_from_the_current_directory(tmp_path: Path, redis_url: str) -> None:
    (tmp_path / "local_tasks.py").write_text(
        "import shoal\n\napp = shoal.App()\n\n\n@app.task\ndef noop() -> None: ...\n"
    )

    done = _shoal_worker(tmp_path, redis_url, "local_tasks", "--burst")

    assert done.returncode == 0, done.stderr
