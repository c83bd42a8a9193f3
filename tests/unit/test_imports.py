"""The runtime never imports Kubernetes machinery (the import-linter contract, checked live)."""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys
import shoal, shoal.worker, shoal.supervisor, shoal.cli
bad = sorted(m for m in sys.modules if m.split('.')[0] in {'kopf', 'kubernetes', 'shoal_operator'})
print(','.join(bad))
"""


@pytest.mark.parametrize("module", ["shoal"])
def test_importing_the_runtime_imports_no_kubernetes_modules(module: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"{module} imported: {done.stdout.strip()}"
