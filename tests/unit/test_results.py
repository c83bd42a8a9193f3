"""The result envelope (:mod:`shoal.protocol.results`) round-trips, byte-compatible with what
the Lua scripts write and test (their side: tests/integration/test_result_envelope.py)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from shoal.protocol.results import (
    SUCCESS_PREFIX,
    StoredResult,
    decode_result,
    encode_failure,
    encode_success,
    encode_success_json,
)


@pytest.mark.parametrize("value", [None, 0, "é", [1, [2]], {"a": {"b": None}}, 1.5, True])
def test_a_success_round_trips_and_starts_with_the_prefix_lua_tests(value: Any) -> None:
    raw = encode_success(value)
    assert raw.startswith(SUCCESS_PREFIX) and len(SUCCESS_PREFIX) == 10  # string.sub(…, 1, 10)
    assert raw == orjson.dumps({"ok": True, "value": value})  # what was stored before
    assert encode_success_json(orjson.dumps(value)) == raw
    assert decode_result(raw) == StoredResult(ok=True, value=value)


def test_a_value_that_is_not_json_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        encode_success(object())


def test_failures_round_trip_and_never_start_like_a_success() -> None:
    plain = encode_failure("bad_arguments: TypeError: x")
    assert plain == orjson.dumps({"ok": False, "error": "bad_arguments: TypeError: x"})
    assert decode_result(plain) == StoredResult(ok=False, error="bad_arguments: TypeError: x")
    flow = encode_failure("member failed", member="m1", reason="retries_exhausted")
    assert not flow.startswith(SUCCESS_PREFIX)
    assert decode_result(flow) == StoredResult(
        ok=False, error="member failed", member="m1", reason="retries_exhausted"
    )


def test_unknown_fields_are_ignored_and_missing_ones_default() -> None:
    newer = orjson.dumps({"ok": True, "value": 3, "took_ms": 12, "worker": "w"})
    assert decode_result(newer) == StoredResult(ok=True, value=3)
    assert decode_result(b'{"ok":false}') == StoredResult(ok=False)


@pytest.mark.parametrize("raw", [b"", b"not json", b"[1,2]", b'"ok"', b"\xff\xfe"])
def test_bytes_that_are_not_a_result_read_as_a_failure_saying_so(raw: bytes) -> None:
    stored = decode_result(raw)
    assert not stored.ok and stored.error is not None and "not a Shoal result" in stored.error
