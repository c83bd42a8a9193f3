"""shoal.errors holds every exception Shoal defines, and the package exports what users meet."""

from __future__ import annotations

import builtins
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import shoal
import shoal.errors
import shoal.execution
import shoal.signing

README = Path(__file__).resolve().parents[2] / "README.md"


def _runtime_modules() -> list[str]:
    """Every module of the runtime, except ``__main__`` (importing it runs the CLI)."""
    found = pkgutil.walk_packages(shoal.__path__, prefix="shoal.")
    return sorted(m.name for m in found if not m.name.endswith("__main__"))


def _public_exceptions() -> dict[str, type[BaseException]]:
    return {
        name: obj
        for name, obj in vars(shoal.errors).items()
        if inspect.isclass(obj) and issubclass(obj, BaseException) and not name.startswith("_")
    }


def test_every_exception_of_the_runtime_is_defined_in_shoal_errors() -> None:
    elsewhere = set()
    for name in _runtime_modules():
        module = importlib.import_module(name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__ == name
                and name != "shoal.errors"
            ):
                elsewhere.add(f"{name}.{obj.__qualname__}")
    assert not elsewhere, f"define these in shoal/errors.py: {sorted(elsewhere)}"


def test_every_exception_in_shoal_errors_is_exported_from_shoal() -> None:
    missing = sorted(set(_public_exceptions()) - set(shoal.__all__))
    assert not missing, f"add to shoal.__all__: {missing}"
    for name, cls in _public_exceptions().items():
        assert getattr(shoal, name) is cls


def test_every_exception_the_readme_names_is_importable_from_shoal() -> None:
    named = set(re.findall(r"`([A-Z][A-Za-z]+)`", README.read_text(encoding="utf-8")))
    exceptions = {
        n
        for n in named
        if re.search(r"(Error|Timeout|Stopped|Failed|Unknown|Full|NotFound|Signature)$", n)
        and not hasattr(builtins, n)
    }
    assert {"TaskTimeout", "HardTimeout", "TaskStopped"} <= exceptions  # the scan finds them
    missing = sorted(n for n in exceptions if n not in shoal.__all__)
    assert not missing, f"the README names {missing}, which `from shoal import …` cannot reach"


def test_the_old_import_paths_still_give_the_same_classes() -> None:
    assert shoal.execution.TaskTimeout is shoal.errors.TaskTimeout
    assert shoal.execution.HardTimeout is shoal.errors.HardTimeout
    assert shoal.execution.TaskStopped is shoal.errors.TaskStopped
    assert shoal.signing.BadSignature is shoal.errors.BadSignature


def test_the_hierarchy_is_kept() -> None:
    errors = shoal.errors
    assert issubclass(errors.TaskTimeout, errors.ShoalError)
    assert issubclass(errors.HardTimeout, errors.TaskTimeout)
    assert issubclass(errors.TaskStopped, errors.ShoalError)
    assert not issubclass(errors.TaskStopped, errors.TaskTimeout)
    assert issubclass(errors.BadSignature, errors.DecodeError)
