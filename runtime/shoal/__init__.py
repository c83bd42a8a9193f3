"""Shoal: a Kubernetes-native task queue for Python.

The runtime: define tasks on an :class:`App`, enqueue them, run workers. Redis is the broker;
delivery is at-least-once. See DESIGN.md for the promises and ``shoal.protocol`` for the protocol.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Errors and signals (light: always imported)
from shoal.errors import (
    BadSignature,
    BrokerError,
    ConfigurationError,
    DecodeError,
    EnqueueError,
    EnqueueOutcomeUnknown,
    HardTimeout,
    RedisFull,
    ReplicationUnconfirmed,
    ResultTimeout,
    Retry,
    ShoalError,
    TaskFailed,
    TaskModuleError,
    TaskNotFound,
    TaskStopped,
    TaskTimeout,
    WorkflowError,
)

# Version
from shoal.version import __version__

if TYPE_CHECKING:
    from shoal.app import App, load_app
    from shoal.canvas import Signature, chain, chord, group
    from shoal.message import Message
    from shoal.middleware import Middleware, Outcome, Retries, default_middleware
    from shoal.protocol import Broker, QueueStats
    from shoal.schedules import Schedule
    from shoal.settings import Settings
    from shoal.task import Handle, Sender, Task
    from shoal.task_progress import Progress, progress
    from shoal.task_status import TaskStatus

_LAZY = {
    # Application
    "App": "shoal.app",
    "load_app": "shoal.app",
    # Workflows
    "Signature": "shoal.canvas",
    "chain": "shoal.canvas",
    "chord": "shoal.canvas",
    "group": "shoal.canvas",
    # Messages and the broker
    "Message": "shoal.message",
    "Broker": "shoal.protocol",
    "QueueStats": "shoal.protocol",
    # Middleware
    "Middleware": "shoal.middleware",
    "Outcome": "shoal.middleware",
    "Retries": "shoal.middleware",
    "default_middleware": "shoal.middleware",
    # Schedules
    "Schedule": "shoal.schedules",
    # Settings
    "Settings": "shoal.settings",
    # Tasks and handles
    "Handle": "shoal.task",
    "Sender": "shoal.task",
    "Task": "shoal.task",
    # Task control
    "progress": "shoal.task_progress",
    "Progress": "shoal.task_progress",
    "TaskStatus": "shoal.task_status",
}
"""Exported names imported on first use: ``import shoal`` (and so every ``shoal.*`` import, the
supervisor's too) stays free of Redis, asyncio and the rest until something asks for them."""


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # found once: later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    # Application
    "App",
    "load_app",
    # Tasks and handles
    "Handle",
    "Sender",
    "Task",
    # Task control
    "Progress",
    "TaskStatus",
    "progress",
    # Workflows
    "Signature",
    "chain",
    "chord",
    "group",
    # Messages and the broker
    "Broker",
    "Message",
    "QueueStats",
    # Middleware
    "Middleware",
    "Outcome",
    "Retries",
    "default_middleware",
    # Schedules
    "Schedule",
    # Settings
    "Settings",
    # Errors and signals
    "BadSignature",
    "BrokerError",
    "ConfigurationError",
    "DecodeError",
    "EnqueueError",
    "EnqueueOutcomeUnknown",
    "ReplicationUnconfirmed",
    "HardTimeout",
    "RedisFull",
    "ResultTimeout",
    "Retry",
    "ShoalError",
    "TaskFailed",
    "TaskModuleError",
    "TaskNotFound",
    "TaskStopped",
    "TaskTimeout",
    "WorkflowError",
    "__version__",
]
