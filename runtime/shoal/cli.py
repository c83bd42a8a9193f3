"""The ``shoal`` command: worker, enqueue, info, schedules, dlq, dashboard, demo, dev, version.

Each command imports what it uses when it runs: ``rich`` only to print tables, the App and the
Redis client only to talk to Redis, so ``shoal worker`` hands a lean process to its supervisor.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shoal import cli_control, logs
from shoal import cli_startup as startup
from shoal.cli_output import (
    Listing,
    dump,
    emit,
    is_terminal,
    output_option,
    plain_cell,
    rich_table,
    when,
)
from shoal.errors import ConfigurationError, ShoalError, TaskModuleError
from shoal.settings import Settings
from shoal.version import __version__

if TYPE_CHECKING:
    from collections.abc import Mapping

    from rich.console import Console

    from shoal.app import App
    from shoal.dead_letter import DeadLetter
    from shoal.protocol import QueueStats

_console: Console | None = None


def console() -> Console:
    """The console tables and messages are printed on (rich is imported on first use)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console()
    return _console


def _app() -> App:
    """An App from the environment (``SHOAL_*``), for the commands that only talk to Redis."""
    from shoal.app import App

    return App()


def _load_app(spec: str) -> App:
    """:func:`load_app`, looking in the current directory first (as ``python -m``, Celery, RQ
    and Dramatiq do): ``shoal worker tasks`` imports ./tasks.py. Worker processes inherit this
    ``sys.path``. ``spec`` is a module name, or a path as :func:`module_spec` accepts."""
    from shoal.app import load_app

    cwd = os.getcwd()
    if cwd in sys.path:
        sys.path.remove(cwd)
    sys.path.insert(0, cwd)
    return load_app(module_spec(spec))


