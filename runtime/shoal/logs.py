"""Logging for workers: every line logged while a task runs says which task run it belongs to.

The worker sets :data:`current_task` for each message (an asyncio task's own context, copied
into the thread of a sync task), so the user's own ``logging`` calls inside a task get the
fields too. ``--log-format json`` (``SHOAL_LOG_FORMAT=json``) prints one JSON object a line.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, NamedTuple


class TaskLogContext(NamedTuple):
    """The fields added to log records while a message is handled."""

    task_id: str
    task_name: str
    queue: str
    attempt: int
    trace_id: str | None


current_task: ContextVar[TaskLogContext | None] = ContextVar("shoal_task", default=None)

_FIELDS = TaskLogContext._fields


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace id inside a W3C ``traceparent`` header (``00-<trace>-<span>-<flags>``)."""
    if isinstance(traceparent, str) and len(traceparent) >= 55:
        return traceparent[3:35]
    return None


class TaskContextFilter(logging.Filter):
    """Copies :data:`current_task` onto each record (as ``record.task_id`` and so on)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = current_task.get()
        for name in _FIELDS:
            setattr(record, name, getattr(ctx, name) if ctx else None)
        return True


class TextFormatter(logging.Formatter):
    """Plain lines, with ``[task name id attempt]`` while a task runs."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = {name: getattr(record, name, None) for name in _FIELDS}
        if fields["task_id"]:
            trace = f" trace={fields['trace_id']}" if fields["trace_id"] else ""
            line += (
                f" [task={fields['task_name']} id={fields['task_id']} queue={fields['queue']} "
                f"attempt={fields['attempt']}{trace}]"
            )
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log pipelines."""

    def __init__(self) -> None:
        super().__init__()
        import orjson  # here: a supervisor logging text never loads it

        self._dumps: Callable[[Any], bytes] = orjson.dumps

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return self._dumps(data).decode()


def setup(level: int | str, fmt: str) -> None:
    """Configure the root logger of a worker process (``fmt``: ``text`` or ``json``)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(TaskContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
