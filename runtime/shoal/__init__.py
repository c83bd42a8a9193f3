"""Shoal: a Kubernetes-native task queue for Python.

The runtime: define tasks on an :class:`App`, enqueue them, run workers. Redis is the broker;
delivery is at-least-once. See DESIGN.md for the promises and ``shoal.protocol`` for the protocol.
"""

# Application
from shoal.app import App, load_app

# Workflows
from shoal.canvas import Signature, chain, chord, group

# Errors and signals
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
from shoal.message import Message

# Middleware
from shoal.middleware import Middleware, Outcome, Retries, default_middleware

# Messages and the broker
from shoal.protocol import Broker, QueueStats

# Schedules
from shoal.schedules import Schedule

# Settings
from shoal.settings import Settings

# Tasks and handles
from shoal.task import Handle, Sender, Task

# Version
from shoal.version import __version__

__all__ = [
    # Application
    "App",
    "load_app",
    # Tasks and handles
    "Handle",
    "Sender",
    "Task",
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
