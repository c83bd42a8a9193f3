"""Browser tests: a real redis-server, a real `shoal worker` and `shoal dashboard` as
processes, and Debian's headless chromium driven by Playwright (one browser per module).

Chromium is the system package (/usr/bin/chromium; `.ci/run` installs it); Playwright's own
browser download is never used."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tools.dashboard_screenshots import BROWSER_ARGS, CHROMIUM  # one launch recipe for both

from helpers import wait_for
from shoal.protocol.server import LocalRedis, free_port

HERE = Path(__file__).parent
TOKEN = "browser-test-token"
TRACE_TEMPLATE = "http://localhost:16686/trace/{trace_id}"


@dataclass
class Stack:
    redis_url: str
    key_prefix: str
    base: str
    tmp: Path
    token: str = TOKEN
    trace_template: str = TRACE_TEMPLATE


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(redis_server: LocalRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A worker of ``browser_tasks`` and a dashboard with writes enabled, on a prefix of their
    own; both killed (with their process groups) at the end."""
    prefix = f"b{os.getpid()}x{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "OTEL_"))}
    env.update(SHOAL_REDIS_URL=redis_server.url, SHOAL_KEY_PREFIX=prefix)
    port = free_port()
    tmp = tmp_path_factory.mktemp("browser")
    shoal = [sys.executable, "-m", "shoal"]
    logs = [(tmp / "worker.log").open("wb"), (tmp / "dashboard.log").open("wb")]
    procs = [
        subprocess.Popen(
            [*shoal, "worker", "browser_tasks:app", "-c", "2"],
            cwd=HERE,
            env=env,
            stdout=logs[0],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
        subprocess.Popen(
            [*shoal, "dashboard", "--port", str(port), "--interval", "0.5"],
            env={**env, "SHOAL_DASHBOARD_TOKEN": TOKEN, "SHOAL_TRACE_URL_TEMPLATE": TRACE_TEMPLATE},
            stdout=logs[1],
            stderr=subprocess.STDOUT,
            start_new_session=True,
        ),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _up(base + "/healthz"), timeout=30, message="the dashboard to answer")
        yield Stack(redis_server.url, prefix, base, tmp)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for log in logs:
            log.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is required for the browser tests: `apt-get install chromium` "
            "(.ci/run does it)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page
    finally:
        context.close()
