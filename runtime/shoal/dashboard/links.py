"""Links from a message to its trace: ``SHOAL_TRACE_URL_TEMPLATE`` with ``{trace_id}``
(e.g. ``http://localhost:16686/trace/{trace_id}`` for Jaeger). No template, no link."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from shoal.errors import ConfigurationError

PLACEHOLDER = "{trace_id}"


def check_template(template: str | None) -> str | None:
    """The template, or None when unset; a template without ``{trace_id}`` is refused."""
    if not template:
        return None
    if not template.lower().startswith(("http://", "https://")):
        raise ConfigurationError(
            f"SHOAL_TRACE_URL_TEMPLATE {template!r} is not an http(s) URL: write where a trace "
            "opens, e.g. http://localhost:16686/trace/{trace_id} for Jaeger"
        )
    if PLACEHOLDER not in template:
        raise ConfigurationError(
            f"SHOAL_TRACE_URL_TEMPLATE {template!r} has no {PLACEHOLDER}: write where a trace "
            "opens, e.g. http://localhost:16686/trace/{trace_id} for Jaeger"
        )
    return template


def trace_url(template: str | None, trace_id: str | None) -> str | None:
    if not template or not trace_id:
        return None
    return template.replace(PLACEHOLDER, quote(trace_id, safe=""))


def add_trace_urls(data: Any, template: str | None) -> Any:
    """``data`` with a ``trace_url`` beside every ``trace_id`` (in nested dicts and lists)."""
    if isinstance(data, list):
        return [add_trace_urls(x, template) for x in data]
    if isinstance(data, dict):
        out = {k: add_trace_urls(v, template) for k, v in data.items()}
        if "trace_id" in out:
            out["trace_url"] = trace_url(template, out["trace_id"])
        return out
    return data
