"""How the ``shoal`` listings print: a rich table in a terminal, plain tab-separated rows when
piped, or ``-o json|yaml|wide`` as kubectl does.

A :class:`Listing` holds each row twice: as text for people (table, tab-separated rows) and as
data for programs (json, yaml). Piped rows are whole and one line each, so ``grep``, ``cut -f``
and ``awk -F'\\t'`` see every value: nothing truncated, wrapped or marked up.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

FORMATS = ("json", "yaml", "wide")

output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(FORMATS),
    help="json or yaml: every field as data; wide: every column. Default: a table in a "
    "terminal, else plain tab-separated rows (whole values, one line each, a header first).",
)


@dataclass(slots=True)
class Listing:
    """A titled table. ``wide``: the columns shown only with ``-o wide`` or when piped.
    ``records``: the same rows as data, for json and yaml."""

    title: str
    columns: Sequence[str]
    wide: frozenset[str] = frozenset()
    rows: list[list[str]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    empty: str = ""
    """Said (on stderr when piped) when there are no rows."""

    def add(self, cells: Sequence[str], record: dict[str, Any]) -> None:
        self.rows.append(list(cells))
        self.records.append(record)


def plain_cell(text: str) -> str:
    """One field of a tab-separated row: a tab, newline or other control character would split
    or drive the output, so each is written as its escape (``\\t``, ``\\n``, ``\\x1b``), and a
    backslash as ``\\\\`` so that an escape and the same characters in the text differ."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join("\\\\" if c == "\\" else c if c.isprintable() else repr(c)[1:-1] for c in text)


def is_terminal() -> bool:
    return sys.stdout.isatty()


def dump(data: Any, fmt: str) -> str:
    """``data`` as JSON (one document, indented) or YAML."""
    if fmt == "yaml":
        import yaml

        return str(yaml.safe_dump(data, sort_keys=False, allow_unicode=True)).rstrip("\n")
    import orjson

    return orjson.dumps(data, option=orjson.OPT_INDENT_2).decode()


def render_plain(listing: Listing, wide: bool = True) -> str:
    keep = [i for i, c in enumerate(listing.columns) if wide or c not in listing.wide]
    lines = ["\t".join(listing.columns[i].upper().replace(" ", "_") for i in keep)]
    lines += ["\t".join(plain_cell(row[i]) for i in keep) for row in listing.rows]
    return "\n".join(lines)


def rich_table(listing: Listing, wide: bool) -> Any:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=listing.title)
    keep = [i for i, c in enumerate(listing.columns) if wide or c not in listing.wide]
    for i in keep:
        figures = bool(listing.rows) and all(_FIGURE.match(row[i]) for row in listing.rows)
        table.add_column(
            listing.columns[i], overflow="fold", justify="right" if figures else "left"
        )
    for row in listing.rows:
        table.add_row(*(Text(row[i]) for i in keep))  # Text: a value is never read as markup
    return table


_FIGURE = re.compile(r"^(-|[\d.,]+(ms|s|m|h)?)$")
"""A number or an age (``12``, ``3.5s``): right-aligned in a table."""


def emit(listings: Sequence[Listing], fmt: str | None, console: Console | None = None) -> None:
    """Print ``listings`` in ``fmt`` (None: table in a terminal, plain rows when piped). Several
    listings in json/yaml become one object keyed by title word (``queues``, ``workers``)."""
    if fmt in ("json", "yaml"):
        data: Any = (
            listings[0].records
            if len(listings) == 1
            else {key_of(lst): lst.records for lst in listings}
        )
        click.echo(dump(data, fmt))
        return
    wide = fmt == "wide"
    if not is_terminal():
        for n, listing in enumerate(listings):
            if n:
                click.echo()
            if not listing.rows and listing.empty:
                click.echo(listing.empty, err=True)
                continue
            click.echo(render_plain(listing, wide=True))
        return
    if console is None:
        from rich.console import Console

        console = Console()
    for listing in listings:
        if not listing.rows and listing.empty:
            console.print(listing.empty, markup=False, highlight=False)
        else:
            console.print(rich_table(listing, wide))


def key_of(listing: Listing) -> str:
    return listing.title.split()[0].lower()


def when(epoch: float | None) -> str:
    """A Unix time as local ``YYYY-MM-DD HH:MM:SS``; ``-`` for none."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"