def module_spec(spec: str) -> str:
    """``MODULE[:APP]`` as given, or a path to a ``.py`` file under the current directory as
    its dotted module name (``./tasks.py`` → ``tasks``, ``examples/tasks.py:app`` →
    ``examples.tasks:app``), so it imports once, under one name, in every worker process."""
    target, colon, attr = spec.rpartition(":")
    if not colon or not attr.isidentifier():
        target, attr = spec, ""
    if not (target.endswith(".py") or "/" in target or os.sep in target):
        return spec
    path = Path(target)
    suffix = f":{attr}" if attr else ""
    if path.suffix == ".py" and not path.is_file():
        raise ConfigurationError(
            f"no file {target}: pass the task module's name (MODULE[:APP]), e.g. `shoal worker "
            f"{path.stem}{suffix}` from the directory that holds {path.name}"
        )
    if path.suffix != ".py":
        raise ConfigurationError(
            f"{target!r} is not a Python file: pass the task module's name (MODULE[:APP]), "
            f"e.g. `shoal worker {path.stem or 'tasks'}{suffix}` from the directory that holds it"
        )
    try:
        # where the path is, not where a symlink points: `import` finds it by its own name
        relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(Path.cwd()))
    except ValueError:
        raise ConfigurationError(
            f"{target} is outside the current directory: run `cd {path.parent} && shoal worker "
            f"{path.stem}{suffix}`, or add its directory to PYTHONPATH and pass the module name"
        ) from None
    parts = list(relative.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if not parts or not all(p.isidentifier() for p in parts):
        raise ConfigurationError(
            f"{target} cannot be imported as a module (each folder and the file name must be a "
            "Python identifier): pass the task module's name (MODULE[:APP])"
        )
    return ".".join(parts) + suffix


def _finite(value: float) -> float:
    if math.isnan(value):  # NaN passes every range check
        raise click.BadParameter("must be a number of seconds, not nan")
    return value


def _queues(value: str | None) -> list[str]:
    return [q.strip() for q in (value or "").split(",") if q.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "--version", "-V", prog_name="shoal", message="%(prog)s %(version)s"
)
def cli() -> None:
    """Shoal: a Kubernetes-native task queue. Redis URL from SHOAL_REDIS_URL."""


WORKER_HELP = """Run workers for the tasks of MODULE[:APP] (APP defaults to app).

\b
MODULE is imported with the current directory first on sys.path, as Celery, RQ
and Dramatiq do: `shoal worker tasks` beside tasks.py, `shoal worker
examples.tasks` from this repository's root. A path to a .py file under the
current directory is accepted too and imported by its module name
(./tasks.py is `tasks`, examples/tasks.py is `examples.tasks`).

\b
At start-up the worker waits for Redis: while it does not answer, one line per
try, backing off up to 10 s, for at most --wait-for-redis seconds (default 60;
0 fails at once, `inf` waits for ever); then it exits with status 2 and says
why, so Kubernetes restarts it with its own backoff. A server that answers but
is not Redis fails at once. Once started, a worker rides out Redis outages:
it reconnects with backoff and loses nothing."""


@cli.command(help=WORKER_HELP)
@click.argument("app_spec", metavar="MODULE[:APP]")
@click.option("--queues", "-Q", help="Comma-separated queues (default: every queue of the app).")
@click.option(
    "--concurrency",
    "-c",
    default=16,
    show_default=True,
    help="Tasks run at once per process (threads for sync tasks, coroutines for async).",
)
@click.option("--processes", "-p", default=1, show_default=True, help="Worker processes.")
@click.option("--burst", is_flag=True, help="Drain the queues, then exit.")
@click.option(
    "--health-port", type=click.IntRange(1, 65535), help="Serve /livez and /readyz on this port."
)
@click.option(
    "--metrics-port", type=click.IntRange(1, 65535), help="Serve Prometheus /metrics on this port."
)
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines as text or JSON (default: SHOAL_LOG_FORMAT, else text).",
)
@click.option(
    "--wait-for-redis",
    "wait_s",
    type=float,
    default=startup.DEFAULT_WAIT_S,
    show_default=True,
    help="Seconds to wait at start-up for Redis to answer (0: fail at once; inf: for ever).",
)
@click.option(
    "--max-tasks-per-process",
    "max_tasks",
    type=click.IntRange(min=0),
    metavar="N",
    help="Replace a worker process once it has finished N tasks, for task code that leaks: it "
    "finishes its running tasks and hands back the rest first; nothing is lost (0: never; "
    "default SHOAL_WORKER_MAX_TASKS_PER_PROCESS, else 0).",
)
@click.option(
    "--max-memory-per-process",
    "max_memory_mib",
    type=click.IntRange(min=0),
    metavar="MiB",
    help="Replace a worker process, between tasks, once its resident memory exceeds this "
    "many MiB; keep it under the container's memory limit divided by --processes (0: never; "
    "default SHOAL_WORKER_MAX_MEMORY_PER_PROCESS_MIB, else 0).",
)
def worker(
    app_spec: str,
    queues: str | None,
    concurrency: int,
    processes: int,
    burst: bool,
    health_port: int | None,
    metrics_port: int | None,
    log_level: str,
    log_format: str | None,
    wait_s: float,
    max_tasks: int | None,
    max_memory_mib: int | None,
) -> None:
    from shoal.supervisor import Supervisor, WorkerSpec, handover

    level = logging.getLevelName(log_level.upper())
    spec_name = module_spec(app_spec)
    app = _load_app(spec_name)  # fails fast, here, on a bad module; and the app has the settings
    fmt = log_format or app.settings.log_format
    logs.setup(level, fmt)
    for option, port in (("--health-port", health_port), ("--metrics-port", metrics_port)):
        if port is not None:
            startup.check_port_free(option, port)
    startup.wait_for_redis(app, wait_s)
    spec = WorkerSpec(
        spec_name,
        _queues(queues),
        concurrency,
        burst,
        metrics_port is not None,
        fmt,
        app.settings.worker_max_tasks_per_process if max_tasks is None else max_tasks,
        app.settings.worker_max_memory_per_process_mib
        if max_memory_mib is None
        else max_memory_mib,
    )
    handover(  # this process, its task module and Redis client, become a lean supervisor
        Supervisor(
            spec,
            processes=processes,
            settings=app.settings,
            health_port=health_port,
            metrics_port=metrics_port,
            log_level=level,
            queues=app.queues(),
        )
    )


def _warn(text: str) -> None:
    click.echo(f"warning: {text}", err=True)


