"""The version is written twice (pyproject.toml and shoal/version.py): they must agree."""

from __future__ import annotations

import importlib.metadata

import shoal


def test_the_package_version_is_the_installed_distributions() -> None:
    assert shoal.__version__ == importlib.metadata.version("shoal")
