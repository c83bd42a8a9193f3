"""Who may change anything: the dashboard is read-only unless writes are enabled, and then
every write (replay, purge) must carry the token.

The token travels in a form field or the ``X-Shoal-Token`` header, never a cookie: a page on
another site can make a browser send cookies, not a value it cannot read (so no CSRF).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from shoal.errors import ConfigurationError

HEADER = "X-Shoal-Token"
FIELD = "token"


@dataclass(frozen=True, slots=True)
class Access:
    """Whether writes are enabled, and the token they need."""

    writes: bool
    token: str | None = None

    @classmethod
    def of(cls, allow_writes: bool, token: str | None) -> Access:
        """``--allow-writes`` or a token enables writes; enabled writes need a token (refused
        at start-up otherwise, so the dashboard never runs open to anyone)."""
        token = token or None
        if allow_writes and token is None:
            raise ConfigurationError(
                "--allow-writes needs a token: set SHOAL_DASHBOARD_TOKEN (or --token) to a long "
                "random secret, e.g. `export SHOAL_DASHBOARD_TOKEN=$(openssl rand -hex 24)`; "
                "or leave out --allow-writes for a read-only dashboard"
            )
        return cls(writes=token is not None, token=token)

    def allows(self, given: str | None) -> bool:
        """Whether a write carrying ``given`` may run (compared in constant time)."""
        if not self.writes or self.token is None or not given:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())