@cli.command()
@click.argument("task_name")
@click.option("--args", "args_json", default="[]", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("--queue", "-q", help="Queue (default: the task's, with --app; else default).")
@click.option(
    "--app",
    "app_spec",
    help="MODULE[:APP] that defines the task: its arguments are checked against the "
    "function's signature before anything is sent (warns when it does not define the task).",
)
@click.option(
    "--delay",
    type=click.FloatRange(min=0, max=10 * 365 * 86400),
    default=0.0,
    callback=lambda _ctx, _param, value: _finite(value),
    help="Seconds before the task may run.",
)
def enqueue(
    task_name: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    app_spec: str | None,
    delay: float,
) -> None:
    """Enqueue TASK_NAME with JSON arguments; prints the message id.

    Warns on stderr when no live worker consumes the queue."""
    import orjson

    try:
        args, kwargs = orjson.loads(args_json), orjson.loads(kwargs_json)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"--args/--kwargs must be JSON: {exc}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args takes a JSON list and --kwargs a JSON object")
    app = _load_app(app_spec) if app_spec else _app()
    known = app.tasks.get(task_name)
    if app_spec and known is None:
        raise ConfigurationError(
            f"{app_spec} defines no task {task_name!r} "
            f"({startup.unknown_task_hint(task_name, sorted(app.tasks))}); nothing was "
            "enqueued (leave out --app to send a task by name that this app does not define)"
        )
    if known is not None:
        startup.check_arguments(known.fn, task_name, args, kwargs)
        task = known.on_queue(queue) if queue and queue != known.queue else known
    else:
        task = app.remote(task_name, queue=queue)
    handle = task.with_options(delay=delay).enqueue(*args, **kwargs)
    click.echo(handle.id)
    try:  # best effort: the message is stored, whatever this check runs into
        consumed = any(task.queue in w.queues for w in app.broker.workers())
    except Exception:
        consumed = True
    if not consumed:
        _warn(
            f"no live worker consumes queue {task.queue!r}: the message waits until one does "
            f"(`shoal worker MODULE --queues {task.queue}`; `shoal info --workers` lists workers)"
        )


