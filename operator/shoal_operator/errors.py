"""Why a resource cannot be reconciled: each carries the condition reason shown to the user."""

from __future__ import annotations


class ReconcileError(Exception):
    """Base: ``reason`` is a CamelCase condition reason, the message says what to do."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class SpecError(ReconcileError):
    """Raised when the spec itself is wrong: only an edit of the resource can fix it."""


class MissingReference(ReconcileError):
    """Raised when a referenced object (Queue, Secret) is absent: retried, it may appear."""


class InvalidReference(MissingReference):
    """Raised when a referenced object exists but holds what cannot be used (a Secret's URL
    without TLS while the Queue asks for it): retried, as the fix is an edit of that object,
    which no handler of this resource sees."""


class RedisUnreachable(ReconcileError):
    """Raised when a Queue's Redis does not answer: retried, replicas are held meanwhile."""
