"""Optional HMAC-SHA256 signing of stored messages: the defence when producers are untrusted.

A signed message is stored as ``b"s1:" + urlsafe_b64(hmac) + b":" + envelope``. JSON never
starts with ``s``, so signed and unsigned messages are told apart without guessing. Several keys
verify (rotation: prepend the new key, drop the old one once the queue has drained); the first
signs. Comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from shoal.errors import BadSignature

# BadSignature lives in shoal.errors; re-exported so ``from shoal.signing import …`` still works.
__all__ = ["PREFIX", "BadSignature", "Signer", "unsealed"]

PREFIX = b"s1:"
_SIG_LEN = 43  # urlsafe base64 of 32 bytes, without padding


class Signer:
    """Seals envelopes with the first key and opens them with any key."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = [k.encode() for k in keys]
        self._keyed: dict[bytes, hmac.HMAC] = {}
        """Per key, an HMAC holding just the key: copying it skips OpenSSL's per-call setup,
        which costs more than hashing a small message."""

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def _mac(self, key: bytes, body: bytes) -> bytes:
        keyed = self._keyed.get(key)
        if keyed is None:
            keyed = self._keyed[key] = hmac.new(key, digestmod=hashlib.sha256)
        mac = keyed.copy()
        mac.update(body)
        return base64.urlsafe_b64encode(mac.digest()).rstrip(b"=")

    def seal(self, body: bytes) -> bytes:
        """The stored form of ``body``: signed when keys are configured, else unchanged."""
        if not self.keys:
            return body
        return PREFIX + self._mac(self.keys[0], body) + b":" + body

    def open(self, data: bytes) -> bytes:
        """The envelope inside ``data``; raise BadSignature when verification fails."""
        if not data.startswith(PREFIX):
            if self.keys:
                raise BadSignature(
                    data,
                    "message is not signed, and this worker requires "
                    "signatures (SHOAL_SIGNING_KEYS is set)",
                )
            return data
        sig, body = data[len(PREFIX) : len(PREFIX) + _SIG_LEN], data[len(PREFIX) + _SIG_LEN + 1 :]
        if not self.keys:
            return body  # signed by a producer with keys; this reader verifies nothing
        if any(hmac.compare_digest(sig, self._mac(key, body)) for key in self.keys):
            return body
        raise BadSignature(
            data,
            "message signature matches none of the worker's "
            "SHOAL_SIGNING_KEYS (forged, or signed with a retired key)",
        )


def unsealed(data: bytes) -> bytes:
    """The envelope inside ``data``, verifying nothing: for showing a stored message, never for
    acting on it."""
    if data.startswith(PREFIX):
        return data[len(PREFIX) + _SIG_LEN + 1 :]
    return data
