"""Fixtures of the chaos drills: private redis-servers, fleets of real ``shoal worker``
processes, the execution ledger, and the figures each drill reports.

Every drill owns its redis-server (it restarts, pauses or partitions it) and its worker
supervisors; all are stopped by PID at teardown, whatever happened. A failing drill prints the
tail of every worker's log.

Figures: each drill calls ``figures(...)`` before its assertions, so a failing run reports
them too. They are printed (``pytest -s tests/chaos``) and merged into
``<pytest basetemp>/chaos-figures.json``; the README's "What we tested" table comes from there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from chaos_drills import Fleet

from shoal import App
from shoal.errors import ShoalError
from shoal.protocol.server import LocalRedis

FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[FAILED] = True
    return report


@pytest.fixture
def chaos_redis() -> Iterator[Callable[..., LocalRedis]]:
    """``chaos_redis("--appendonly", "yes")``: a redis-server of the drill's own, extra
    arguments after the defaults; stopped (data removed) at teardown."""
    servers: list[LocalRedis] = []

    def start(*args: str) -> LocalRedis:
        try:
            server = LocalRedis(args=args)
        except ShoalError as exc:  # no binary: fail loudly with the hint, as the suite does
            pytest.fail(f"redis-server is required for the chaos drills: {exc}", pytrace=False)
        servers.append(server)
        return server.start()

    try:
        yield start
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def ledger_dir(tmp_path: Path) -> Path:
    path = tmp_path / "ledger"
    path.mkdir()
    return path


@pytest.fixture
def fleet(request: pytest.FixtureRequest, tmp_path: Path, ledger_dir: Path) -> Iterator[Fleet]:
    """Start worker supervisors; all killed by PID at teardown, their logs printed on failure."""
    workers = Fleet(tmp_path, ledger_dir)
    try:
        yield workers
    finally:
        workers.kill_all()
        if request.node.stash.get(FAILED, False):
            print("\n" + workers.log_tails())


@pytest.fixture
def figures(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., None]:
    """``figures(tasks=…, lost=…)``: print this drill's figures and keep them in the session's
    ``chaos-figures.json``."""
    path = tmp_path_factory.getbasetemp() / "chaos-figures.json"

    def record(**values: Any) -> None:
        drill = request.node.name
        every = orjson.loads(path.read_bytes()) if path.exists() else {}
        every[drill] = {"recorded_at": time.strftime("%Y-%m-%d %H:%M:%S"), **values}
        path.write_bytes(orjson.dumps(every, option=orjson.OPT_INDENT_2))
        print(f"\nchaos figures {drill}: {orjson.dumps(values).decode()} (all in {path})")

    return record


@pytest.fixture
def producer_for() -> Iterator[Callable[..., App]]:
    """``producer_for(url)``: an App that enqueues the chaos tasks by name; closed at teardown."""
    apps: list[App] = []

    def make(redis_url: str, **overrides: Any) -> App:
        app = App(redis_url=redis_url, key_prefix="shoal", **overrides)
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in apps:
            with contextlib.suppress(Exception):
                app.close()
