"""Screenshots of every dashboard page, with realistic data, for docs/dashboard/*.png.

    .venv/bin/python tools/dashboard_screenshots.py [--out docs/dashboard]

Starts its own redis-server, two `shoal worker` processes of the tasks below, and `shoal
dashboard`; sends a mix of work (fast emails, a chord of reports, long billing runs, a few
failures for the DLQ, delayed messages, two schedules, a catalog import reporting progress, a
paused queue) for about half a minute so the sparklines have a shape; then opens each page in
Debian's headless chromium through Playwright.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from opentelemetry.sdk.trace import TracerProvider

from shoal import App, chord, group, progress
from shoal.middleware import Retries, Tracing

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CHROMIUM = "/usr/bin/chromium"
"""Debian's chromium (Playwright never downloads a browser here); tests/browser launches it too."""
BROWSER_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "screenshots-token"

# Messages carry a trace id (a local tracer provider, exporting nowhere): the DLQ links to traces.
app = App(middleware=[Tracing(tracer_provider=TracerProvider()), Retries()])


@app.task(name="emails.send_welcome", queue="emails", max_retries=0)
def send_welcome(user_id: int, address: str) -> str:
    time.sleep(random.uniform(0.02, 0.15))
    if "@" not in address:
        raise ValueError(f"invalid recipient address {address!r} for user {user_id}")
    return f"sent to {address}"


@app.task(name="reports.render_report", queue="reports", timeout=120)
def render_report(part: int) -> int:
    time.sleep(random.uniform(0.3, 1.2))
    return part * part


@app.task(name="reports.combine_digests", queue="reports")
def combine_digests(parts: list[int]) -> int:
    return sum(parts)


@app.task(name="billing.charge_invoice", queue="billing", timeout=600, max_retries=0)
def charge_invoice(invoice: str, cents: int) -> str:
    if cents < 0:
        raise RuntimeError(f"payment provider refused {invoice}: card_declined (amount {cents})")
    time.sleep(300)  # a long run: what "Running now" shows
    return invoice


@app.task(name="thumbnails.resize", queue="thumbnails")
def resize(image_id: int, size: int) -> str:
    time.sleep(random.uniform(0.05, 0.3))
    return f"{image_id}@{size}"


@app.task(name="imports.import_catalog", queue="imports", timeout=900, store_result=True)
def import_catalog(supplier: str, rows: int) -> int:
    """A long import that says how far it got: what the Task page shows."""
    for row in range(rows):
        if row % 25 == 0:
            progress(row, rows, note=f"importing {supplier} price list")
        time.sleep(0.02)
    return rows


@app.task(name="exports.build_csv", queue="exports")
def build_csv(report: str) -> str:
    return report


@app.periodic("0 6 * * *", queue="reports", name="nightly-digest", timezone="Europe/Berlin")
def nightly_digest() -> None:
    """Sends the morning digest."""


@app.periodic("*/5 * * * *", queue="emails", name="retry-bounces")
def retry_bounces() -> None:
    """Re-sends soft-bounced emails."""