def _age(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def queue_listing(
    before: list[QueueStats],
    after: list[QueueStats],
    rate_limits: Mapping[str, str | None] | None = None,
) -> Listing:
    """Per-queue figures; rates from two measurements. ``rate_limits``: each queue's stored
    default (``20/s``), a wide column (configuration beside the live figures) kept last, so
    the piped columns before it keep their places for ``cut``."""
    listing = Listing(
        "Queues",
        (
            "queue",
            "state",
            "waiting",
            "in flight",
            "delayed",
            "dead",
            "oldest",
            "done/s",
            "enqueued/s",
            "completed",
            "enqueued",
            "retried",
            "dead total",
            "rate limit",
        ),
        wide=frozenset({"enqueued", "retried", "dead total", "rate limit"}),
    )
    from shoal.fleet import per_second

    limits = rate_limits or {}
    for a, b in zip(before, after, strict=True):
        rates = per_second(a, b)
        limit = limits.get(b.queue)
        done_rate, enqueue_rate = rates["completed"], rates["enqueued"]
        listing.add(
            (
                b.queue,
                "paused" if b.paused else "active",
                str(b.waiting),
                str(b.in_flight),
                str(b.delayed),
                str(b.dead),
                _age(b.oldest_age_s) if b.waiting else "-",
                f"{done_rate:.1f}",
                f"{enqueue_rate:.1f}",
                str(b.completed),
                str(b.enqueued),
                str(b.retried),
                str(b.dead_total),
                limit or "-",
            ),
            {
                **dataclasses.asdict(b),
                "completed_per_s": round(done_rate, 3),
                "enqueued_per_s": round(enqueue_rate, 3),
                "rate_limit": limit,
            },
        )
    return listing


def workers_listing(app: App) -> Listing:
    """Live worker registrations."""
    listing = Listing(
        "Workers",
        (
            "id",
            "host",
            "queues",
            "in flight",
            "concurrency",
            "processed",
            "leases lost",
            "up",
            "version",
            "pid",
            "started at",
        ),
        wide=frozenset({"pid", "started at"}),
        empty="No live workers.",
    )
    for w in app.broker.workers():
        listing.add(
            (
                w.id,
                w.host,
                ",".join(w.queues),
                str(w.in_flight),
                str(w.concurrency),
                str(w.processed),
                str(w.leases_lost),
                _age(time.time() - w.started_at),
                w.version,
                str(w.pid),
                when(w.started_at),
            ),
            {**dataclasses.asdict(w), "queues": list(w.queues)},
        )
    return listing


def _queue_names(values: tuple[str, ...]) -> list[str]:
    """``-q a,b`` and ``-q a -q b`` alike."""
    return list(dict.fromkeys(q for value in values for q in _queues(value)))


@cli.command()
@click.option(
    "--queue", "-q", "queue_names", multiple=True, help="Only these queues (a,b or repeated)."
)
@click.option("--workers", "show_workers", is_flag=True, help="Also list live workers.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0, max=3600),
    default=1.0,
    show_default=True,
    help="Seconds between the two measurements rates are computed from (and, with --watch, "
    "between refreshes).",
)
@output_option
@click.option("--json", "as_json", is_flag=True, help="Same as -o json.")
@click.option(
    "--watch",
    "-w",
    is_flag=True,
    help="Refresh every --interval until Ctrl-C (a live table "
    "in a terminal; a new block of rows each time when piped).",
)
def info(
    queue_names: tuple[str, ...],
    show_workers: bool,
    interval: float,
    output: str | None,
    as_json: bool,
    watch: bool,
) -> None:
    """Per-queue depth, in flight, delayed, dead, oldest age and rates."""
    fmt = "json" if as_json else output
    app = _app()
    names = _queue_names(queue_names)

    def measure(wait: float) -> list[Listing]:
        queues = names or app.broker.queues()
        if not queues:
            listings = [Listing("Queues", ("queue",), empty=f"No queues yet on {app!r}.")]
        else:
            before = app.broker.measure_many(queues)
            time.sleep(wait)
            after = app.broker.measure_many(queues)
            limits = {q: app.queue_defaults(q).get("rate_limit") for q in queues}
            listings = [queue_listing(before, after, limits)]
        return [*listings, workers_listing(app)] if show_workers else listings

    if not watch:
        emit(measure(interval), fmt, console())
        return
    try:
        if fmt is None and is_terminal():
            from rich.console import Group
            from rich.live import Live

            with Live(console=console(), auto_refresh=False) as live:
                while True:
                    shown = measure(interval)
                    live.update(Group(*(rich_table(x, False) for x in shown)), refresh=True)
        while True:
            emit(measure(interval), fmt, console())
            click.echo()
    except KeyboardInterrupt:
        return


@cli.command()
@click.option(
    "--queue", "-q", "queue_names", multiple=True, help="Only these queues (a,b or repeated)."
)
@click.option(
    "--prune",
    is_flag=True,
    help="First delete code schedules no worker has declared for 10 minutes (removed from code).",
)
@output_option
def schedules(queue_names: tuple[str, ...], prune: bool, output: str | None) -> None:
    """Periodic schedules (code and Queue resources): next run, last run and its outcome.

    A schedule whose ticks never ran (new, skipped, suspended) shows no last run."""
    from shoal.schedule_plan import last_ran, schedule_record
    from shoal.scheduler import prune_stale, stored
    from shoal.schedules import describe_time

    app = _app()
    queues = _queue_names(queue_names) or app.broker.queues()
    if prune:
        for q in queues:
            for name in prune_stale(app.broker, q):
                click.echo(f"removed stale schedule {name!r} of queue {q!r}", err=True)
    listing = Listing(
        "Schedules",
        ("queue", "name", "cron", "task", "source", "suspended", "next run", "last run", "outcome"),
        empty=f"No schedules on {app!r}.",
    )
    for row in (row for q in queues for row in stored(app.broker, q)):
        s, ran, record = row.schedule, last_ran(row), schedule_record(row)
        last = describe_time(ran.tick_ms if ran else None, s.zone if s else None)
        if s is None:
            cells = (row.queue, row.name, "-", "-", "-", "-", "-", last, f"invalid: {row.error}")
            listing.add(cells, record)
            continue
        source = f"{s.source} (stale: no worker declares it; --prune)" if row.stale else s.source
        listing.add(
            (
                row.queue,
                row.name,
                f"{s.cron} ({s.timezone})",
                s.task,
                source,
                "yes" if s.suspend else "no",
                describe_time(row.next_ms, s.zone),
                last,
                row.outcome,
            ),
            record,
        )
    emit([listing], output, console())


@cli.command()
@click.option("--tasks", "-n", default=5000, show_default=True, help="Tasks to enqueue.")
@click.option("--processes", "-p", default=2, show_default=True, help="Worker processes.")
def demo(tasks: int, processes: int) -> None:
    """Run a local demo: Redis (its own, unless SHOAL_REDIS_URL is set), workers, a burst."""
    from shoal.demo import run_demo

    run_demo(tasks=tasks, processes=processes, console=console())


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``15m``, ``3h`` or ``7d``."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        return float(value) * units[unit]
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a duration; use seconds or a suffix: 90s, 15m, 3h, 7d"
        ) from None


