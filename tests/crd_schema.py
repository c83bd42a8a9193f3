"""Validate objects against our CRDs offline, as the API server would: the runtime's checker
(:mod:`shoal.manifests`, what ``shoal dev`` runs), with the repository's paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shoal import manifests

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT / "crds"


def load_crds() -> dict[str, dict[str, Any]]:
    """Kind → CRD document, from crds/."""
    return manifests.load_crds(CRD_DIR)


def validate(obj: dict[str, Any], crds: dict[str, dict[str, Any]] | None = None) -> list[str]:
    """Every reason the API server would refuse ``obj`` (empty: accepted)."""
    return manifests.check(obj, crds or load_crds())[1]
