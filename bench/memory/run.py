"""Memory of ``shoal worker --processes 2``: RSS, PSS and USS of the supervisor and each child.

    .venv/bin/python bench/memory/run.py [--tasks 600] [--kinds noop,anoop] [--imports]

For each kind of task it starts a throwaway redis-server, then ``shoal worker tasks:app
--processes 2 --concurrency 64`` on ``bench/memory/tasks.py``, waits until both children
registered, runs the tasks while sampling every 20 ms (the peak is the largest sum of RSS over
the whole process tree, as ``bench/throughput`` counts it), then reads ``/proc/PID/smaps_rollup``
of every process at rest. PSS splits pages shared between processes (copy-on-write after a
fork, shared libraries) among them: the sum of PSS is what the tree really costs the machine;
the sum of RSS counts shared pages once per process.

It also lists what each process imported (``hook/sitecustomize.py`` makes each dump its
``sys.modules`` on SIGUSR2), and with ``--imports`` the slowest imports of ``shoal.cli`` and of
the worker path, and what each package costs imported alone. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shoal import App
from shoal.protocol.server import LocalRedis

HERE = Path(__file__).resolve().parent
QUEUE = "mem"
MIB = 2**20

LAUNCHERS = {
    "c": [sys.executable, "-c", "import sys; from shoal.cli import main; sys.exit(main())"],
    "module": [sys.executable, "-m", "shoal"],
    "script": [str(Path(sys.executable).with_name("shoal"))],
}
"""``c`` as bench/throughput starts Shoal; ``script`` is the console script, as the Docker image
runs it (with spawned children, that one made each child import the CLI again)."""


@dataclass
class Mem:
    rss: int = 0
    pss: int = 0
    uss: int = 0
    shared: int = 0

    def __add__(self, other: Mem) -> Mem:
        return Mem(
            self.rss + other.rss,
            self.pss + other.pss,
            self.uss + other.uss,
            self.shared + other.shared,
        )


def smaps(pid: int) -> Mem:
    """RSS, PSS, USS (private pages) and shared pages of one process, in bytes."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return Mem(
        fields.get("Rss", 0),
        fields.get("Pss", 0),
        fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        fields.get("Shared_Clean", 0) + fields.get("Shared_Dirty", 0),
    )


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def tree(root: int) -> list[int]:
    """``root`` and every descendant (from /proc, parent links)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += frontier
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def peak_sampler(root: int, stop: list[bool], out: list[int]) -> None:
    while not stop:
        total = 0
        for pid in tree(root):
            try:
                total += rss(pid)
            except OSError:
                continue
        out.append(total)
        time.sleep(0.02)


@dataclass
class Run:
    kind: str
    roles: dict[int, str] = field(default_factory=dict)
    at_rest: dict[int, Mem] = field(default_factory=dict)
    peak_rss: int = 0
    modules: dict[int, list[str]] = field(default_factory=dict)


def worker_command(concurrency: int, extra: list[str], launcher: str) -> list[str]:
    return [
        *LAUNCHERS[launcher],
        *("worker", "tasks:app", "-Q", QUEUE, "--processes", "2"),
        *("--concurrency", str(concurrency), "--log-level", "WARNING", *extra),
    ]


def wait_for_children(app: App, proc: subprocess.Popen[bytes]) -> set[int]:
    deadline = time.monotonic() + 60
    while len(app.broker.workers()) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the worker did not register two children (rc {proc.poll()})")
        time.sleep(0.05)
    return {w.pid for w in app.broker.workers()}


def run_tasks(app: App, proc: subprocess.Popen[bytes], kind: str, tasks: int) -> int:
    """Run ``tasks`` tasks of ``kind``; the peak of the tree's summed RSS meanwhile."""
    task = app.remote(f"tasks.{kind}", queue=QUEUE)
    stop: list[bool] = []
    samples: list[int] = []
    sampler = threading.Thread(target=peak_sampler, args=(proc.pid, stop, samples))
    sampler.start()
    try:
        before = app.measure(QUEUE).completed
        for start in range(0, tasks, 200):
            task.enqueue_many([(i,) for i in range(start, min(tasks, start + 200))])
        deadline = time.monotonic() + 180
        while app.measure(QUEUE).completed - before < tasks:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the worker did not finish the tasks")
            time.sleep(0.02)
    finally:
        stop.append(True)
        sampler.join()
    return max(samples, default=0)


