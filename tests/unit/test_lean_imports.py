"""Each process imports only what it needs: memory is what a process imported and keeps.

``shoal worker`` hands over to a supervisor that imports ``shoal.supervisor`` alone (see
:func:`shoal.supervisor.handover`), and forks its workers from that small image; the CLI
imports rich only to print, the App and Redis only to talk to Redis. Checked in fresh
interpreters, by module name, never by timing or by bytes.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

import pytest

import shoal
from shoal import supervisor as sup
from shoal.settings import Settings

PROBE = """
import sys
{statement}
print(" ".join(sorted(sys.modules)))
"""

NEVER_IN_A_WORKER = {"rich", "click", "kopf", "kubernetes", "shoal_operator", "yaml", "croniter"}
"""The CLI's and the operator's dependencies; prometheus_client comes only with --metrics-port,
croniter only with schedules."""

NOT_IN_THE_SUPERVISOR = {
    *NEVER_IN_A_WORKER,
    "asyncio",
    "ssl",
    "redis",
    "hiredis",
    "opentelemetry",
    "prometheus_client",
    "croniter",
    "orjson",
    "psutil",
    "http",
    "ctypes",
    "shoal.app",
    "shoal.protocol",
    "shoal.worker",
    "shoal.task",
    "shoal.middleware",
}


def _imported_by(statement: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(statement=statement)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def _loaded(modules: set[str], names: set[str]) -> list[str]:
    """The names of ``names`` found in ``modules``, as packages (``redis`` covers
    ``redis.client``) or as modules."""
    return sorted(n for n in names if any(m == n or m.startswith(n + ".") for m in modules))


def test_the_supervisor_imports_no_worker_code_redis_asyncio_or_cli() -> None:
    modules = _imported_by("from shoal.supervisor import resume")
    assert _loaded(modules, NOT_IN_THE_SUPERVISOR) == []


def test_the_worker_path_imports_neither_the_cli_nor_the_operator() -> None:
    modules = _imported_by(
        "import shoal.worker, shoal.supervisor, shoal.middleware.prometheus, shoal.demo"
    )
    assert _loaded(modules, NEVER_IN_A_WORKER) == []
    assert "shoal.worker" in modules  # the probe imported what it should


def test_the_cli_imports_rich_and_redis_only_when_a_command_needs_them() -> None:
    modules = _imported_by("import shoal.cli")
    assert _loaded(modules, {"rich", "redis", "asyncio", "shoal.app", "orjson"}) == []


def test_import_shoal_loads_its_exports_on_first_use() -> None:
    modules = _imported_by("import shoal")
    assert _loaded(modules, {"redis", "asyncio", "shoal.app", "croniter"}) == []
    modules = _imported_by("from shoal import App, chain")
    assert _loaded(modules, {"redis", "shoal.app", "shoal.canvas"}) == [
        "redis",
        "shoal.app",
        "shoal.canvas",
    ]


def test_every_exported_name_is_there_and_is_the_defining_modules() -> None:
    from shoal.app import App
    from shoal.task import Task

    assert set(shoal.__all__) <= set(dir(shoal))
    for name in shoal.__all__:
        assert getattr(shoal, name) is not None, name
    assert shoal.App is App
    assert shoal.Task is Task
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = shoal.Nope  # type: ignore[attr-defined]


def test_the_supervisor_configuration_survives_the_handover(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "argv", ["shoal", "worker", "tasks:app"])
    monkeypatch.setattr(sys, "path", ["/somewhere", *sys.path])
    settings = Settings(
        redis_url="redis://127.0.0.1:7/2",
        redis_password="s3cret",
        lease_s=12.0,
        heartbeat_s=3.0,
        signing_keys=("new", "old"),
        log_format="json",
    )
    before = sup.Supervisor(
        sup.WorkerSpec("tasks:app", ["a", "b"], 7, burst=True, metrics=True, log_format="json"),
        processes=3,
        settings=settings,
        health_port=8081,
        metrics_port=9091,
        log_level=10,
        queues=["a", "b", "c"],
    )
    state = json.loads(json.dumps(sup.to_state(before)))  # what the carrier file holds
    monkeypatch.setattr(sys, "argv", ["-c", "3"])
    monkeypatch.setattr(sys, "path", [""])

    after = sup.from_state(state)

    assert after.settings == settings
    assert after.spec == before.spec
    assert (after.processes, after.health_port, after.metrics_port) == (3, 8081, 9091)
    assert (after.log_level, after.queues) == (10, ["a", "b", "c"])
    assert sys.argv == ["shoal", "worker", "tasks:app"]
    assert sys.path[0] == "/somewhere"


def _beat(tick: sup.Tick) -> None:
    tick.value = 1234.5


def test_a_forked_childs_tick_is_seen_by_the_supervisor() -> None:
    tick = sup.Tick()
    assert tick.value == 0.0
    child = multiprocessing.get_context("fork").Process(target=_beat, args=(tick,))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert tick.value == 1234.5
