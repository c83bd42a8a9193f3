"""TLS material from Secrets as files, for the operator's own Redis connections: redis-py (and
``ssl``) load certificates and keys from paths only.

The files live in one temporary directory of the operator process (mode 0700, each file 0600),
named by a hash of their content: the path stays the same while the Secret does, so the
Connection built from it (and the Shoal App kept for it) stays the same too, and a rotated
Secret gets a new path, hence a new connection."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import threading
from pathlib import Path


class TLSFiles:
    """Content-addressed private files; :meth:`close` removes them all."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self._lock = threading.Lock()

    def path(self, content: bytes, name: str) -> str:
        """A file holding ``content`` (``name``, e.g. ``ca.crt``, ends its file name)."""
        digest = hashlib.sha256(content).hexdigest()[:32]
        with self._lock:
            if self._dir is None:
                self._dir = Path(tempfile.mkdtemp(prefix="shoal-operator-tls-"))  # 0700
            path = self._dir / f"{digest}-{name}"
            if not path.exists():  # written once per content; again if something removed it
                partial = path.with_name(path.name + ".partial")
                fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(content)
                os.replace(partial, path)
            return str(path)

    @property
    def directory(self) -> Path | None:
        return self._dir

    def close(self) -> None:
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
