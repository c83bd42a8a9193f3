"""The architecture holds: no long import cycles, and every module imports on its own.

The layering itself is an import-linter contract (``pyproject.toml``, run by ``make lint``);
these check what a layers contract cannot: cycles counted with ``TYPE_CHECKING`` imports, and
that no module works only because another was imported first.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grimp
import pytest

PACKAGES = ("shoal", "shoal_operator")
LONGEST_CYCLE = 3
"""A cycle of up to three modules may stay when it is only type annotations (a middleware's
hooks take the Task that calls them); a longer one means a layer reaches back up."""


def _graph() -> dict[str, set[str]]:
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False)
    modules = set(graph.modules)
    return {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}


def _cycles(edges: dict[str, set[str]], longest: int) -> Iterator[list[str]]:
    """Every simple cycle of more than ``longest`` modules, each found once, from its smallest
    module (a bounded depth-first walk: the graph is small)."""
    for start in sorted(edges):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in edges[node]:
                if nxt == start and len(path) > longest:
                    yield path
                elif nxt > start and nxt not in path and len(path) < 12:
                    stack.append((nxt, [*path, nxt]))


def test_no_import_cycle_longer_than_three_modules_even_counting_type_checking() -> None:
    long_cycles = [" -> ".join([*c, c[0]]) for c in _cycles(_graph(), LONGEST_CYCLE)]
    assert long_cycles == [], "\n".join(long_cycles[:10])


def test_the_cycle_finder_sees_a_long_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"a"}, "e": {"a"}}
    assert list(_cycles(edges, LONGEST_CYCLE)) == [["a", "b", "c", "d"]]
    assert list(_cycles(edges, 4)) == []


def _import_alone(module: str) -> str | None:
    command = [sys.executable, "-c", f"import {module}"]
    run = subprocess.run(command, check=False, capture_output=True, text=True)
    return None if run.returncode == 0 else f"{module}: {run.stderr.strip().splitlines()[-1]}"


@pytest.mark.timeout(300)  # one interpreter per module (70 of them): slow on a loaded machine
def test_every_module_imports_first_in_a_fresh_interpreter() -> None:
    """An import-time cycle works only in one import order; importing each module first, on
    its own, finds it."""
    modules = sorted(m for m in _graph() if m != "shoal.__main__")
    with ThreadPoolExecutor(4) as pool:
        failures = [f for f in pool.map(_import_alone, modules) if f is not None]
    assert failures == []
