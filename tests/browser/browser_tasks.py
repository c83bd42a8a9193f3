"""Tasks the browser tests' worker runs: one that fails until its marker file exists (so a
replayed dead letter then succeeds), and a schedule."""

from __future__ import annotations

from pathlib import Path

from shoal import App

app = App()


@app.task(queue="emails", name="send_welcome", max_retries=0)
def send_welcome(user_id: int, marker: str) -> str:
    if not Path(marker).exists():
        raise ValueError(f"mail server refused user {user_id}: no such mailbox")
    return "sent"


@app.periodic("0 6 * * *", queue="reports", name="nightly-digest", timezone="Europe/Berlin")
def nightly_digest() -> None:
    """Sends the morning digest."""
