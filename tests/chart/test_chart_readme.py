"""charts/shoal/README.md is what tools/chart_readme.py writes from values.yaml, and the
generator documents every value (it refuses one without a ``# --`` comment)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from tools import chart_readme
from tools.chart_readme import CHART, COMMAND, README, UndocumentedValue, documented_values


def test_chart_readme_is_generated_from_values_yaml() -> None:
    assert README.read_text() == chart_readme.render(), (
        f"charts/shoal/README.md is out of date with values.yaml or Chart.yaml: run `{COMMAND}` "
        "and commit the result"
    )


def leaves(node: Any, prefix: str = "") -> set[str]:
    """Dotted paths of every value in a values tree (an empty map or list is a value)."""
    if isinstance(node, dict) and node:
        return set().union(*(leaves(v, f"{prefix}{k}.") for k, v in node.items()))
    return {prefix.rstrip(".")}


def test_every_value_is_in_the_readme_once() -> None:
    """Each value of values.yaml is a row, or inside the default of exactly one row."""
    rows = [v.key for v in documented_values((CHART / "values.yaml").read_text())]
    assert len(rows) == len(set(rows))
    for leaf in leaves(yaml.safe_load((CHART / "values.yaml").read_text())):
        covering = [r for r in rows if leaf == r or leaf.startswith(f"{r}.")]
        assert len(covering) == 1, f"{leaf} is documented by {covering}"
    assert "grafana.dashboards.enabled" in rows and "podSecurityContext" in rows


def test_rows_carry_type_default_and_the_whole_comment() -> None:
    text = """\
# A header, not a description.

top:
  # -- First line,
  # second line | with a pipe.
  # -- Only the last block counts.
  name: "x"
  # -- A map: its keys are its default.
  map:
    a: 1
    b: [true]
  nested:
    # -- Deep.
    ratio: 0.5
# -- A list.
items: []
"""
    rows = {v.key: v for v in documented_values(text)}
    assert list(rows) == ["top.name", "top.map", "top.nested.ratio", "items"]
    assert rows["top.name"].description == "Only the last block counts."
    assert (rows["top.map"].type, rows["top.map"].default) == ("object", '{"a":1,"b":[true]}')
    assert (rows["top.nested.ratio"].type, rows["top.nested.ratio"].default) == ("float", "0.5")
    assert (rows["items"].type, rows["items"].default) == ("list", "[]")
    multi = documented_values("# -- One,\n# two | three.\nk: 1\n")
    assert multi[0].description == "One, two | three."
    readme_line = "| k | int | `1` | One, two \\| three. |"
    assert readme_line == f"| k | int | `1` | {chart_readme._cell(multi[0].description)} |"


@pytest.mark.parametrize(
    "text",
    [
        "top:\n  # -- Documented.\n  a: 1\n  b: 2\n",  # a sibling without a comment
        "# A plain comment, not a description.\nleaf: true\n",
        "# -- Separated by a blank line.\n\nleaf: true\n",
        "parent: {}\n",  # an empty map is a value too
    ],
)
def test_an_undocumented_value_is_an_error_naming_it(text: str) -> None:
    with pytest.raises(UndocumentedValue, match=r"has no `# --` comment above it"):
        documented_values(text)


def test_check_mode_fails_on_a_stale_readme(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert chart_readme.main(["--check"]) == 0
    chart = tmp_path / "charts" / "shoal"
    shutil.copytree(CHART, chart)
    monkeypatch.setattr(chart_readme, "ROOT", tmp_path)
    monkeypatch.setattr(chart_readme, "CHART", chart)
    monkeypatch.setattr(chart_readme, "README", chart / "README.md")
    values = chart / "values.yaml"
    values.write_text(values.read_text() + "# -- A new value.\nnewValue: 1\n")
    assert chart_readme.main(["--check"]) == 1
    assert f"charts/shoal/README.md is out of date: run `{COMMAND}`" in capsys.readouterr().err
    assert chart_readme.main([]) == 0
    assert "| newValue | int | `1` | A new value. |" in (chart / "README.md").read_text()
    assert chart_readme.main(["--check"]) == 0
