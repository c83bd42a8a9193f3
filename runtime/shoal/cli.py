"""The ``shoal`` command: worker, enqueue, info, schedules, dlq, demo, dev, version.

Each command imports what it uses when it runs: ``rich`` only to print tables, the App and the
Redis client only to talk to Redis, so ``shoal worker`` hands a lean process to its supervisor.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shoal import logs
from shoal.errors import ShoalError, TaskModuleError
from shoal.settings import Settings
from shoal.version import __version__

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

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
    """:func:`load_app`, looking in the current directory first (as ``python -m`` does):
    ``shoal worker tasks`` imports ./tasks.py. Worker processes inherit this ``sys.path``."""
    from shoal.app import load_app

    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return load_app(spec)


def _queues(value: str | None) -> list[str]:
    return [q.strip() for q in (value or "").split(",") if q.strip()]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Shoal: a Kubernetes-native task queue. Redis URL from SHOAL_REDIS_URL."""


@cli.command()
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
@click.option("--health-port", type=int, help="Serve /livez and /readyz on this port.")
@click.option("--metrics-port", type=int, help="Serve Prometheus /metrics on this port.")
@click.option("--log-level", default="INFO", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    help="Log lines as text or JSON (default: SHOAL_LOG_FORMAT, else text).",
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
) -> None:
    """Run workers for the tasks of MODULE[:APP]."""
    from shoal.supervisor import Supervisor, WorkerSpec, handover

    level = logging.getLevelName(log_level.upper())
    app = _load_app(app_spec)  # fails fast, here, on a bad module; and the app has the settings
    fmt = log_format or app.settings.log_format
    logs.setup(level, fmt)
    spec = WorkerSpec(app_spec, _queues(queues), concurrency, burst, metrics_port is not None, fmt)
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


@cli.command()
@click.argument("task_name")
@click.option("--args", "args_json", default="[]", help="Positional arguments as a JSON list.")
@click.option("--kwargs", "kwargs_json", default="{}", help="Keyword arguments as a JSON object.")
@click.option("--queue", "-q", help="Queue (default: the task's, with --app; else default).")
@click.option("--app", "app_spec", help="MODULE[:APP] that defines the task, to check its name.")
@click.option("--delay", type=float, default=0.0, help="Seconds before the task may run.")
def enqueue(
    task_name: str,
    args_json: str,
    kwargs_json: str,
    queue: str | None,
    app_spec: str | None,
    delay: float,
) -> None:
    """Enqueue TASK_NAME with JSON arguments; prints the message id."""
    import orjson

    try:
        args, kwargs = orjson.loads(args_json), orjson.loads(kwargs_json)
    except orjson.JSONDecodeError as exc:
        raise click.BadParameter(f"--args/--kwargs must be JSON: {exc}") from None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise click.BadParameter("--args takes a JSON list and --kwargs a JSON object")
    app = _load_app(app_spec) if app_spec else _app()
    if app_spec and task_name not in app.tasks:
        raise click.BadParameter(
            f"{app_spec} defines no task {task_name!r}; it has: "
            f"{', '.join(sorted(app.tasks)) or 'none'}"
        )
    task = app.remote(task_name, queue=queue)
    handle = task.with_options(delay=delay).enqueue(*args, **kwargs)
    click.echo(handle.id)


