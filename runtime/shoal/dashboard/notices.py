"""The one-line notice a page shows after a write ("Replayed 3 messages"), carried in the
redirect's query string with a signature: a link made elsewhere cannot put its own words on
the dashboard (a fake "paste your token at …")."""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from urllib.parse import urlencode

_KEY = os.urandom(32)
"""Per process: a notice is only shown by the dashboard that wrote it."""


def _sign(text: str) -> str:
    return hmac.new(_KEY, text.encode(), hashlib.sha256).hexdigest()[:32]


def query(text: str) -> str:
    """The query string that carries ``text`` to the next page."""
    return urlencode({"notice": text, "sig": _sign(text)})


def verified(params: Mapping[str, str]) -> str | None:
    """The notice of a request's query, when this process signed it; None otherwise."""
    text, sig = params.get("notice"), params.get("sig")
    if not text or not sig or not hmac.compare_digest(sig, _sign(text)):
        return None
    return text
