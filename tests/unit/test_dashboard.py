"""The dashboard's pure parts: the rolling history and its rates, who may write, trace links."""

from __future__ import annotations

import pytest

from shoal.dashboard.access import Access
from shoal.dashboard.history import History
from shoal.dashboard.links import add_trace_urls, check_template, trace_url
from shoal.dashboard.snapshot import trace_id_of
from shoal.errors import ConfigurationError
from shoal.protocol import QueueStats


def stats(queue: str, at_ms: int, *, completed: int = 0, dead_total: int = 0) -> QueueStats:
    return QueueStats(
        queue=queue,
        waiting=3,
        in_flight=1,
        delayed=0,
        dead=dead_total,
        oldest_age_s=0.0,
        enqueued=completed + dead_total,
        completed=completed,
        retried=0,
        dead_total=dead_total,
        recovered=0,
        measured_at_ms=at_ms,
    )


def test_rates_come_from_consecutive_samples() -> None:
    history = History()
    history.record([stats("q", 1000, completed=10)])
    history.record([stats("q", 3000, completed=30, dead_total=4)])
    first, second = history.of("q")
    assert (first.completed_per_s, first.failed_per_s) == (0.0, 0.0)  # no rate before two
    assert (second.completed_per_s, second.failed_per_s) == (10.0, 2.0)
    assert history.latest("q") == second


def test_history_keeps_the_last_points_per_queue() -> None:
    history = History(points=3)
    for n in range(5):
        history.record([stats("a", 1000 * (n + 1), completed=n), stats("b", 1000 * (n + 1))])
    assert [p.at_ms for p in history.of("a")] == [3000, 4000, 5000]
    assert len(history.of("b")) == 3
    assert history.of("unknown") == []


def test_a_sample_no_newer_than_the_last_is_skipped_and_counters_never_go_negative() -> None:
    history = History()
    history.record([stats("q", 2000, completed=50)])
    history.record([stats("q", 2000, completed=60)])  # same instant: skipped
    history.record([stats("q", 4000, completed=0)])  # keys deleted: counters restart
    assert [p.completed_per_s for p in history.of("q")] == [0.0, 0.0]


@pytest.mark.parametrize(
    ("allow", "token", "writes"),
    [(False, None, False), (False, "", False), (False, "s3cret", True), (True, "s3cret", True)],
)
def test_writes_are_enabled_by_a_token(allow: bool, token: str | None, writes: bool) -> None:
    assert Access.of(allow, token).writes is writes


def test_allow_writes_without_a_token_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="SHOAL_DASHBOARD_TOKEN"):
        Access.of(True, None)


def test_only_the_exact_token_allows_a_write() -> None:
    access = Access.of(False, "s3cret")
    assert access.allows("s3cret")
    assert not access.allows("s3cre")
    assert not access.allows("")
    assert not access.allows(None)
    assert not Access.of(False, None).allows("anything")


def test_trace_links_follow_the_template() -> None:
    template = check_template("http://localhost:16686/trace/{trace_id}")
    assert trace_url(template, "ab" * 16) == "http://localhost:16686/trace/" + "ab" * 16
    assert trace_url(None, "ab" * 16) is None
    assert trace_url(template, None) is None
    data = add_trace_urls({"rows": [{"trace_id": "t1"}, {"id": "x"}]}, template)
    assert data == {
        "rows": [{"trace_id": "t1", "trace_url": "http://localhost:16686/trace/t1"}, {"id": "x"}]
    }
    assert check_template("") is None


def test_a_template_without_the_placeholder_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"\{trace_id\}"):
        check_template("http://localhost:16686/trace/")


def test_trace_id_of_a_traceparent() -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of({"traceparent": f"00-{trace}-00f067aa0ba902b7-01"}) == trace
    assert trace_id_of({}) is None
    assert trace_id_of({"traceparent": "garbage"}) is None


def run_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str]:
    """``shoal dashboard ARGS`` through main(): (exit status, stderr)."""
    import io
    import sys

    from shoal.cli import main

    monkeypatch.setattr(sys, "argv", ["shoal", "dashboard", *args])
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0), err.getvalue()


def test_a_missing_extra_is_one_line_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "aiohttp", None)  # import aiohttp raises ImportError
    status, err = run_cli(monkeypatch)
    assert status == 2
    assert err.strip().splitlines() == [
        "error: shoal dashboard needs its extra (aiohttp is missing): "
        "pip install 'shoal[dashboard]'"
    ]


def test_allow_writes_without_a_token_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_DASHBOARD_TOKEN", raising=False)
    status, err = run_cli(monkeypatch, "--allow-writes")
    assert status == 2 and "SHOAL_DASHBOARD_TOKEN" in err and len(err.strip().splitlines()) == 1


def test_a_queue_name_or_id_is_one_path_segment_whatever_it_holds() -> None:
    from urllib.parse import unquote

    from shoal.dashboard.routes import segment

    for text in ("emails", "a/b", "../x", "q?x=1#y", "sp ace", "ünï"):
        encoded = segment(text)
        assert "/" not in encoded and "?" not in encoded and "#" not in encoded
        assert unquote(encoded) == text


def test_the_task_page_shows_what_redis_holds_as_text_never_markup() -> None:
    from shoal.dashboard.server import templates

    evil = "<script>alert(1)</script>"
    task = {
        "id": evil,
        "queue": "q/<b>",
        "state": "running",
        "task": evil,
        "attempt": 1,
        "worker": evil,
        "due_at": None,
        "reason": None,
        "error": evil,
        "progress": {"fraction": 0.5, "text": "1/2 (50%) " + evil},
        "cancel_requested": False,
        "cancellable": True,
        "trace_id": None,
        "trace_url": None,
        "dead_letter": True,
    }
    html = (
        templates()
        .get_template("task.html")
        .render(
            active="task",
            writes=True,
            version="0",
            redis="redis://x",
            interval_s=5.0,
            trace_links=False,
            task=task,
            path="/task/q%2F%3Cb%3E/x",
            api_path="/api/task/q%2F%3Cb%3E/x",
            notice=evil,
        )
    )
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'href="/dlq/q%2F%3Cb%3E/%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in html


@pytest.mark.parametrize(
    "template", ["javascript:alert(1)//{trace_id}", "data:text/html,{trace_id}", "{trace_id}"]
)
def test_a_trace_template_that_is_not_http_is_refused(template: str) -> None:
    with pytest.raises(ConfigurationError, match="not an http"):
        check_template(template)


def test_only_a_notice_this_dashboard_wrote_is_shown() -> None:
    from urllib.parse import parse_qs

    from shoal.dashboard import notices

    carried = {k: v[0] for k, v in parse_qs(notices.query("Replayed 3 messages.")).items()}
    assert notices.verified(carried) == "Replayed 3 messages."
    forged = {**carried, "notice": "Session expired: paste your token at https://evil.example"}
    assert notices.verified(forged) is None
    assert notices.verified({"notice": "unsigned"}) is None
