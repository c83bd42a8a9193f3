"""The promote script and fetch share one definition of "what is due" (``promote_due.lua``)."""

from __future__ import annotations

from shoal.protocol.keys import queue_keys
from shoal.protocol.scripts import (
    INCLUDE,
    MOVE_LIMIT,
    SCRIPT_NAMES,
    _lua,
    parse_promote,
    promote_call,
    script_source,
)


def test_fetch_and_promote_paste_in_the_same_fragment() -> None:
    fragment = _lua("promote_due")
    for name in ("fetch", "promote"):
        assert INCLUDE + "promote_due" in _lua(name)
        text = script_source(name)
        assert fragment in text
        assert not any(line.startswith(INCLUDE) for line in text.splitlines())
    assert "promote" in SCRIPT_NAMES and "promote_due" not in SCRIPT_NAMES


def test_promote_call_layout_matches_its_header() -> None:
    k = queue_keys("shoal", "q")
    name, keys, argv = promote_call(k)
    assert name == "promote"
    assert keys == [k.waiting, k.messages, k.inflight, k.delayed, k.stats, k.owners]
    assert argv == [MOVE_LIMIT, k.notify]
    header = [line for line in _lua("promote").splitlines() if line.startswith("-- KEYS[")]
    assert len(header) == len(keys)
    assert parse_promote([2, 1, 3]).moved == 3
