"""Why a message is in the dead-letter queue: the one vocabulary of DLQ reasons.

The worker, the middleware (``Outcome.reason``) and workflows give a :data:`Reason`; mypy
refuses a string outside it. The DLQ entry stores it, the CLI explains it from
:data:`REASONS`, and a replay refuses the :data:`UNREPLAYABLE` ones. Entries read back from
Redis keep their reason as text (a newer Shoal may know more): :func:`is_reason` tells.
"""

from __future__ import annotations

from typing import Literal, TypeGuard, get_args

Reason = Literal[
    "retries_exhausted",
    "not_retryable",
    "failed",
    "bad_arguments",
    "too_deep",
    "undecodable",
    "unknown_task",
    "bad_signature",
    "too_large",
    "id_mismatch",
    "worker_lost",
    "workflow_error",
    "internal_error",
    "unreadable",
    "expired",
]
"""Every machine-readable DLQ reason."""

REASONS: dict[Reason, str] = {
    "retries_exhausted": "the task kept failing and ran out of retries",
    "not_retryable": "the task raised an exception its retry_on / no_retry_on rules exclude",
    "failed": "the task raised and no middleware retried it or named the failure "
    "(the Retries middleware is not installed)",
    "bad_arguments": "its arguments do not fit the task's signature (not retried: they never "
    "will; replay after deploying a task that accepts them)",
    "too_deep": "its arguments are nested deeper than the JSON encoder allows",
    "undecodable": "the stored bytes are not a Shoal envelope",
    "unknown_task": "no task of that name is defined by the worker's app",
    "bad_signature": "signing keys are set and the message is unsigned or wrongly signed",
    "too_large": "the stored message is larger than SHOAL_MAX_MESSAGE_BYTES",
    "id_mismatch": "the envelope's id differs from the key it was stored under (spoofed or "
    "corrupted)",
    "worker_lost": "workers running it vanished too often (it may be what kills them)",
    "workflow_error": "its result could not be carried on to the next workflow step",
    "internal_error": "its handling failed outside the task (a malformed option, a middleware bug)",
    "unreadable": "its DLQ entry was not written by Shoal (edited or corrupted in Redis)",
    "expired": "it was not started before its expiry (with_options(expires=...)); replaying it "
    "runs it now",
}
"""Every DLQ reason, with what it means."""

UNREPLAYABLE: frozenset[Reason] = frozenset(
    {"bad_signature", "undecodable", "too_large", "id_mismatch", "too_deep", "unreadable"}
)
"""Reasons whose entries may be shown and purged but never replayed; every other reason may be.

These messages failed verification or decoding (``too_deep``: a replay would fail the same
way). A replay signs what it puts back, so replaying them would turn a forgery into a signed,
runnable message."""

_KNOWN: frozenset[str] = frozenset(get_args(Reason))


def is_reason(text: str) -> TypeGuard[Reason]:
    """Whether ``text`` (say, read from an entry) is a reason this Shoal knows."""
    return text in _KNOWN


def meaning(text: str, unknown: str = "-") -> str:
    """What a reason read back from Redis means; ``unknown`` for one this Shoal does not know."""
    return REASONS[text] if is_reason(text) else unknown
