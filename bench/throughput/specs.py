"""How each peer is installed and how its two worker processes are started (harness side).

Each peer gets its own venv under ``bench/.venv-peers/<venv>/``. Worker commands run with the
working directory ``bench/throughput`` on ``PYTHONPATH`` (so ``peers.<x>_peer`` and ``record``
import), ``BENCH_BROKER_URL`` (db 0), ``BENCH_BOOK_URL`` (db 1) and ``BENCH_CONCURRENCY`` set.

``mode`` is ``"noop"`` (the peer's natural concurrency) or ``"io"`` (about 50 concurrent tasks per
process where the peer's execution model allows it, for the 600 x 50 ms drain).

A traced row (``tracing`` set) is its ``twin`` row with OpenTelemetry on in the producer and the
workers, exporting to the harness's OTLP/HTTP receiver (see :mod:`otlp` and ``scenarios.env``).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENVS = REPO / "bench" / ".venv-peers"
COMMON_PACKAGES = ["redis", "hiredis"]
# The Celery rows' OpenTelemetry: the official instrumentation, and the same SDK and OTLP/HTTP
# exporter release that Shoal's venv resolves to (Shoal's pyproject asks for >= 1.25).
OTEL_SDK = ["opentelemetry-sdk==1.45.2", "opentelemetry-exporter-otlp-proto-http==1.45.2"]
CELERY_OTEL = ["opentelemetry-instrumentation-celery==0.66b2", *OTEL_SDK]
OTEL_DISTS = ["opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"]

Cmds = list[list[str]]


@dataclass(frozen=True)
class PeerSpec:
    name: str
    venv: str  # directory under VENVS
    module: str  # peers.<module>_peer
    packages: list[str]
    dists: list[str]  # distributions whose versions are reported
    commands: Callable[[Path, str], Cmds]  # (venv bin dir, mode) -> argv per root process
    concurrency: Callable[[str], int]  # mode -> BENCH_CONCURRENCY / per-process concurrency
    describe: Callable[[str], str]  # mode -> human description of the worker setup
    scale: float = 1.0  # multiplier on task counts for slow peers
    extra_pythonpath: list[Path] = field(default_factory=list)
    async_tasks: bool = False
    bulk: bool = False  # has a batch-enqueue API (driver action ``bulk``)
    label: str = ""  # the README table's name; ``{v}`` is the first dist's major.minor
    tracing: float | None = None  # fraction of traces sampled; None: no tracing at all
    twin: str | None = None  # the same set-up untraced: a traced row's costs are relative to it
    feature: str | None = None  # a features row (``--features``): BENCH_FEATURE, see features.py
    baseline: bool = False  # a features row run on ``--baseline-rev`` instead of the tree

    def title(self, versions: dict[str, str]) -> str:
        version = versions.get(self.dists[0], "") if self.dists else ""
        short = ".".join(version.split(".")[:2])
        return (self.label or self.name).replace("{v}", short)


def _shoal_packages() -> list[str]:
    """Shoal's own runtime dependencies, read from the repo's pyproject.toml; the package itself
    is imported from ``runtime/`` via PYTHONPATH, so the venv always runs the working tree and
    nothing is written into the repo outside ``bench/``."""
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    return list(data["project"]["dependencies"])


def _celery(bin_: Path, mode: str) -> Cmds:
    base = [
        str(bin_ / "celery"),
        "-A",
        "peers.celery_peer",
        "worker",
        "-Q",
        "bench",
        "--loglevel",
        "WARNING",
    ]
    if mode == "noop":
        return [[*base, "--pool", "prefork", "--concurrency", "2", "-n", "bench1@%h"]]
    return [
        [*base, "--pool", "threads", "--concurrency", "50", "-n", f"bench{k}@%h"] for k in (1, 2)
    ]


def _rq(worker_class: str) -> Callable[[Path, str], Cmds]:
    def commands(bin_: Path, mode: str) -> Cmds:
        return [
            [
                str(bin_ / "rq"),
                "worker",
                "bench",
                "--url",
                "{broker}",
                "--quiet",
                "--worker-class",
                worker_class,
                "--name",
                f"bench{k}-{{token}}",
            ]
            for k in (1, 2)
        ]

    return commands


def _dramatiq(bin_: Path, mode: str) -> Cmds:
    threads = "8" if mode == "noop" else "50"
    return [
        [
            str(bin_ / "dramatiq"),
            "peers.dramatiq_peer",
            "--processes",
            "2",
            "--threads",
            threads,
            "--queues",
            "bench",
        ]
    ]


def _huey(bin_: Path, mode: str) -> Cmds:
    base = [str(bin_ / "huey_consumer"), "peers.huey_peer.huey", "--quiet"]
    if mode == "noop":
        return [[*base, "--worker-type", "process", "--workers", "2"]]
    return [[*base, "--worker-type", "thread", "--workers", "50"] for _ in (1, 2)]


def _arq(bin_: Path, mode: str) -> Cmds:
    return [
        [
            str(bin_ / "arq"),
            "peers.arq_peer.WorkerSettings",
            "--custom-log-dict",
            "peers.arq_peer.LOG_CONFIG",
        ]
        for _ in (1, 2)
    ]


def _saq(bin_: Path, mode: str) -> Cmds:
    return [[str(bin_ / "saq"), "peers.saq_peer.settings", "--workers", "2", "--quiet"]]


def _taskiq(bin_: Path, mode: str) -> Cmds:
    return [
        [
            str(bin_ / "taskiq"),
            "worker",
            "peers.taskiq_peer:broker",
            "--workers",
            "2",
            "--max-async-tasks",
            str(_taskiq_conc(mode)),
            "--log-level",
            "WARNING",
        ]
    ]


def _taskiq_conc(mode: str) -> int:
    return 100 if mode == "noop" else 50  # 100 is taskiq's default


def _shoal_default_concurrency() -> int | None:
    """``shoal worker``'s default ``--concurrency``, read from the CLI's source (for the
    description only: the sync rows pass no ``--concurrency`` and so get whatever it is)."""
    text = (REPO / "runtime" / "shoal" / "cli.py").read_text()
    found = re.search(r'"--concurrency",\s*"-c",\s*default=(\d+)', text)
    return int(found.group(1)) if found else None


def _shoal(module: str, noop_conc: int | None) -> Callable[[Path, str], Cmds]:
    """``shoal worker peers.<module>:app --processes 2``, at ``noop_conc`` (None: the CLI's
    default) for the no-op and latency steps and at 50 for the I/O step."""

    def commands(bin_: Path, mode: str) -> Cmds:
        conc = noop_conc if mode == "noop" else 50
        launcher = "import sys; from shoal.cli import main; sys.argv[0] = 'shoal'; sys.exit(main())"
        return [
            [
                str(bin_ / "python"),
                "-c",
                launcher,
                "worker",
                f"peers.{module}:app",
                "--queues",
                "bench",
                *(["--concurrency", str(conc)] if conc else []),
                "--processes",
                "2",
            ]
        ]

    return commands


def _shoal_async_conc(mode: str) -> int:
    return 64 if mode == "noop" else 50


def _shoal_sync_conc(mode: str) -> int:
    return (_shoal_default_concurrency() or 0) if mode == "noop" else 50


def _shoal_describe(sync: bool) -> Callable[[str], str]:
    def describe(mode: str) -> str:
        if not sync:
            return f"shoal worker --processes 2 --concurrency {_shoal_async_conc(mode)} (async)"
        if mode == "io":
            return "shoal worker --processes 2 --concurrency 50 (sync, threads)"
        default = _shoal_default_concurrency()
        return f"shoal worker --processes 2, default concurrency ({default or '?'}) (sync, threads)"

    return describe


def _fixed(noop: int, io: int) -> Callable[[str], int]:
    return lambda mode: noop if mode == "noop" else io


def _traced(spec: PeerSpec, fraction: float, **changes: object) -> PeerSpec:
    """``spec`` with tracing on, ``fraction`` of the traces sampled (named ``<twin>-traced`` at
    100 %, ``<twin>-traced10`` at 10 %)."""
    percent = round(100 * fraction)
    fields: dict[str, object] = {
        "name": f"{spec.name}-traced{'' if percent == 100 else percent}",
        "dists": [*spec.dists, *OTEL_DISTS],
        "label": f"{spec.label or spec.name}, traced {percent} %",
        "tracing": fraction,
        "twin": spec.name,
    }
    fields.update(changes)
    return replace(spec, **fields)  # type: ignore[arg-type]


def _with_traced(specs: list[PeerSpec]) -> list[PeerSpec]:
    """Each traced row right after its twin, so that they run close together in time."""
    out: list[PeerSpec] = []
    for spec in specs:
        out.append(spec)
        if spec.name in ("shoal", "shoal-sync"):
            out += [_traced(spec, 1.0), _traced(spec, 0.1)]
        elif spec.name == "celery":  # its own venv: the untraced row's stays as it was
            out.append(
                _traced(
                    spec,
                    1.0,
                    venv="celery-otel",
                    packages=[*spec.packages, *CELERY_OTEL],
                    dists=[*spec.dists, "opentelemetry-instrumentation-celery", *OTEL_DISTS],
                )
            )
    return out


_PEERS: list[PeerSpec] = [
    PeerSpec(
        "shoal",
        "shoal",
        "shoal",
        _shoal_packages(),
        ["redis"],
        _shoal("shoal_peer", 64),
        _shoal_async_conc,
        _shoal_describe(sync=False),
        extra_pythonpath=[REPO / "runtime"],
        async_tasks=True,
        bulk=True,
        label="shoal, async tasks",
    ),
    PeerSpec(
        "shoal-sync",
        "shoal",
        "shoal_sync",
        _shoal_packages(),
        ["redis"],
        _shoal("shoal_sync_peer", None),
        _shoal_sync_conc,
        _shoal_describe(sync=True),
        extra_pythonpath=[REPO / "runtime"],
        bulk=True,
        label="shoal, sync tasks",
    ),
    PeerSpec(
        "celery",
        "celery",
        "celery",
        ["celery[redis]==5.7.0"],
        ["celery", "kombu"],
        _celery,
        _fixed(2, 50),
        lambda m: "1 worker, prefork -c 2" if m == "noop" else "2 workers, threads -c 50",
        label="celery {v}",
        bulk=True,
    ),
    PeerSpec(
        "rq",
        "rq",
        "rq",
        ["rq==3.0.0"],
        ["rq"],
        _rq("rq.worker.Worker"),
        _fixed(1, 1),
        lambda m: "2 x rq worker (Worker: fork per job)",
        label="rq {v} (fork)",
        scale=0.1,
        bulk=True,
    ),
    PeerSpec(
        "rq-simple",
        "rq",
        "rq",
        ["rq==3.0.0"],
        ["rq"],
        _rq("rq.worker.SimpleWorker"),
        _fixed(1, 1),
        lambda m: "2 x rq worker (SimpleWorker: in-process)",
        label="rq {v} (SimpleWorker)",
        scale=0.25,
        bulk=True,
    ),
    PeerSpec(
        "dramatiq",
        "dramatiq",
        "dramatiq",
        ["dramatiq[redis]==2.2.1"],
        ["dramatiq"],
        _dramatiq,
        _fixed(8, 50),
        lambda m: f"--processes 2 --threads {8 if m == 'noop' else 50}",
        label="dramatiq {v}",
        bulk=True,
    ),
    PeerSpec(
        "huey",
        "huey",
        "huey",
        ["huey==3.5.4"],
        ["huey"],
        _huey,
        _fixed(1, 50),
        lambda m: "1 consumer, -k process -w 2" if m == "noop" else "2 consumers, -k thread -w 50",
        label="huey {v}",
    ),
    PeerSpec(
        "arq",
        "arq",
        "arq",
        ["arq==0.28.0"],
        ["arq"],
        _arq,
        _fixed(10, 50),
        lambda m: f"2 x arq, max_jobs={10 if m == 'noop' else 50}",
        label="arq {v}",
        scale=0.25,
        async_tasks=True,
    ),
    PeerSpec(
        "saq",
        "saq",
        "saq",
        ["saq==0.26.4", "typing_extensions"],
        ["saq"],
        _saq,
        _fixed(10, 50),
        lambda m: f"saq --workers 2, concurrency={10 if m == 'noop' else 50}",
        label="saq {v}",
        async_tasks=True,
    ),
    PeerSpec(
        "taskiq",
        "taskiq",
        "taskiq",
        ["taskiq==0.13.0", "taskiq-redis==1.2.4"],
        ["taskiq", "taskiq-redis"],
        _taskiq,
        _taskiq_conc,
        lambda m: f"taskiq worker --workers 2 --max-async-tasks {_taskiq_conc(m)}",
        label="taskiq {v}",
        async_tasks=True,
    ),
]
SPECS: dict[str, PeerSpec] = {spec.name: spec for spec in _with_traced(_PEERS)}
