"""What the chaos drills share: a fleet of worker supervisors, and waiting for a queue to settle.

The worker processes are ``tests/integration/processes.py``'s, reused rather than copied.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "integration"))

import chaos_ledger
from chaos_ledger import LEDGER_ENV, Tally
from processes import WorkerProcess, worker_env

from shoal import App
from shoal.errors import ShoalError
from shoal.protocol import QueueStats

HERE = Path(__file__).parent


class DeathWatch:
    """When each process that wrote to the ledger was last seen alive.

    A run whose process died has no end record; the ledger takes the death as its end. Polled
    every 50 ms from /proc (a zombie counts as dead), for the pids the ledger names."""

    def __init__(self, ledger_dir: Path) -> None:
        self.ledger_dir = ledger_dir
        self.seen: dict[int, float] = {}
        self.dead: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos-deathwatch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.poll()

    def poll(self) -> None:
        now = time.time()
        for path in self.ledger_dir.glob("*.jsonl"):
            pid = int(path.stem)
            if pid in self.dead:
                continue
            if _alive(pid):
                self.seen[pid] = now
            else:
                self.dead[pid] = self.seen.get(pid, now)

    def deaths(self) -> dict[int, float]:
        """pid → the last time it was seen alive, for the processes that died."""
        self.poll()
        return dict(self.dead)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class Fleet:
    """The ``shoal worker chaos_tasks:app`` supervisors of one drill."""

    def __init__(self, tmp_path: Path, ledger_dir: Path) -> None:
        self.tmp_path = tmp_path
        self.ledger_dir = ledger_dir
        self.started: list[WorkerProcess] = []
        self.watch = DeathWatch(ledger_dir)

    def start(
        self,
        redis_url: str,
        *args: str,
        env: Mapping[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> WorkerProcess:
        """A supervisor with one worker process (unless ``args`` say otherwise), ``env`` added
        to its environment, run through ``wrapper`` (``ip netns exec NS``) if given."""
        n = len(self.started)
        extra = {"PYTHONPATH": str(HERE), LEDGER_ENV: str(self.ledger_dir), **(env or {})}
        proc = WorkerProcess(
            ["--processes", "1", *args],
            worker_env(redis_url, **extra),
            self.tmp_path / f"worker-{n}.log",
            "chaos_tasks:app",
            wrapper,
        )
        self.started.append(proc)
        return proc

    def kill(self, proc: WorkerProcess) -> None:
        proc.kill()

    def kill_all(self) -> None:
        for proc in self.started:
            proc.kill()
        self.watch.stop()

    @staticmethod
    def log(proc: WorkerProcess) -> str:
        return proc.log_path.read_text(errors="replace")

    def log_tails(self, chars: int = 3000) -> str:
        parts = []
        for n, proc in enumerate(self.started):
            text = self.log(proc)
            lines = [line[:500] for line in text[-chars:].splitlines()]
            parts.append(f"--- worker-{n} (supervisor pid {proc.pid}) ---\n" + "\n".join(lines))
        return "\n".join(parts)


def measure(app: App, queue: str) -> QueueStats | None:
    """The queue's figures, or None while Redis does not answer."""
    try:
        return app.measure(queue)
    except ShoalError:
        return None
    except OSError:
        return None


def settle(
    app: App, queue: str, done: Callable[[], bool], timeout: float
) -> tuple[QueueStats | None, bool]:
    """Poll until ``done()`` holds and the queue has nothing waiting, in flight or delayed.

    Returns the last figures and whether it settled: a drill records its figures and then
    asserts, so a run that never settles still reports what it saw."""
    deadline = time.monotonic() + timeout
    while True:
        stats = measure(app, queue)
        if stats and not (stats.waiting or stats.in_flight or stats.delayed) and done():
            return stats, True
        if time.monotonic() > deadline:
            return stats, False
        time.sleep(0.1)


def completed_at_least(app: App, queue: str, n: int) -> Callable[[], bool]:
    """A condition for ``wait_for``: ``queue`` has completed ``n`` messages."""

    def check() -> bool:
        stats = measure(app, queue)
        return stats is not None and stats.completed >= n

    return check


def delivery_problems(
    tally: Tally,
    final: QueueStats | None,
    settled: bool,
    in_flight: int,
    deaths: Mapping[int, float],
    t0: float,
) -> list[str]:
    """What broke the delivery promise, one line each (empty when it held): runs of one message
    at once on two workers, a queue that never drained, lost or dead-lettered messages, more
    duplicates than messages ``in_flight`` at the disruption. Times are relative to ``t0``."""
    problems = []
    if tally.overlaps:
        problems.append(
            f"{len(tally.overlaps)} message(s) ran on two workers at once, e.g. "
            + "; ".join(
                f"{a.id}: {chaos_ledger.describe(a, t0, deaths)} and "
                f"{chaos_ledger.describe(b, t0, deaths)}"
                for a, b in tally.overlaps[:3]
            )
        )
    if not settled:
        problems.append(f"the queue did not drain: {final}")
    if tally.lost:
        problems.append(f"{len(tally.lost)} lost, e.g. {tally.lost[:10]}")
    if final is not None and final.dead:
        problems.append(f"{final.dead} dead-lettered")
    if tally.duplicates > in_flight:
        problems.append(f"{tally.duplicates} duplicates, more than the {in_flight} in flight")
    return problems
