"""The dashboard's JSON API and its writes, against a real Redis and a real worker: the server
is the real aiohttp application on a loopback port, called over HTTP."""

from __future__ import annotations

import asyncio
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from shoal import App, group
from shoal.dashboard.access import HEADER, Access
from shoal.dashboard.server import build
from shoal.middleware import Retries, Tracing
from shoal.protocol.server import free_port

TOKEN = "t0ken-for-tests"
TEMPLATE = "http://localhost:16686/trace/{trace_id}"


class Dashboard:
    """The dashboard application served from a thread with its own event loop."""

    def __init__(self, app: App, access: Access) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._web = build(app, access, TEMPLATE, interval_s=0.2)
        self._loop = asyncio.new_event_loop()
        self._runner = web.AppRunner(self._web)
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        self._loop.run_until_complete(site.start())
        self._started.set()
        self._loop.run_forever()

    def start(self) -> Dashboard:
        self._thread.start()
        assert self._started.wait(10), "the dashboard did not start"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw, status = resp.read(), resp.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        try:
            return status, orjson.loads(raw)
        except orjson.JSONDecodeError:
            return status, raw.decode()


@pytest.fixture
def dashboard() -> Iterator[Callable[[App, Access], Dashboard]]:
    started: list[Dashboard] = []

    def start(app: App, access: Access) -> Dashboard:
        server = Dashboard(app, access).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def traced_app(make_app: Callable[..., App]) -> App:
    """An App whose messages carry a trace id (a local provider, exporting nowhere), with a
    task that always fails, one that succeeds and a group member."""
    app = make_app(middleware=[Tracing(tracer_provider=TracerProvider()), Retries()])

    @app.task(queue="emails", name="send", max_retries=0)
    def send(address: str) -> str:
        if "@" not in address:
            raise ValueError(f"no such address {address!r}")
        return address

    @app.task(queue="reports", name="part")
    def part(n: int) -> int:
        return n

    return app


def test_the_api_shows_queues_dead_letters_and_trace_links(
    traced_app: App, worker: Any, dashboard: Callable[[App, Access], Dashboard]
) -> None:
    # Given a worker that ran two emails, one of which failed for good
    send = traced_app.tasks["send"]
    ok, bad = send.enqueue("a@example.com"), send.enqueue("nobody")
    worker(traced_app, ["emails"])
    server = dashboard(traced_app, Access.of(False, None))

    # Then the queue shows its counts, and the dead letter its reason, error and trace link
    status, queues = server.request("GET", "/api/queues")
    assert status == 200
    (emails,) = queues
    assert (emails["queue"], emails["completed"], emails["dead"]) == ("emails", 1, 1)
    assert "history" in emails
    status, dlq = server.request("GET", "/api/dlq/emails")
    assert status == 200 and dlq["count"] == 1
    (entry,) = dlq["entries"]
    assert entry["id"] == bad.id and "no such address" in entry["error"]
    assert entry["trace_url"] == TEMPLATE.replace("{trace_id}", entry["trace_id"])
    status, shown = server.request("GET", f"/api/dlq/emails/{bad.id}")
    assert status == 200
    assert shown["reason"] == "retries_exhausted" and "ValueError" in shown["traceback"]
    assert shown["args"] == {"args": ["nobody"], "kwargs": {}}
    assert server.request("GET", f"/api/dlq/emails/{ok.id}")[0] == 404
    assert server.request("GET", "/api/config")[1]["writes"] is False


def test_the_sampler_fills_the_history(
    traced_app: App, dashboard: Callable[[App, Access], Dashboard]
) -> None:
    from helpers import wait_for

    traced_app.tasks["send"].enqueue("a@example.com")
    server = dashboard(traced_app, Access.of(False, None))
    wait_for(
        lambda: len(server.request("GET", "/api/queues")[1][0]["history"]) >= 2,
        message="two samples of the queue",
    )


