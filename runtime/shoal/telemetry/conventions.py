"""The messaging semantic conventions as Shoal fills them in: one place for every span path."""

from __future__ import annotations

from typing import Any

SYSTEM = "shoal"
"""``messaging.system``."""


def process_attributes(queue: str, task: str) -> dict[str, Any]:
    """The attributes a ``process <queue>`` span shares with every span of its (queue, task);
    each span adds ``messaging.message.id`` and ``shoal.attempt``."""
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "shoal.task.name": task,
    }


def send_attributes(queue: str, task: str) -> dict[str, Any]:
    """The attributes of a ``send <queue>`` span, before the message id or batch count."""
    return {
        "messaging.system": SYSTEM,
        "messaging.destination.name": queue,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "shoal.task.name": task,
    }