def wait_http(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def send_traffic(seconds: float) -> None:
    """Waves of work, so each queue's rates rise and fall over the sampled history; ``exports``
    is paused (its backlog grows), ``emails`` and ``thumbnails`` carry rate limits."""
    random.seed(17)
    app.configure_queue("emails", rate_limit="200/s")
    app.configure_queue("thumbnails", rate_limit="20/s")
    build_csv.enqueue("warm-up")
    app.pause("exports")
    for n in range(5):
        charge_invoice.enqueue(f"INV-2024-{1040 + n}", 12900 + 100 * n)
    charge_invoice.enqueue("INV-2024-1039", -4200)
    for i, bad in enumerate(["ops-team", "jane.doe(at)example.com", "", "billing@"]):
        send_welcome.enqueue(9000 + i, bad)
    for _ in range(40):
        send_welcome.with_options(delay=3600).enqueue(random.randint(1, 9999), "later@example.com")
    chord([render_report.s(i) for i in range(40)], combine_digests.s()).enqueue()
    start = time.monotonic()
    wave = 0
    while time.monotonic() - start < seconds:
        wave += 1
        burst = random.randint(20, 90) if wave % 3 else 160
        send_welcome.enqueue_many(
            [(random.randint(1, 99999), f"user{i}@example.com") for i in range(burst)]
        )
        group(resize.s(wave, size) for size in (64, 256, 1024)).enqueue()
        if wave % 4 == 0:
            send_welcome.enqueue(wave, f"bounced-{wave}")
        build_csv.enqueue_many([(f"report-{wave}-{n}",) for n in range(random.randint(2, 9))])
        time.sleep(1.5)


def shoot(base: str, out: Path, importing: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1360, "height": 820}, device_scale_factor=1)
        for name, path in [("queues", "/queues"), ("workers", "/workers")]:
            page.goto(base + path)
            page.wait_for_selector("body[data-loaded='1']")
            page.screenshot(path=str(out / f"{name}.png"))
        page.goto(f"{base}/task/imports/{importing}")
        page.wait_for_selector("body[data-loaded='1']")
        page.screenshot(path=str(out / "task.png"))
        page.goto(base + "/dlq/emails")
        page.screenshot(path=str(out / "dead-letters.png"))
        page.click("#dead-letters tbody tr:first-child td:first-child a")
        page.wait_for_selector("#traceback")
        page.screenshot(path=str(out / "dead-letter.png"), full_page=True)
        page.click("#replay")
        page.wait_for_selector("#confirm")
        page.fill("#token", TOKEN)
        page.screenshot(path=str(out / "replay-confirm.png"))
        for name in ("schedules", "workflows"):
            page.goto(f"{base}/{name}")
            page.screenshot(path=str(out / f"{name}.png"))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard")
    parser.add_argument("--seconds", type=float, default=30.0, help="Seconds of traffic.")
    options = parser.parse_args()
    options.out.mkdir(parents=True, exist_ok=True)

    from shoal.protocol.server import LocalRedis, free_port

    with LocalRedis() as redis:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SHOAL_", "OTEL_"))}
        env.update(SHOAL_REDIS_URL=redis.url, SHOAL_INSTANCE="worker-pod-7c9f")
        os.environ.update(SHOAL_REDIS_URL=redis.url)
        app.settings = app.settings.with_overrides(redis_url=redis.url)
        port = free_port()
        shoal = [sys.executable, "-m", "shoal"]
        worker_cmd = [*shoal, "worker", "dashboard_screenshots:app", "-c", "8", "-p", "2"]
        procs = [
            subprocess.Popen(
                worker_cmd, cwd=HERE, env=env, stderr=subprocess.DEVNULL, start_new_session=True
            ),
            subprocess.Popen(
                worker_cmd,
                cwd=HERE,
                env={**env, "SHOAL_INSTANCE": "worker-pod-a41e"},
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            ),
            subprocess.Popen(
                [*shoal, "dashboard", "--port", str(port), "--interval", "1"],
                env={
                    **env,
                    "SHOAL_DASHBOARD_TOKEN": TOKEN,
                    "SHOAL_TRACE_URL_TEMPLATE": "http://localhost:16686/trace/{trace_id}",
                },
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            ),
        ]
        try:
            base = f"http://127.0.0.1:{port}"
            wait_http(base + "/healthz")
            traffic = threading.Thread(target=send_traffic, args=(options.seconds + 20,))
            traffic.start()  # pages are shot while work flows: rates and groups in progress
            importing = import_catalog.enqueue("acme-wholesale", 4000).id
            time.sleep(options.seconds)
            chord([render_report.s(i) for i in range(300)], combine_digests.s()).enqueue()
            shoot(base, options.out, importing)
            traffic.join()
        finally:
            for proc in procs:  # each started in a session of its own: its workers go too
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    print(f"screenshots in {options.out}")


if __name__ == "__main__":
    main()