def test_workers_running_messages_and_workflows_are_listed(
    traced_app: App, worker: Any, dashboard: Callable[[App, Access], Dashboard]
) -> None:
    from helpers import wait_for

    # Given a live worker, a message leased (as a worker holds it) and a group in flight
    running = worker(traced_app, ["reports"], burst=False)
    server = dashboard(traced_app, Access.of(False, None))
    wait_for(lambda: server.request("GET", "/api/workers")[1]["workers"], message="a worker")
    part = traced_app.tasks["part"]
    group(part.s(n) for n in range(3)).enqueue()
    running.stop()
    status, workers = server.request("GET", "/api/workers")
    assert status == 200 and workers["running"] == []
    status, flows = server.request("GET", "/api/workflows")
    assert status == 200
    assert all(f["queue"] == "reports" for f in flows)
    # a leased message, as a worker's fetch leaves it: listed with its task and trace
    handle = part.enqueue(7)
    keys = traced_app.broker.keys("reports")
    traced_app.broker.redis.lrem(keys.waiting, 0, traced_app.broker.redis.lindex(keys.waiting, 0))
    traced_app.broker.redis.zadd(keys.inflight, {handle.id: traced_app.broker.time_ms() + 30_000})
    (leased,) = server.request("GET", "/api/workers")[1]["running"]
    assert (leased["id"], leased["task"], leased["attempt"]) == (handle.id, "part", 1)
    assert leased["trace_url"].endswith(leased["trace_id"])


def test_writes_need_the_token_and_replay_moves_a_dead_letter_back(
    traced_app: App, worker: Any, dashboard: Callable[[App, Access], Dashboard]
) -> None:
    bad = traced_app.tasks["send"].enqueue("nobody")
    worker(traced_app, ["emails"])
    server = dashboard(traced_app, Access.of(True, TOKEN))
    replay = "/api/dlq/emails/replay"

    # no token, a wrong token, a token in a cookie: refused, nothing moves
    assert server.request("POST", replay, {"ids": [bad.id]})[0] == 403
    assert server.request("POST", replay, {"ids": [bad.id]}, {HEADER: "wrong"})[0] == 403
    cookie = {"Cookie": f"token={TOKEN}"}
    assert server.request("POST", replay, {"ids": [bad.id]}, cookie)[0] == 403
    assert server.request("GET", replay)[0] in (404, 405)  # writes are POST only
    assert traced_app.broker.whereabouts("emails", bad.id) == "dead"

    status, report = server.request("POST", replay, {"ids": [bad.id]}, {HEADER: TOKEN})
    assert status == 200 and report == {"replayed": [bad.id], "skipped": {}}
    assert traced_app.broker.whereabouts("emails", bad.id) == "stored"
    assert traced_app.broker.measure("emails").waiting == 1

    # purge: the same token rule; then the entry is gone for good
    worker(traced_app, ["emails"])
    purge = "/api/dlq/emails/purge"
    assert server.request("POST", purge, {"all": True}, {HEADER: "nope"})[0] == 403
    status, done = server.request("POST", purge, {"all": True, "token": TOKEN})
    assert status == 200 and done["purged"] == 1
    assert traced_app.broker.dead_count("emails") == 0


def test_a_read_only_dashboard_refuses_every_write(
    traced_app: App, worker: Any, dashboard: Callable[[App, Access], Dashboard]
) -> None:
    bad = traced_app.tasks["send"].enqueue("nobody")
    worker(traced_app, ["emails"])
    server = dashboard(traced_app, Access.of(False, None))
    status, text = server.request(
        "POST", "/api/dlq/emails/purge", {"ids": [bad.id]}, {HEADER: "anything"}
    )
    assert status == 403 and "read-only" in text
    assert traced_app.broker.dead_count("emails") == 1


def test_pages_render_and_carry_no_inline_script(
    traced_app: App, worker: Any, dashboard: Callable[[App, Access], Dashboard]
) -> None:
    traced_app.tasks["send"].enqueue("nobody")
    worker(traced_app, ["emails"])
    server = dashboard(traced_app, Access.of(False, None))
    for path in ("/queues", "/workers", "/dlq", "/dlq/emails", "/schedules", "/workflows"):
        with urllib.request.urlopen(server.url + path, timeout=10) as resp:
            html = resp.read().decode()
            assert resp.status == 200
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert "<script>" not in html  # scripts only from /static (the CSP forbids inline)
        assets = re.findall(r'(?:src|rel="stylesheet" href)="([^"]*)"', html)
        assert assets and all(a.startswith("/static/") for a in assets)  # works offline
    assert server.request("GET", "/healthz") == (200, "ok\n")
