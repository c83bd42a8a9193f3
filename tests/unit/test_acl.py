"""The ACL rule the README prints is the one the code grants (and the suite runs as)."""

from __future__ import annotations

from pathlib import Path

from shoal.protocol.acl import acl_setuser

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_shows_the_rule_shoal_redis_acl_prints() -> None:
    text = README.read_text()
    start = text.index("ACL SETUSER shoal on")
    shown = text[start : text.index("```", start)].split()
    assert shown == acl_setuser("shoal", "shoal").split(), "regenerate it: shoal redis-acl"
