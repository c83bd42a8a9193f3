"""The dashboard's JSON API and its writes, against a real Redis and a real worker: the server
is the real aiohttp application on a loopback port, called over HTTP."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from opentelemetry.sdk.trace import TracerProvider

from shoal import App, group, progress
from shoal.dashboard.access import HEADER, Access
from shoal.dashboard.routes import segment
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


def test_a_running_message_names_the_worker_that_runs_it(
    make_app: Callable[..., App], worker: Any, dashboard: Callable[[App, Access], Dashboard]
) -> None:
    from helpers import wait_for

    # Given a worker running a task that holds its slot
    app = make_app()
    release = threading.Event()

    @app.task(queue="held")
    def hold() -> None:
        release.wait(20)

    running = worker(app, ["held"], burst=False)
    server = dashboard(app, Access.of(False, None))
    handle = hold.enqueue()
    try:
        # Then, from its worker's next heartbeat, the running message names it and its start
        rows = wait_for(
            lambda: [r for r in server.request("GET", "/api/workers")[1]["running"] if r["worker"]],
            message="the running message with its worker",
        )
        assert [(r["id"], r["worker"]) for r in rows] == [(handle.id, running.worker.id)]
        assert rows[0]["started_at"] > 0
    finally:
        release.set()
        running.stop()


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
    pages = ("/queues", "/workers", "/dlq", "/dlq/emails", "/schedules", "/workflows", "/task")
    for path in pages:
        with urllib.request.urlopen(server.url + path, timeout=10) as resp:
            html = resp.read().decode()
            assert resp.status == 200
            assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
        assert "<script>" not in html  # scripts only from /static (the CSP forbids inline)
        assets = re.findall(r'(?:src|rel="stylesheet" href)="([^"]*)"', html)
        assert assets and all(a.startswith("/static/") for a in assets)  # works offline
    assert server.request("GET", "/healthz") == (200, "ok\n")


# --- flow and task control ------------------------------------------------------------------


@pytest.fixture
def ran() -> list[Any]:
    """What the control app's tasks ran, in order."""
    return []


@pytest.fixture
def control_app(make_app: Callable[..., App], ran: list[Any]) -> App:
    """Tasks on ``jobs`` (each run recorded), a long one reporting progress on ``long`` (store
    results: its cancelled outcome is kept), and a marker task on ``other``."""
    app = make_app(middleware=[Tracing(tracer_provider=TracerProvider()), Retries()])

    @app.task(queue="jobs", name="job")
    def job(n: int) -> None:
        ran.append(n)

    @app.task(queue="other", name="marker")
    def marker() -> None:
        ran.append("marker")

    @app.task(queue="long", name="crunch", store_result=True, timeout=60)
    def crunch(steps: int) -> None:
        for step in range(steps):
            progress(step, steps, note=f"chunk {step}")
            time.sleep(0.05)

    return app