@cli.group()
def dlq() -> None:
    """Inspect, replay and purge a queue's dead letters."""


@dlq.command("list")
@click.argument("queue")
@click.option("--limit", default=50, show_default=True)
@output_option
def dlq_list(queue: str, limit: int, output: str | None) -> None:
    """The newest dead letters of QUEUE (the error cut to 80 characters in a terminal table;
    whole with -o wide, json, yaml, or when piped)."""
    from shoal.dlq import summary_record

    dead = _app().dlq(queue)
    listing = Listing(
        f"Dead letters of {queue} ({len(dead)} in all)",
        ("id", "task", "reason", "attempts", "failed at", "error"),
        empty=f"No dead letters in {queue}.",
    )
    wide = output == "wide" or not is_terminal()
    for e in dead.entries(limit):  # summaries only: listing never reads the bodies
        error = _printable(e.error) if wide else _printable(e.error[:80])
        listing.add(
            (
                _printable(e.id),
                _printable(e.task or "-"),
                e.reason,
                str(e.attempts),
                when(e.failed_at),
                error,
            ),
            summary_record(e),
        )
    emit([listing], output, console())


def _printable(text: str) -> str:
    """``text`` with control characters escaped: a poison message must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def _body_label(entry: DeadLetter) -> str:
    size, kept = entry.size, len(entry.body or b"")
    if entry.stored == "envelope":
        return f"the whole envelope, {size} bytes"
    if entry.stored == "excerpt":
        if size is not None and size > kept:
            return f"first {kept} of {size} bytes; not a verified envelope"
        return f"{kept} bytes; not a verified envelope"
    return "as kept by an older Shoal"


@dlq.command("show")
@click.argument("queue")
@click.argument("message_id")
@output_option
def dlq_show(queue: str, message_id: str, output: str | None) -> None:
    """Everything about one dead letter: reason, error, traceback, trace id, message (or, when
    it was not a verified envelope, an excerpt with its real size).

    Piped: one `field<TAB>value` row per field, each value on one line (newlines as \\n)."""
    from shoal.reasons import meaning

    entry = _app().dlq(queue).get(message_id)
    if entry is None:
        raise click.ClickException(
            f"no dead letter {message_id} in queue {queue!r}; see `shoal dlq list {queue}`"
        )
    replay = (
        f"not replayable: {entry.refusal}; delete it with `shoal dlq purge {queue} {entry.id}`"
        if entry.refusal
        else "replayable"
    )
    fields: list[tuple[str, object]] = [
        ("id", entry.id),
        ("task", entry.task),
        ("reason", entry.reason),
        ("meaning", meaning(entry.reason)),
        ("replay", replay),
        ("error", entry.error),
        ("attempts", entry.attempts),
        ("enqueued at", when(entry.enqueued_at)),
        ("failed at", when(entry.failed_at)),
        ("trace id", entry.trace_id),
        (
            "workflow",
            f"{entry.workflow['kind']} {entry.workflow['id']}" if entry.workflow else None,
        ),
        ("message kept", _body_label(entry)),
        ("message", entry.message),
        ("traceback", entry.traceback or None),
    ]
    if output in ("json", "yaml"):
        from shoal.dlq import entry_record

        record = entry_record(queue, entry)
        click.echo(dump(record, output))
        return
    if not is_terminal():
        for label, value in fields:
            click.echo(f"{label}\t{plain_cell('-' if value is None else str(value))}")
        return
    from rich.text import Text

    out = console()
    for label, value in fields[:-3]:
        text = "-" if value is None else _printable(str(value))
        out.print(Text.assemble((f"{label:>12}", "bold"), "  ", text))
    out.print(Text.assemble(("     message", "bold"), f"  ({_body_label(entry)})"))
    message = "-" if entry.message is None else _printable(entry.message)
    out.print(Text(message), soft_wrap=True)
    if entry.traceback:
        out.print(Text(_printable(entry.traceback)))


@dlq.command("replay")
@click.argument("queue")
@click.argument("message_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter of QUEUE.")
@click.option("--task", help="Only dead letters of this task.")
def dlq_replay(
    queue: str, message_ids: tuple[str, ...], replay_all: bool, task: str | None
) -> None:
    """Put dead letters back in QUEUE with their attempts reset.

    Messages that failed verification or decoding (bad_signature, undecodable, too_large,
    id_mismatch, too_deep, unreadable) are refused: show or purge them instead."""
    if not message_ids and not replay_all and task is None:
        raise click.UsageError("name message ids, or pass --all (optionally with --task NAME)")
    report = _app().dlq(queue).replay(list(message_ids) or None, task=task)
    click.echo(f"replayed {len(report.replayed)} message(s) into {queue}")
    for message_id, why in report.skipped.items():
        click.echo(f"skipped {message_id}: {why}")


@dlq.command("purge")
@click.argument("queue")
@click.argument("message_ids", nargs=-1)
@click.option("--older-than", help="Only entries at least this old (90s, 15m, 3h, 7d).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dlq_purge(queue: str, message_ids: tuple[str, ...], older_than: str | None, yes: bool) -> None:
    """Delete dead letters of QUEUE for good: those named, else all (or --older-than)."""
    age = parse_duration(older_than) if older_than else None
    dead = _app().dlq(queue)
    if message_ids:
        deleted = set(dead.purge_ids(message_ids, age))
        click.echo(f"purged {len(deleted)} dead letter(s) from {queue}")
        missing = [i for i in dict.fromkeys(message_ids) if i not in deleted]
        if missing:
            younger = f" or younger than {older_than}" if age is not None else ""
            click.echo(f"not in the dead-letter queue{younger}: {', '.join(missing)}")
        return
    what = f"dead letters older than {older_than}" if age is not None else "ALL dead letters"
    if not yes:
        click.confirm(f"Delete {what} of {queue}?", abort=True)
    click.echo(f"purged {dead.purge(age)} dead letter(s) from {queue}")


@cli.command()
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Manifests with Queue and Worker resources (repeatable).",
)
@click.option("--redis-url", help="Redis to use (default: SHOAL_REDIS_URL, else start one).")
@click.option("--duration", type=float, help="Stop after this many seconds (for scripts).")
def dev(files: tuple[Path, ...], redis_url: str | None, duration: float | None) -> None:
    """Run Queue and Worker manifests locally: worker processes, autoscaled like in a cluster."""
    from shoal.dev import DevRunner, load_manifests

    manifests = load_manifests(list(files))
    settings = _app().settings
    from_env = settings.redis_url if settings.redis_url_source == "SHOAL_REDIS_URL" else None
    url = redis_url or from_env
    DevRunner(manifests, url, console()).run(duration)


DASHBOARD_HELP = """Serve a web dashboard: queues (with rates over time), workers and what
runs now, dead letters (show, replay, purge), schedules, workflows in flight.

