"""The README's examples run as written: examples/tasks.py under a real worker, driven by
examples/producer.py, against the test Redis."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from examples import producer, tasks

from shoal import App
from shoal.settings import _ENV_NAMES

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def examples_app(redis_url: str, key_prefix: str) -> Iterator[App]:
    app = tasks.app
    original = app.settings
    app.settings = original.with_overrides(redis_url=redis_url, key_prefix=key_prefix)
    app.close()
    yield app
    app.close()
    app.settings = original


def test_producer_against_a_worker(
    examples_app: App, worker: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    running = worker(examples_app, ["emails", "reports"], burst=False, concurrency=8)
    try:
        producer.main()
    finally:
        running.stop()
    out = capsys.readouterr().out
    assert "result: {'user_id': 42, 'chars': 15, 'status': 'sent'}" in out
    assert re.search(r"report digest: [0-9a-f]{64}", out)
    assert re.search(r"combined digest: [0-9a-f]{64}", out)
    assert "enqueued 20 flaky partner calls in one round trip" in out


def test_flaky_partner_retries_then_dead_letters(examples_app: App, worker: Any) -> None:
    tasks.call_flaky_partner.enqueue(1, failure_rate=1.0)
    worker(examples_app, ["emails"])
    (entry,) = examples_app.dlq("emails").entries()
    assert entry.reason == "retries_exhausted" and entry.attempts == 3
    assert "partner API refused order 1" in entry.error


def test_readme_documents_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [name for name in _ENV_NAMES.values() if name not in readme]
    assert missing == [], f"README lacks {missing}"