def modules_of(pids: list[int], dump: Path) -> dict[int, list[str]]:
    """Each process's ``sys.modules``, written on SIGUSR2 by ``hook/sitecustomize.py``."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR2)
    time.sleep(0.5)
    found = {}
    for pid in pids:
        path = dump / f"{pid}.modules"
        if path.exists():
            found[pid] = path.read_text().split("\n")
    return found


def probe(extra: list[str]) -> None:
    """As Kubernetes and Prometheus would: GET /readyz and /metrics once, when served (the
    supervisor loads the Redis client, prometheus_client, to answer)."""
    for option, path in (("--health-port", "/readyz"), ("--metrics-port", "/metrics")):
        if option in extra:
            port = extra[extra.index(option) + 1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                answer.read()


def run_one(
    url: str, kind: str, tasks: int, concurrency: int, extra: list[str], launcher: str
) -> Run:
    app = App(url)
    app.broker.redis.flushall()
    dump = Path(tempfile.mkdtemp(prefix="shoal-mem-"))
    env = {
        **os.environ,
        "SHOAL_REDIS_URL": url,
        "SHOAL_MEM_DUMP": str(dump),
        "PYTHONPATH": os.pathsep.join(
            [str(HERE / "hook"), str(HERE), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(
        worker_command(concurrency, extra, launcher), env=env, cwd=HERE, start_new_session=True
    )
    result = Run(kind)
    try:
        children = wait_for_children(app, proc)
        probe(extra)
        result.peak_rss = run_tasks(app, proc, kind, tasks)
        time.sleep(1.0)  # at rest
        pids = tree(proc.pid)
        result.modules = modules_of(pids, dump)
        for pid in pids:
            try:
                result.at_rest[pid] = smaps(pid)
            except OSError:
                continue
            result.roles[pid] = (
                "supervisor"
                if pid == proc.pid
                else "child"
                if pid in children
                else "other: " + cmdline(pid)[:60]
            )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(dump, ignore_errors=True)
        app.close()
    return result


THIRD_PARTY_SKIP = {"__editable___shoal_0_1_0_finder", "_distutils_hack", "shoal", "tasks"}


def third_party(modules: list[str]) -> list[str]:
    stdlib = set(sys.stdlib_module_names) | set(sys.builtin_module_names)
    tops = {m.split(".")[0] for m in modules if m}
    return sorted(t for t in tops if t not in stdlib and t not in THIRD_PARTY_SKIP)


def report(run: Run) -> None:
    print(f"\n== {run.kind}: {len(run.at_rest)} processes ==")
    print(f"{'process':<12} {'pid':>7} {'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8} {'shared':>7}")
    total = Mem()
    for pid, mem in sorted(run.at_rest.items(), key=lambda kv: (run.roles[kv[0]] != "supervisor",)):
        role = run.roles[pid]
        total = total + mem
        print(
            f"{role[:12]:<12} {pid:>7} {mem.rss / MIB:>8.1f} {mem.pss / MIB:>8.1f} "
            f"{mem.uss / MIB:>8.1f} {mem.shared / MIB:>7.1f}"
        )
        if role.startswith("other"):
            print(f"    {role}")
    print(
        f"{'sum at rest':<12} {'':>7} {total.rss / MIB:>8.1f} {total.pss / MIB:>8.1f} "
        f"{total.uss / MIB:>8.1f} {total.shared / MIB:>7.1f}"
    )
    print(f"{'peak RSS sum':<12} {'':>7} {run.peak_rss / MIB:>8.1f}   (sampled every 20 ms)")
    for pid, mods in run.modules.items():
        print(
            f"{run.roles.get(pid, '?')[:10]} {pid}: {len(mods)} modules; "
            f"third-party: {', '.join(third_party(mods))}"
        )


def importtime(statement: str, top: int = 12) -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement],
        capture_output=True,
        text=True,
        check=True,
    )
    rows: list[tuple[int, str]] = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)", line)
        if m and len(m.group(3)) <= 2:  # imported by the statement itself, or one level down
            rows.append((int(m.group(2)), m.group(3) + m.group(4)))
    print(f"\n-X importtime -c {statement!r}: top {top} by cumulative µs (this run, noisy)")
    for us, name in sorted(rows, reverse=True)[:top]:
        print(f"  {us:>8}  {name}")


ALONE = """
import sys
def rss():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * 4096
import asyncio, logging, json, typing, dataclasses, socket, ssl, threading
base = rss()
import {module}
print(rss() - base, len(sys.modules))
"""


def import_costs(packages: list[str]) -> None:
    print("\nRSS added by importing each package alone, after the stdlib a worker loads anyway:")
    for package in packages:
        done = subprocess.run(
            [sys.executable, "-c", ALONE.format(module=package)],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0:
            added, count = done.stdout.split()
            print(f"  {package:<22} {int(added) / MIB:>6.1f} MiB  ({count} modules in all)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--kinds", default="noop,anoop", help="noop, anoop, io, aio")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--imports", action="store_true", help="also import timings and costs")
    parser.add_argument("--launcher", choices=sorted(LAUNCHERS), default="c")
    parser.add_argument("extra", nargs="*", help="more `shoal worker` options (after --)")
    args = parser.parse_args()
    with LocalRedis() as server:
        for kind in args.kinds.split(","):
            report(
                run_one(
                    server.url,
                    kind,
                    args.tasks,
                    args.concurrency,
                    args.extra,
                    args.launcher,
                )
            )
    if args.imports:
        importtime("import shoal.cli")
        importtime("import shoal.supervisor, shoal.worker")
        import_costs(
            [
                "shoal",
                "shoal.cli",
                "shoal.worker",
                "shoal.supervisor",
                "rich.console",
                "click",
                "opentelemetry.trace",
                "opentelemetry.propagate",
                "prometheus_client",
                "psutil",
                "croniter",
                "redis",
                "redis.asyncio",
                "orjson",
                "multiprocessing",
                "http.server",
            ]
        )


if __name__ == "__main__":
    main()
