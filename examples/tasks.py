"""Example task module: what ``shoal worker examples.tasks`` runs (see the README).

Three shapes of real work: an I/O task (async), a CPU task in a thread with a timeout, and a
flaky task that retries with backoff and ends in the dead-letter queue when it keeps failing;
and a chord callback that combines several reports once they are all done.
"""

from __future__ import annotations

import asyncio
import hashlib
import random

from shoal import App

app = App()


@app.task(queue="emails", max_retries=5, timeout=30, store_result=True)
async def send_email(user_id: int, body: str) -> dict[str, object]:
    """I/O-bound: the await stands in for an SMTP or HTTP call."""
    await asyncio.sleep(0.01)
    return {"user_id": user_id, "chars": len(body), "status": "sent"}


@app.task(queue="reports", timeout=10, store_result=True)
def render_report(report_id: int, rounds: int = 10_000) -> str:
    """CPU-bound: runs in a worker thread; the timeout stops it if it runs away."""
    digest = str(report_id).encode()
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


@app.task(queue="reports", timeout=10)
def combine_digests(digests: list[str]) -> str:
    """A chord callback: runs once, after every report, with their digests in order."""
    return hashlib.sha256("".join(digests).encode()).hexdigest()


@app.task(queue="emails", max_retries=2, min_backoff=0.1, retry_on=(ConnectionError,))
def call_flaky_partner(order_id: int, failure_rate: float = 0.5) -> None:
    """Fails at random like a partner API: retried twice, then dead-lettered."""
    if random.random() < failure_rate:
        raise ConnectionError(f"partner API refused order {order_id}")
