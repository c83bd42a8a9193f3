"""Tasks the browser tests' worker runs: one that fails until its marker file exists (so a
replayed dead letter then succeeds), a long one that reports its progress (to be cancelled),
and a schedule."""

from __future__ import annotations

import time
from pathlib import Path

from shoal import App, progress

app = App()


@app.task(queue="emails", name="send_welcome", max_retries=0)
def send_welcome(user_id: int, marker: str) -> str:
    if not Path(marker).exists():
        raise ValueError(f"mail server refused user {user_id}: no such mailbox")
    return "sent"


@app.task(queue="imports", name="import_catalog", store_result=True, timeout=120)
def import_catalog(rows: int) -> None:
    for row in range(rows):
        progress(row, rows, note="importing rows")
        time.sleep(0.02)


@app.periodic("0 6 * * *", queue="reports", name="nightly-digest", timezone="Europe/Berlin")
def nightly_digest() -> None:
    """Sends the morning digest."""
