"""``shoal queue pause|resume|purge`` and ``shoal task status|cancel``: flow and task control.

Registered on the ``shoal`` group by :mod:`shoal.cli`; each talks to Redis through an App from
the environment, like ``shoal info`` and ``shoal dlq``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from shoal.cli_output import dump, is_terminal, output_option, plain_cell, when

if TYPE_CHECKING:
    from shoal.app import App
    from shoal.task_status import TaskStatus


def _app() -> App:
    from shoal.cli import _app as app_from_env

    return app_from_env()


@click.group()
def queue() -> None:
    """Pause, resume or purge a queue (on every worker)."""


@queue.command("pause")
@click.argument("name")
def queue_pause(name: str) -> None:
    """Stop running QUEUE's messages: workers finish what they run and start nothing new;
    enqueues go on. The autoscaler does not scale it up. Undo with `shoal queue resume`."""
    if _app().pause(name):
        click.echo(f"paused {name}: nothing new starts until `shoal queue resume {name}`")
    else:
        click.echo(f"{name} was paused already")


@queue.command("resume")
@click.argument("name")
def queue_resume(name: str) -> None:
    """Run QUEUE's messages again (idle workers start at once)."""
    if _app().resume(name):
        click.echo(f"resumed {name}")
    else:
        click.echo(f"{name} was not paused")


@queue.command("purge")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def queue_purge(name: str, yes: bool) -> None:
    """Delete every message QUEUE holds waiting or delayed (retries included). Running
    messages finish; dead letters stay (see `shoal dlq purge`). Cannot be undone."""
    app = _app()
    stats = app.measure(name)
    held = stats.waiting + stats.delayed
    if not yes:
        click.confirm(
            f"Delete the {held} waiting or delayed message(s) of {name}? This cannot be undone",
            abort=True,
        )
    click.echo(f"purged {app.purge(name)} message(s) from {name}")


@click.group()
def task() -> None:
    """The status of one message, or cancel it."""


@task.command("status")
@click.argument("queue_name", metavar="QUEUE")
@click.argument("message_id")
@output_option
def task_status(queue_name: str, message_id: str, output: str | None) -> None:
    """Where one message is: waiting, delayed, running (on which worker), retrying, succeeded,
    failed, dead, cancelled, or unknown (finished without a stored result, or never enqueued);
    with its attempt and its last progress report.

    Piped: one `field<TAB>value` row per field."""
    status = _app().producer.status(queue_name, message_id)
    if output in ("json", "yaml"):
        click.echo(dump(status.to_dict(), output))
        return
    rows = _rows(status)
    if not is_terminal():
        for label, value in rows:
            click.echo(f"{label}\t{plain_cell(value)}")
        return
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{click.style(label.rjust(width), bold=True)}  {value}")


def _rows(status: TaskStatus) -> list[tuple[str, str]]:
    rows = [("id", status.id), ("queue", status.queue), ("state", status.state)]
    optional = [
        ("task", status.task),
        ("attempt", None if status.attempt is None else str(status.attempt)),
        ("worker", status.worker),
        ("due at", None if status.due_at is None else when(status.due_at)),
        ("reason", status.reason),
        ("error", status.error),
        ("progress", None if status.progress is None else status.progress.describe()),
        ("cancel", "asked: its worker stops it" if status.cancel_requested else None),
    ]
    rows += [(label, value) for label, value in optional if value is not None]
    if status.state == "unknown":
        rows.append(("meaning", UNKNOWN))
    return rows


UNKNOWN = (
    "not waiting, delayed, running or dead: it finished (its outcome is kept only when the "
    "task stores results: store_result=True), or no such message was enqueued to this queue"
)


@task.command("cancel")
@click.argument("queue_name", metavar="QUEUE")
@click.argument("message_id")
def task_cancel(queue_name: str, message_id: str) -> None:
    """Make sure a message never runs (again). A waiting or delayed one is removed at once; a
    running one is stopped by its worker within a heartbeat (async tasks are cancelled, sync
    ones get the soft-timeout exception). Its outcome is `cancelled`, never retried."""
    was = _app().producer.cancel(queue_name, message_id)
    if was == "gone":
        raise click.ClickException(
            f"nothing to cancel: {message_id} is not waiting, delayed or running on "
            f"{queue_name!r} (see `shoal task status {queue_name} {message_id}`)"
        )
    if was == "running":
        click.echo(f"cancel asked: {message_id} runs now; its worker stops it within a heartbeat")
    else:
        click.echo(f"cancelled {message_id} ({was}): it will not run")
