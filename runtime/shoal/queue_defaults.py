"""Per-queue defaults stored in Redis: written by ``app.configure_queue`` or the operator (from a
``Queue`` resource), read by every worker consuming the queue.

Precedence, most specific first: per-message options, ``@app.task(...)`` options, these queue
defaults, then :class:`~shoal.settings.Settings`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from shoal.errors import ConfigurationError
from shoal.rate_limit import parse_rate

log = logging.getLogger("shoal.queue_defaults")

FIELDS: dict[str, type] = {
    "max_retries": int,
    "min_backoff": float,
    "max_backoff": float,
    "timeout": float,
    "dlq_max_entries": int,
    "dlq_max_age": float,
    "rate_limit": str,
}
"""Every default a queue may carry, with its type. Durations are seconds. ``rate_limit``
(``"20/s"``) limits the starts of the whole queue; ``fetch.lua`` reads it (see
:mod:`shoal.rate_limit`)."""


TOP_LEVEL = {"rateLimit": "rate_limit"}
"""``Queue.spec`` fields outside a section → the runtime's default names."""

SPEC_NAMES = {
    ("defaults", "maxRetries"): "max_retries",
    ("defaults", "minBackoffSeconds"): "min_backoff",
    ("defaults", "maxBackoffSeconds"): "max_backoff",
    ("defaults", "timeoutSeconds"): "timeout",
    ("deadLetter", "maxEntries"): "dlq_max_entries",
    ("deadLetter", "maxAgeSeconds"): "dlq_max_age",
}
"""``Queue.spec`` fields (section, camelCase name) → the runtime's default names."""


def from_queue_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults a ``Queue`` resource's spec sets, in the runtime's names."""
    found = {
        name: (spec.get(section) or {})[field]
        for (section, field), name in SPEC_NAMES.items()
        if field in (spec.get(section) or {})
    }
    found.update({name: spec[field] for field, name in TOP_LEVEL.items() if spec.get(field)})
    return found


def validate(queue: str, values: Mapping[str, Any]) -> dict[str, str]:
    """Check defaults before they are written; return them as Redis hash fields."""
    out: dict[str, str] = {}
    for name, value in values.items():
        kind = FIELDS.get(name)
        if kind is None:
            raise ConfigurationError(
                f"queue {queue!r}: unknown default {name!r}; accepted: {', '.join(FIELDS)}"
            )
        if name == "rate_limit":
            out[name] = str(parse_rate(value, f"queue {queue!r}"))
            continue
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigurationError(
                f"queue {queue!r}: default {name}={value!r} is not a {kind.__name__}"
            ) from None
        if number < 0 or (name in {"timeout", "dlq_max_entries", "dlq_max_age"} and number == 0):
            raise ConfigurationError(f"queue {queue!r}: default {name}={value!r} is out of range")
        out[name] = str(number)
    return out


def parse(queue: str, raw: Mapping[Any, Any]) -> dict[str, Any]:
    """Defaults read from Redis; a field that does not parse is logged and ignored, never fatal."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        kind = FIELDS.get(name)
        try:
            if kind is None:
                raise ValueError("unknown field")
            out[name] = kind(value.decode() if isinstance(value, bytes) else value)
        except ValueError as exc:
            log.warning("queue %s: ignoring default %s=%r (%s)", queue, name, value, exc)
    return out