def test_pause_stops_starts_resume_drains_and_purge_deletes(
    control_app: App,
    ran: list[Any],
    worker: Any,
    dashboard: Callable[[App, Access], Dashboard],
) -> None:
    from helpers import wait_for

    app = control_app
    server = dashboard(app, Access.of(True, TOKEN))
    job, marker = app.tasks["job"], app.tasks["marker"]
    job.enqueue(0)  # the queue exists (listed) before it is paused
    app.configure_queue("jobs", rate_limit="50/s")
    running = worker(app, ["jobs", "other"], burst=False)
    wait_for(lambda: ran == [0], message="the first job to run")

    # When jobs is paused through the API, then three jobs and a marker on another queue come
    status, done = server.request("POST", "/api/queues/jobs/pause", {}, {HEADER: TOKEN})
    assert (status, done) == (200, {"queue": "jobs", "paused": True, "changed": True})
    job.enqueue_many([(1,), (2,), (3,)])
    marker.enqueue()

    # Then the worker, busy enough to run the marker, starts none of the jobs
    wait_for(lambda: "marker" in ran, message="the marker on the running queue")
    assert ran == [0, "marker"]
    rows = {q["queue"]: q for q in server.request("GET", "/api/queues")[1]}
    assert (rows["jobs"]["paused"], rows["jobs"]["waiting"], rows["jobs"]["rate_limit"]) == (
        True,
        3,
        "50/s",
    )
    assert (rows["other"]["paused"], rows["other"]["rate_limit"]) == (False, None)

    # When resumed, the jobs run
    status, done = server.request("POST", "/api/queues/jobs/resume", {"token": TOKEN})
    assert (status, done["paused"], done["changed"]) == (200, False, True)
    wait_for(lambda: sorted(x for x in ran if x != "marker") == [0, 1, 2, 3], message="drained")
    running.stop()

    # And purge deletes what waits and what is delayed, and says how many
    job.enqueue_many([(4,), (5,)])
    job.with_options(delay=600).enqueue(6)
    confirm = _page(server, "/queues/jobs/confirm/purge")
    assert "Purge 3 message(s) of jobs?" in confirm and "<b>2</b> waiting" in confirm
    status, done = server.request("POST", "/api/queues/jobs/purge", {}, {HEADER: TOKEN})
    assert (status, done) == (200, {"queue": "jobs", "purged": 3})
    stats = app.measure("jobs")
    assert (stats.waiting, stats.delayed) == (0, 0)


def test_the_task_api_shows_a_running_task_with_progress_and_cancels_it(
    control_app: App, worker: Any, dashboard: Callable[[App, Access], Dashboard]
) -> None:
    from helpers import wait_for

    app = control_app
    server = dashboard(app, Access.of(True, TOKEN))
    running = worker(app, ["long"], burst=False)
    handle = app.tasks["crunch"].enqueue(2000)
    path = f"/api/task/long/{handle.id}"

    # Given the task running, having reported progress, listed by its worker
    shown = wait_for(
        lambda: (
            (t := server.request("GET", path)[1])["state"] == "running"
            and t["progress"]
            and t["worker"]
            and t
        ),
        message="the task running with progress",
    )
    assert (shown["task"], shown["attempt"], shown["worker"]) == ("crunch", 1, running.worker.id)
    assert 0 <= shown["progress"]["fraction"] < 1 and shown["progress"]["total"] == 2000
    assert shown["progress"]["note"].startswith("chunk ") and "%" in shown["progress"]["text"]
    assert shown["cancellable"] and shown["trace_url"].endswith(shown["trace_id"])

    # When cancelled through the API, its worker stops it; it reads cancelled
    status, done = server.request("POST", path + "/cancel", {}, {HEADER: TOKEN})
    assert (status, done["was"]) == (200, "running")
    final = wait_for(
        lambda: (t := server.request("GET", path)[1])["state"] == "cancelled" and t,
        message="the task to be cancelled",
    )
    assert (final["reason"], final["cancellable"]) == ("cancelled", False)
    status, gone = server.request("POST", path + "/cancel", {}, {HEADER: TOKEN})
    assert (status, gone["was"]) == (409, "gone") and "nothing to cancel" in gone["error"]
    running.stop()


def test_cancel_a_delayed_message_and_route_any_queue_name(
    control_app: App, dashboard: Callable[[App, Access], Dashboard]
) -> None:
    # Given a delayed message on a queue whose name holds /, ?, # and markup
    queue = "<img src=x onerror=alert(1)>/q?#"
    handle = control_app.tasks["job"].on_queue(queue).with_options(delay=600).enqueue(1)
    server = dashboard(control_app, Access.of(True, TOKEN))
    path = f"/api/task/{segment(queue)}/{segment(handle.id)}"

    status, shown = server.request("GET", path)
    assert (status, shown["queue"], shown["state"], shown["task"]) == (200, queue, "delayed", "job")
    assert shown["due_at"] > time.time() + 500 and shown["cancellable"]

    # Its page shows the name as text, never as markup
    html = _page(server, f"/task/{segment(queue)}/{segment(handle.id)}")
    assert "&lt;img src=x onerror=alert(1)&gt;/q?#" in html and "<img src=x" not in html
    assert _page(server, f"/task?queue={segment(queue)}&id={handle.id}") == html  # the form

    # When cancelled, it reads cancelled and never runs
    status, done = server.request("POST", path + "/cancel", {"token": TOKEN})
    assert (status, done["was"], done["queue"]) == (200, "delayed", queue)
    assert server.request("GET", path)[1]["state"] == "cancelled"
    assert control_app.measure(queue).delayed == 0
    status, paused = server.request(
        "POST", f"/api/queues/{segment(queue)}/pause", {}, {HEADER: TOKEN}
    )
    assert (status, paused["queue"]) == (200, queue) and control_app.measure(queue).paused


