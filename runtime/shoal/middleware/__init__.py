"""Lifecycle hooks around enqueue and execution, and the list of defaults.

Retries, tracing and metrics are middleware: with a hook not overridden, it costs nothing.
``before_*`` hooks run in order, ``after_*`` hooks in reverse. A hook that raises is logged and
skipped: middleware never kills a worker or loses a message.
"""

from __future__ import annotations

from shoal.middleware.base import Middleware, Outcome
from shoal.middleware.retries import Retries
from shoal.middleware.tracing import Tracing

__all__ = ["Middleware", "Outcome", "Retries", "Tracing", "default_middleware"]


def default_middleware() -> list[Middleware]:
    """The middleware every App gets unless it passes its own list, outermost first."""
    return [Tracing(), Retries()]
