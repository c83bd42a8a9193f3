"""Example producer: enqueue from your web app, wait for a result when you need one.

Run a worker first (``shoal worker examples.tasks``), then ``python -m examples.producer``.
"""

from __future__ import annotations

from examples.tasks import call_flaky_partner, combine_digests, render_report, send_email
from shoal import chord


def main() -> None:
    handle = send_email.enqueue(42, "Welcome aboard!")
    print("enqueued", handle.id)
    print("result:", handle.result(timeout=30))

    report = render_report.with_options(delay=1).enqueue(7, rounds=1000)
    print("report digest:", report.result(timeout=30))

    reports = [render_report.s(report_id, rounds=1000) for report_id in range(5)]
    combined = chord(reports, combine_digests.s()).enqueue()  # one call, five reports, one merge
    print("combined digest:", combined.result(timeout=30))

    handles = call_flaky_partner.enqueue_many([(order,) for order in range(20)])
    print(f"enqueued {len(handles)} flaky partner calls in one round trip")


if __name__ == "__main__":
    main()
