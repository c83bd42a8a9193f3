"""A piped listing's cells: one line, one field each, and reversible."""

from __future__ import annotations

import pytest

from shoal.cli_output import plain_cell


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("reports", "reports"),
        ("a\tb", "a\\tb"),  # a real tab would split the row
        ("line\nnext", "line\\nnext"),
        ("\x1b[31mred", "\\x1b[31mred"),  # no terminal escapes reach a pipe
        ("C:\\tmp", "C:\\\\tmp"),  # a backslash in the text is not an escape
        ("a\\tb", "a\\\\tb"),
    ],
)
def test_a_cell_escapes_what_would_split_or_drive_the_output(text: str, cell: str) -> None:
    assert plain_cell(text) == cell
    assert "\t" not in cell and "\n" not in cell


def test_a_real_tab_and_a_written_backslash_t_stay_different() -> None:
    assert plain_cell("a\tb") != plain_cell("a\\tb")
