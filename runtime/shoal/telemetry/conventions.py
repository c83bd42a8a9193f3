"""The messaging semantic conventions as Shoal fills them in: one place for every span path."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

V = TypeVar("V")

KEPT = 1024
"""Entries a per-(queue, task) cache holds; a flood of unknown task names cannot grow it."""

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


def kept(
    cache: dict[tuple[str, str], V], key: tuple[str, str], build: Callable[[str, str], V]
) -> V:
    """What every span of (queue, task) shares (attributes, an encoded shape), built once and
    kept in ``cache``, which is emptied when full."""
    value = cache.get(key)
    if value is None:
        if len(cache) >= KEPT:
            cache.clear()
        value = cache[key] = build(*key)
    return value
