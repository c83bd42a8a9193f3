"""Dispatching hooks to the middleware that override them.

Each hook keeps the list of middleware that override it, so a hook nobody uses costs a loop
over an empty list, and the producer skips its hooks (and the Message objects they are given)
entirely when no middleware that uses them is active (:meth:`Hooks.sending`). A hook that
raises is logged and skipped: middleware never kills a worker.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from shoal.middleware.base import FAILURES_ONLY, Middleware

if TYPE_CHECKING:
    from shoal.message import Message
    from shoal.task import Task

log = logging.getLogger("shoal.middleware")

AFTER_HOOKS = frozenset(
    {"after_enqueue", "after_process", "after_retry", "after_dead_letter", "after_worker_shutdown"}
)
"""Hooks that run in reverse middleware order, so the first middleware wraps the others."""

NOT_HOOKS = frozenset({"validate_options", "active_in_worker", "active_for_sending"})

ENQUEUE_HOOKS = ("enqueue_context", "after_enqueue")
"""The hooks a producer runs around each send."""


class Hooks:
    """The middleware of one App, indexed by the hooks they override."""

    def __init__(self, middleware: Sequence[Middleware]) -> None:
        self.middleware = list(middleware)
        self._by_hook: dict[str, list[Middleware]] = {}
        for name in dir(Middleware):
            base = getattr(Middleware, name)
            if name.startswith("_") or not callable(base) or name in NOT_HOOKS:
                continue
            users = [m for m in self.middleware if getattr(type(m), name) is not base]
            self._by_hook[name] = users[::-1] if name in AFTER_HOOKS else users
        self._after_success = [
            m
            for m in self._by_hook["after_process"]
            if not getattr(type(m).after_process, FAILURES_ONLY, False)
        ]
        senders = {id(m): m for name in ENQUEUE_HOOKS for m in self._by_hook[name]}
        self._senders = list(senders.values())
        self.on_enqueue = bool(self._senders)
        """Whether any middleware hooks sending (else a producer may skip the hooks entirely)."""

    def sending(self) -> bool:
        """Whether this send must run the enqueue hooks: some middleware hooking sending is
        active now (asked per send: tracing turns on whenever a tracer provider is set)."""
        return any(mw.active_for_sending() for mw in self._senders)

    def has(self, hook: str) -> bool:
        """Whether any middleware overrides ``hook``."""
        return bool(self._by_hook[hook])

    def emit(self, hook: str, *args: Any, **kwargs: Any) -> None:
        """Call ``hook`` on every middleware overriding it; failures are logged."""
        for mw in self._by_hook[hook]:
            try:
                getattr(mw, hook)(*args, **kwargs)
            except Exception:
                log.exception("middleware %s.%s failed; continuing", type(mw).__name__, hook)

    def after_success(self, task: Task[Any, Any], message: Message, result: Any) -> None:
        """``after_process`` for a task that returned, to the middleware that want successes
        (not those whose hook is marked :func:`~shoal.middleware.base.failures_only`)."""
        for mw in self._after_success:
            try:
                mw.after_process(task, message, result=result, exception=None)
            except Exception:
                log.exception("middleware %s.after_process failed; continuing", type(mw).__name__)

    def context(self, hook: str, *args: Any) -> contextlib.AbstractContextManager[Any]:
        """Enter every ``*_context`` hook, outermost first (a nullcontext when none)."""
        users = self._by_hook[hook]
        if not users:
            return contextlib.nullcontext()
        if len(users) == 1:  # the common case (tracing): no ExitStack on the per-message path
            try:
                return getattr(users[0], hook)(*args)  # type: ignore[no-any-return]
            except Exception:
                log.exception("middleware %s.%s failed; continuing", type(users[0]).__name__, hook)
                return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        for mw in users:
            try:
                stack.enter_context(getattr(mw, hook)(*args))
            except Exception:
                log.exception("middleware %s.%s failed; continuing", type(mw).__name__, hook)
        return stack
