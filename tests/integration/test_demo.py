"""``shoal demo`` (what ``make demo`` runs) end to end, small: its own workers, a burst of tasks,
retries, a chord, the summary, and nothing left running."""

from __future__ import annotations

import re
import subprocess
import sys

from processes import worker_env


def test_demo_runs_tasks_retries_and_a_chord_then_cleans_up(redis_url: str) -> None:
    env = {**worker_env(redis_url), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "shoal", "demo", "--tasks", "300", "--processes", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Using Redis from SHOAL_REDIS_URL" in out
    assert "310 / 310" in out  # 300 tasks and 10 flaky ones, each completed
    assert "100 results in" in out  # the chord's callback got every member's result
    retried = re.search(r"retried \(flaky task, fails once on purpose\)\s*│\s*(\d+)", out)
    assert retried is not None and int(retried.group(1)) >= 1, out
    assert "everything the demo started is cleaned up" in out