def test_control_writes_need_the_token_and_a_read_only_dashboard_refuses_them(
    control_app: App, dashboard: Callable[[App, Access], Dashboard]
) -> None:
    handle = control_app.tasks["job"].with_options(delay=600).enqueue(1)
    writes = [f"/api/task/jobs/{handle.id}/cancel"] + [
        f"/api/queues/jobs/{a}" for a in ("pause", "resume", "purge")
    ]
    server = dashboard(control_app, Access.of(True, TOKEN))
    for path in writes:
        assert server.request("POST", path, {})[0] == 403, path
        assert server.request("POST", path, {}, {HEADER: "wrong"})[0] == 403, path
        assert server.request("POST", path, {}, {"Cookie": f"token={TOKEN}"})[0] == 403, path
        assert server.request("GET", path)[0] in (404, 405), path  # writes are POST only
    assert server.request("POST", "/api/queues/jobs/drop", {}, {HEADER: TOKEN})[0] == 404

    read_only = dashboard(control_app, Access.of(False, None))
    for path in writes:
        status, text = read_only.request("POST", path, {}, {HEADER: "anything"})
        assert status == 403 and "read-only" in text, path
    # nothing changed, and the read-only pages offer no control
    stats = control_app.measure("jobs")
    assert (stats.paused, stats.delayed) == (False, 1)
    assert read_only.request("GET", f"/api/task/jobs/{handle.id}")[1]["state"] == "delayed"
    for html in (_page(read_only, "/queues"), _page(read_only, f"/task/jobs/{handle.id}")):
        assert 'id="cancel"' not in html and "<th>Actions</th>" not in html
    assert 'data-writes="0"' in _page(read_only, "/queues")  # the script draws no buttons
    assert 'id="cancel"' in _page(server, f"/task/jobs/{handle.id}")


def _page(server: Dashboard, path: str) -> str:
    with urllib.request.urlopen(server.url + path, timeout=10) as resp:
        assert resp.status == 200
        return str(resp.read().decode())


def test_a_bad_limit_is_a_400_and_the_workflow_walk_is_bounded(
    make_app: Callable[..., App], dashboard: Callable[[App, Access], Dashboard]
) -> None:
    from shoal.protocol import browse

    app = make_app()
    app.remote("x", queue="walked").enqueue(1)
    server = dashboard(app, Access.of(False, None))
    assert server.request("GET", "/api/dlq/walked?limit=abc")[0] == 400

    # Given many keys that are not workflows, and one workflow record in the queue's slot
    redis = app.broker.redis
    with redis.pipeline(transaction=False) as pipe:
        for i in range(30_000):
            pipe.set(f"noise:{i}", 1)
        pipe.execute()
    redis.hset(app.broker.keys("walked").workflow("w1"), "step", "1")

    # Then a listing walks at most SCAN_CALLS calls of SCAN_COUNT keys, whatever it finds
    calls: list[int] = []
    node = app.broker._primary_of(app.broker.keys("walked").waiting)
    scan = node.scan

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return scan(*args, **kwargs)

    node.scan = counted  # type: ignore[method-assign]
    try:
        browse.workflow_records(app.broker, "walked")
    finally:
        node.scan = scan  # type: ignore[method-assign]
    assert 0 < len(calls) <= browse.SCAN_CALLS