def _age(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def queue_table(before: list[QueueStats], after: list[QueueStats]) -> Table:
    """Per-queue figures; rates from two measurements."""
    from rich.table import Table

    table = Table(title="Queues")
    for col in (
        "queue",
        "waiting",
        "in flight",
        "delayed",
        "dead",
        "oldest",
        "done/s",
        "enqueued/s",
        "completed",
    ):
        table.add_column(col, justify="left" if col == "queue" else "right")
    for a, b in zip(before, after, strict=True):
        span = max(0.001, (b.measured_at_ms - a.measured_at_ms) / 1000)
        table.add_row(
            b.queue,
            str(b.waiting),
            str(b.in_flight),
            str(b.delayed),
            str(b.dead),
            _age(b.oldest_age_s) if b.waiting else "-",
            f"{(b.completed - a.completed) / span:.1f}",
            f"{(b.enqueued - a.enqueued) / span:.1f}",
            str(b.completed),
        )
    return table


def workers_table(app: App) -> Table:
    """Live worker registrations."""
    from rich.table import Table

    table = Table(title="Workers")
    columns = ("id", "host", "queues", "in flight", "concurrency", "processed", "leases lost")
    for col in (*columns, "up", "version"):
        table.add_column(col)
    for w in app.broker.workers():
        table.add_row(
            w.id,
            w.host,
            ",".join(w.queues),
            str(w.in_flight),
            str(w.concurrency),
            str(w.processed),
            str(w.leases_lost),
            _age(time.time() - w.started_at),
            w.version,
        )
    return table


@cli.command()
@click.option("--queue", "-q", "queue_names", multiple=True, help="Only these queues.")
@click.option("--workers", "show_workers", is_flag=True, help="Also list live workers.")
@click.option(
    "--interval",
    default=1.0,
    show_default=True,
    help="Seconds between the two measurements rates are computed from.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def info(queue_names: tuple[str, ...], show_workers: bool, interval: float, as_json: bool) -> None:
    """Per-queue depth, in flight, delayed, dead, oldest age and rates."""
    app = _app()
    names = list(queue_names) or app.broker.queues()
    if not names:
        console().print(f"No queues yet on {app!r}.")
        if show_workers:
            console().print(workers_table(app))
        return
    before = app.broker.measure_many(names)
    time.sleep(interval)
    after = app.broker.measure_many(names)
    if as_json:
        import dataclasses

        import orjson

        click.echo(orjson.dumps([dataclasses.asdict(s) for s in after]))
        return
    console().print(queue_table(before, after))
    if show_workers:
        console().print(workers_table(app))


@cli.command()
@click.option("--queue", "-q", "queue_names", multiple=True, help="Only these queues.")
@click.option(
    "--prune",
    is_flag=True,
    help="First delete code schedules no worker has declared for 10 minutes (removed from code).",
)
def schedules(queue_names: tuple[str, ...], prune: bool) -> None:
    """Periodic schedules (code and Queue resources): next run, last run and its outcome."""
    from rich.table import Table

    from shoal.scheduler import prune_stale, stored
    from shoal.schedules import describe_time

    app = _app()
    queues = list(queue_names) or app.broker.queues()
    if prune:
        for q in queues:
            for name in prune_stale(app.broker, q):
                console().print(f"removed stale schedule {name!r} of queue {q!r}")
    table = Table(title="Schedules")
    for col in ("queue", "name", "cron", "task", "source", "suspended", "next run", "last run"):
        table.add_column(col, overflow="fold")
    table.add_column("outcome")
    rows = [row for q in queues for row in stored(app.broker, q)]
    for row in rows:
        s = row.schedule
        last = describe_time(row.last.tick_ms if row.last else None, s.zone if s else None)
        if s is None:
            table.add_row(
                row.queue, row.name, "-", "-", "-", "-", "-", last, f"invalid: {row.error}"
            )
            continue
        source = f"{s.source} (stale: no worker declares it; --prune)" if row.stale else s.source
        table.add_row(
            row.queue,
            row.name,
            f"{s.cron} ({s.timezone})",
            s.task,
            source,
            "yes" if s.suspend else "no",
            describe_time(row.next_ms, s.zone),
            last,
            row.outcome,
        )
    if not rows:
        console().print(f"No schedules on {app!r}.")
        return
    console().print(table)


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


def _when(epoch: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


@cli.group()
def dlq() -> None:
    """Inspect, replay and purge a queue's dead letters."""


@dlq.command("list")
@click.argument("queue")
@click.option("--limit", default=50, show_default=True)
def dlq_list(queue: str, limit: int) -> None:
    """The newest dead letters of QUEUE."""
    from rich.table import Table

    dead = _app().dlq(queue)
    table = Table(title=f"Dead letters of {queue} ({len(dead)} in all)")
    for col in ("id", "task", "reason", "attempts", "failed at", "error"):
        table.add_column(col, overflow="fold")
    for e in dead.entries(limit):  # summaries only: listing never reads the bodies
        table.add_row(
            _printable(e.id),
            _printable(e.task or "-"),
            e.reason,
            str(e.attempts),
            _when(e.failed_at),
            _printable(e.error[:80]),
        )
    console().print(table)


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
def dlq_show(queue: str, message_id: str) -> None:
    """Everything about one dead letter: reason, error, traceback, trace id, message (or, when
    it was not a verified envelope, an excerpt with its real size)."""
    from shoal.reasons import meaning

    entry = _app().dlq(queue).get(message_id)
    if entry is None:
        raise click.ClickException(
            f"no dead letter {message_id} in queue {queue!r}; see `shoal dlq list {queue}`"
        )
    for label, value in (
        ("id", entry.id),
        ("task", entry.task),
        ("reason", entry.reason),
        ("meaning", meaning(entry.reason)),
        (
            "replay",
            f"not replayable: {entry.refusal}; delete it with `shoal dlq purge {queue} {entry.id}`"
            if entry.refusal
            else "replayable",
        ),
        ("error", _printable(entry.error)),
        ("attempts", entry.attempts),
        ("enqueued at", _when(entry.enqueued_at)),
        ("failed at", _when(entry.failed_at)),
        ("trace id", entry.trace_id),
        (
            "workflow",
            f"{entry.workflow['kind']} {entry.workflow['id']}" if entry.workflow else None,
        ),
    ):
        text = str(value) if value is not None else "-"
        console().print(f"[bold]{label:>12}[/bold]  ", end="")
        console().print(text, markup=False, highlight=False)
    message = "-" if entry.message is None else _printable(entry.message)
    console().print(f"[bold]     message[/bold]  ({_body_label(entry)})")
    console().print(message, markup=False, highlight=False, soft_wrap=True)
    if entry.traceback:
        console().print(_printable(entry.traceback), markup=False, highlight=False)


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
        click.echo(f"error: {exc}", err=True)  # one line, never wrapped: logs keep it whole
        sys.exit(2)


__all__ = ["Settings", "cli", "main"]
