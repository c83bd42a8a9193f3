"""The dashboard end to end in headless chromium: every page with real data from a real worker,
then a dead letter shown, its trace link checked, and replayed through the confirmation step."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from playwright.sync_api import expect

from helpers import wait_for
from shoal import App
from shoal.middleware import Retries, Tracing

if TYPE_CHECKING:
    from conftest import Stack


@pytest.fixture(scope="module")
def producer(stack: Stack) -> Iterator[App]:
    """Sends as a web app would, with a trace id in every message."""
    app = App(
        stack.redis_url,
        key_prefix=stack.key_prefix,
        middleware=[Tracing(tracer_provider=TracerProvider()), Retries()],
    )
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="module")
def failed(stack: Stack, producer: App) -> tuple[str, Path]:
    """One dead letter of ``emails`` (its marker file absent), and that marker's path."""
    marker = stack.tmp / "mailbox-ready"
    handle = producer.remote("send_welcome", queue="emails").enqueue(42, str(marker))
    wait_for(lambda: producer.broker.whereabouts("emails", handle.id) == "dead", timeout=30)
    return handle.id, marker


def test_every_page_shows_the_real_data(stack: Stack, failed: tuple[str, Path], page: Any) -> None:
    page.goto(stack.base + "/queues")
    row = page.locator("#queues tr[data-queue='emails']")
    row.wait_for()
    assert row.locator("td").nth(4).inner_text() == "1"  # the dead letter
    assert page.locator("#queues svg.spark").count() >= 2  # throughput and backlog

    page.goto(stack.base + "/workers")
    page.locator("#workers tr[data-worker]").first.wait_for()
    assert "emails" in page.locator("#workers tbody").inner_text()

    page.goto(stack.base + "/schedules")
    assert "nightly-digest" in page.locator("#schedules").inner_text()
    assert "Europe/Berlin" in page.locator("#schedules").inner_text()

    page.goto(stack.base + "/workflows")
    assert page.locator("h1").inner_text() == "Workflows"


def test_show_then_replay_a_dead_letter_with_confirmation(
    stack: Stack, producer: App, failed: tuple[str, Path], page: Any
) -> None:
    message_id, marker = failed
    # Given the DLQ of emails, opened from the index
    page.goto(stack.base + "/dlq")
    page.click("#dlq-queues a:text('emails')")
    page.click(f"#dead-letters a:text('{message_id}')")

    # Then the entry shows its reason, error, traceback and arguments, and links its trace
    assert "retries_exhausted" in page.locator("h1").inner_text()
    assert "no such mailbox" in page.locator("dl.fields").inner_text()
    assert "ValueError" in page.locator("#traceback").inner_text()
    assert '"user_id"' not in page.locator("#args").inner_text()  # positional: args [42, …]
    assert "42" in page.locator("#args").inner_text()
    trace_id = page.locator("#trace-link").inner_text()
    assert page.locator("#trace-link").get_attribute("href") == stack.trace_template.replace(
        "{trace_id}", trace_id
    )

    # When replay is asked for, a confirmation comes first; a wrong token changes nothing
    page.click("#replay")
    assert "Replay 1 dead letter(s)?" in page.locator("h1").inner_text()
    page.fill("#token", "not-the-token")
    page.click("#confirm")
    assert "Wrong or missing token" in page.content()
    assert producer.broker.whereabouts("emails", message_id) == "dead"

    # With the token, the message goes back to the queue and, its mailbox ready now, runs
    marker.touch()
    page.go_back()
    page.fill("#token", stack.token)
    page.click("#confirm")
    assert "Replayed 1 message(s)." in page.locator(".notice").inner_text()
    wait_for(lambda: producer.broker.whereabouts("emails", message_id) is None, timeout=30)
    assert producer.broker.dead_count("emails") == 0


def test_a_running_task_page_shows_progress_and_cancels(
    stack: Stack, producer: App, page: Any
) -> None:
    # Given a long task running and reporting progress, found from the Workers page
    handle = producer.remote("import_catalog", queue="imports").enqueue(5000)
    page.goto(stack.base + "/workers")
    page.click(f"#running tr[data-message='{handle.id}'] a.task-link")

    # Then its page shows it running, with a progress bar and note that move on
    expect(page.locator("#state")).to_have_text("running", timeout=15_000)
    assert page.locator("h1").inner_text().startswith("import_catalog")
    page.wait_for_function(
        "document.querySelector('[data-field=progress]').textContent.includes('%')"
    )
    assert "importing rows" in page.locator("#progress").inner_text()
    assert page.locator("#progress .bar").is_visible()
    assert page.locator("#trace-link").get_attribute("href").startswith("http://localhost:16686/")

    # When cancelled through the confirmation step, with the token
    page.click("#cancel")
    assert "runs now" in page.locator("#what").inner_text()
    page.fill("#token", stack.token)
    page.click("#confirm")

    # Then its worker stops it, and the page (refreshing itself) says so
    assert "Cancel asked" in page.locator(".notice").inner_text()
    expect(page.locator("#state")).to_have_text("cancelled", timeout=15_000)
    assert producer.producer.status("imports", handle.id).state == "cancelled"
    assert not page.locator("#cancel").is_visible()
