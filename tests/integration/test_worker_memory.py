"""``shoal worker`` as it runs: a lean supervisor (no Redis client, no asyncio, no task code)
that forks named worker processes, no helper process besides them, and the app's own settings
carried over the handover. And the CLI, which imports rich lazily, still draws its tables on a
terminal. What each process has loaded is read from ``/proc/PID/maps``, not measured in bytes.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from processes import WorkerProcess

from helpers import http_status, on_a_terminal, wait_for
from shoal import App
from shoal.protocol.server import free_port

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")

OWN_SETTINGS_APP = """\
import os

import shoal

app = shoal.App(os.environ["MEMTEST_REAL_REDIS_URL"])  # in code: the environment's is dead


@app.task(queue="memtest")
def noop() -> None: ...
"""


def _mapped(pid: int) -> str:
    """The files mapped by a process: its shared libraries and extension modules."""
    return Path(f"/proc/{pid}/maps").read_text()


def test_the_supervisor_loads_no_redis_client_and_forks_named_workers(
    redis_url: str, key_prefix: str, worker_process: Callable[..., WorkerProcess], app: App
) -> None:
    sup = worker_process(
        redis_url, "--processes", "2", "--queues", "memtest", SHOAL_KEY_PREFIX=key_prefix
    )

    children = wait_for(
        lambda: len(sup.child_pids()) == 2 and sup.child_pids(), timeout=30, message="2 workers"
    )
    wait_for(lambda: len(app.broker.workers()) >= 2, timeout=30, message="two registrations")

    # every child of the supervisor is a worker: no resource tracker, no other helper
    assert {p.pid for p in psutil.Process(sup.pid).children()} == children, sup.log()
    supervisor_maps = _mapped(sup.pid)
    assert "hiredis" not in supervisor_maps
    assert "_asyncio" not in supervisor_maps
    for child in children:
        assert "hiredis" in _mapped(child)  # the workers did load them
        assert "_asyncio" in _mapped(child)


def test_the_supervisor_keeps_the_settings_the_app_sets_in_code(
    tmp_path: Path, redis_url: str, worker_process: Callable[..., WorkerProcess]
) -> None:
    (tmp_path / "own_settings_tasks.py").write_text(OWN_SETTINGS_APP)
    port = free_port()
    sup = worker_process(
        "redis://127.0.0.1:1/0",  # SHOAL_REDIS_URL: nothing listens there
        "--health-port",
        str(port),
        app_spec="own_settings_tasks:app",
        MEMTEST_REAL_REDIS_URL=redis_url,
        PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )

    wait_for(sup.child_pids, timeout=30, message="the worker process")
    # /readyz pings the Redis of the app's settings, which the handover carried over
    wait_for(
        lambda: http_status(f"http://127.0.0.1:{port}/readyz") == 200,
        timeout=30,
        message=f"/readyz 200\n{sup.log()}",
    )


def test_info_draws_its_table_on_a_terminal(app: App, redis_url: str, key_prefix: str) -> None:
    app.remote("some.task", queue="terminal-q").enqueue()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "NO_COLOR"))}
    env.update(
        SHOAL_REDIS_URL=redis_url, SHOAL_KEY_PREFIX=key_prefix, TERM="xterm-256color", COLUMNS="200"
    )

    out = on_a_terminal(env, ["info", "--interval", "0"])

    assert "Queues" in out
    assert "terminal-q" in out
    assert "━" in out or "─" in out, out  # box drawing: rich drew a table
    assert "\x1b[" in out, out  # and styled it, as it does on a terminal


BOOT_HEAP_APP = """\
import gc
import os
import weakref

import shoal

app = shoal.App(os.environ["SHOAL_REDIS_URL"])
BOOTED_WITH = [object()]  # allocated when the worker process imported this module


class Node:
    pass


@app.task(queue="heaptest", name="still_collected", store_result=True)
def still_collected() -> list[bool]:
    seen = gc.get_objects()  # what collections walk: the frozen generation is not in it
    made_now = Node()
    made_now.me = made_now  # a cycle: only a collection frees it
    dropped = weakref.ref(made_now)
    del made_now
    gc.collect()
    return [any(o is BOOTED_WITH for o in seen), dropped() is None]
"""


def test_a_worker_process_takes_its_boot_heap_out_of_the_collectors_sight(
    tmp_path: Path, redis_url: str, worker_process: Callable[..., WorkerProcess], producer: App
) -> None:
    (tmp_path / "boot_heap_tasks.py").write_text(BOOT_HEAP_APP)
    sup = worker_process(
        redis_url,
        "--queues",
        "heaptest",
        app_spec="boot_heap_tasks:app",
        PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    handle = producer.remote("still_collected", queue="heaptest").enqueue()
    # Then what the module made at boot is frozen (full collections no longer walk it, which
    # paused every slot for tens of ms); a cycle a task drops is still collected
    assert handle.result(timeout=30) == [False, True], sup.log()


def test_a_worker_run_in_the_applications_own_process_leaves_its_heap_alone(
    app: App, worker: Callable[..., Any]
) -> None:
    @app.task(queue="own-heap")
    def noop() -> None: ...

    noop.enqueue()
    frozen = gc.get_freeze_count()
    worker(app, ["own-heap"])
    assert app.measure("own-heap").completed == 1
    assert gc.get_freeze_count() == frozen
