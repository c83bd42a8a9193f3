"""Loaded by every Python process ``run.py`` starts (it is put first on ``PYTHONPATH``): on
SIGUSR2 the process writes its ``sys.modules`` to ``$SHOAL_MEM_DUMP/<pid>.modules``. Inherited
across ``fork``; re-run by ``exec``, so the re-executed supervisor and spawned children have it
too. Only ``os``, ``signal`` and ``sys`` are imported, which every process here loads anyway."""

import os
import signal
import sys

_DIR = os.environ.get("SHOAL_MEM_DUMP")


def _dump(*_: object) -> None:
    with open(os.path.join(_DIR or ".", f"{os.getpid()}.modules"), "w") as out:
        out.write("\n".join(sorted(sys.modules)))


if _DIR:
    signal.signal(signal.SIGUSR2, _dump)