\b
Read-only unless writes are enabled: SHOAL_DASHBOARD_TOKEN set (or
--allow-writes, which then requires it) lets replay and purge run, each
with that token. SHOAL_TRACE_URL_TEMPLATE (e.g.
http://localhost:16686/trace/{trace_id}) links every message with a trace
id to it. JSON under /api/; /healthz for probes. Needs the dashboard extra:
pip install 'shoal[dashboard]'."""


@cli.command(help=DASHBOARD_HELP)
@click.option("--port", type=click.IntRange(1, 65535), default=8787, show_default=True)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on (0.0.0.0 in a container).",
)
@click.option("--redis-url", help="Redis to read (default: SHOAL_REDIS_URL).")
@click.option(
    "--allow-writes",
    is_flag=True,
    help="Enable replay and purge (each needs SHOAL_DASHBOARD_TOKEN, which must be set).",
)
@click.option("--token", envvar="SHOAL_DASHBOARD_TOKEN", hidden=True)
@click.option(
    "--trace-url-template",
    envvar="SHOAL_TRACE_URL_TEMPLATE",
    show_envvar=True,
    help="Where a trace opens, with {trace_id}; no trace links when unset.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.2, max=3600),
    default=5.0,
    show_default=True,
    help="Seconds between the samples the rates and sparklines are drawn from.",
)
@click.option("--log-level", default="INFO", show_default=True)
def dashboard(
    port: int,
    host: str,
    redis_url: str | None,
    allow_writes: bool,
    token: str | None,
    trace_url_template: str | None,
    interval: float,
    log_level: str,
) -> None:
    try:
        import aiohttp  # noqa: F401
        import jinja2  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"shoal dashboard needs its extra ({exc.name} is missing): "
            "pip install 'shoal[dashboard]'"
        ) from None
    from shoal.app import App
    from shoal.dashboard.access import Access
    from shoal.dashboard.links import check_template
    from shoal.dashboard.server import build, serve

    access = Access.of(allow_writes, token)
    template = check_template(trace_url_template)
    logs.setup(logging.getLevelName(log_level.upper()), Settings.from_env().log_format)
    app = App(redis_url) if redis_url else App()
    startup.check_port_free("--port", port)
    mode = "writes enabled (token required)" if access.writes else "read-only"
    click.echo(f"shoal dashboard on http://{host}:{port}/ ({mode}), reading {app!r}", err=True)
    serve(build(app, access, template, interval), host, port)


@cli.command("redis-acl")
@click.option("--user", default="shoal", show_default=True, help="ACL user name.")
@click.option("--prefix", help="Key prefix the user may touch (default: SHOAL_KEY_PREFIX).")
@click.option(
    "--aclfile", is_flag=True, help="Print a line for an aclfile instead of an ACL SETUSER."
)
def redis_acl(user: str, prefix: str | None, aclfile: bool) -> None:
    """Print the least-privilege Redis ACL rule for workers, producers and the operator.

    Only the commands Shoal sends, only keys and channels under the prefix. Replace
    CHANGE-ME with the password (or put it in the aclfile as a SHA-256 with #)."""
    from shoal.protocol.acl import acl_setuser

    line = acl_setuser(user, prefix or Settings.from_env().key_prefix)
    click.echo(
        line.removeprefix("ACL SETUSER ").replace(f"{user} ", f"user {user} ", 1)
        if aclfile
        else line
    )


cli.add_command(cli_control.queue)
cli.add_command(cli_control.task)


@cli.command()
def version() -> None:
    """Print the version."""
    click.echo(f"shoal {__version__}")


def main() -> None:
    """Console-script entry point: errors become one clear line and exit status 2 (after the
    traceback of the user's code, when a task module raised at import)."""
    try:
        cli(standalone_mode=True)
    except ShoalError as exc:
        if isinstance(exc, TaskModuleError):
            click.echo(exc.user_traceback(), err=True, nl=False)
            from shoal.supervisor import import_failure

            exc = ConfigurationError(import_failure(exc))
        click.echo(f"error: {exc}", err=True)  # one line, never wrapped: logs keep it whole
        sys.exit(2)
    except Exception as exc:
        if not startup.is_redis_client_error(exc):
            raise
        url = Settings.from_env().redis_url
        click.echo(f"error: {startup.explain_redis_error(url, exc)}", err=True)
        sys.exit(2)


__all__ = ["Settings", "cli", "main"]
