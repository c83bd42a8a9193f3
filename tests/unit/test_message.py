"""The envelope: JSON round trip, and a DecodeError (never anything else) for bad bytes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal import DecodeError, Message
from shoal.message import ENVELOPE_VERSION, new_message_id


def make_message(**changes: Any) -> Message:
    fields: dict[str, Any] = {
        "id": new_message_id(),
        "task": "billing.charge",
        "queue": "billing",
        "args": [42, "eur", [1, 2], {"nested": None}],
        "kwargs": {"amount": 12.5, "dry_run": True},
        "enqueued_at": 1_700_000_000.25,
        "attempt": 2,
        "headers": {"traceparent": "00-abc-def-01"},
        "options": {"timeout": 5.0},
    }
    fields.update(changes)
    return Message(**fields)


def envelope(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = orjson.loads(make_message().encode())
    raw.update(changes)
    return raw


def test_round_trip() -> None:
    message = make_message()
    body = message.encode()
    assert isinstance(body, bytes)
    assert orjson.loads(body)["v"] == ENVELOPE_VERSION
    assert Message.decode(body) == message


def test_decode_fills_optional_fields() -> None:
    raw = envelope()
    for optional in ("attempt", "headers", "options"):
        del raw[optional]
    decoded = Message.decode(orjson.dumps(raw))
    assert (decoded.attempt, decoded.headers, decoded.options) == (0, {}, {})


def test_next_attempt_keeps_the_id_and_merges_options() -> None:
    message = make_message(attempt=0)
    nxt = message.next_attempt(last_error="boom")
    assert nxt.id == message.id
    assert nxt.attempt == 1
    assert nxt.options == {"timeout": 5.0, "last_error": "boom"}


def test_message_ids_are_unique_and_sort_by_time() -> None:
    ids = [new_message_id() for _ in range(1000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 for i in ids)
    assert [i[:12] for i in ids] == sorted(i[:12] for i in ids)


def test_encode_refuses_non_json_arguments() -> None:
    with pytest.raises(TypeError):
        make_message(args=[object()]).encode()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"garbage", "not JSON"),
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "JSON list"),
        (b'"text"', "JSON str"),
        (orjson.dumps(envelope(v=2)), "version 2"),
        (orjson.dumps({k: v for k, v in envelope().items() if k != "v"}), "version None"),
        (orjson.dumps({k: v for k, v in envelope().items() if k != "task"}), "lacks field 'task'"),
        (orjson.dumps({k: v for k, v in envelope().items() if k != "args"}), "lacks field 'args'"),
        (orjson.dumps(envelope(args="not a list")), "field 'args' is str"),
        (orjson.dumps(envelope(kwargs=[])), "field 'kwargs' is list"),
        (orjson.dumps(envelope(id=7)), "field 'id' is int"),
        (orjson.dumps(envelope(enqueued_at="now")), "field 'enqueued_at' is str"),
        (orjson.dumps(envelope(attempt=True)), "field 'attempt' is bool"),
        (orjson.dumps(envelope(attempt=1.5)), "field 'attempt' is float"),
        (orjson.dumps(envelope(headers=["x"])), "field 'headers' is list"),
    ],
)
def test_decode_errors_say_what_is_wrong(data: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as info:
        Message.decode(data)
    assert reason in info.value.reason
    assert info.value.data == data


@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    try:
        result = Message.decode(data)
    except DecodeError:
        return
    assert isinstance(result, Message)


scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
)
json_values = (
    scalars | st.lists(scalars, max_size=3) | st.dictionaries(st.text(max_size=5), scalars)
)
good_fields = make_message().encode()


@given(
    st.dictionaries(
        st.sampled_from(sorted(orjson.loads(good_fields))),
        json_values,
        max_size=4,
    ),
    st.sets(st.sampled_from(sorted(orjson.loads(good_fields))), max_size=3),
)
def test_arbitrary_envelopes_decode_or_raise_decode_error(
    changed: dict[str, Any], removed: set[str]
) -> None:
    raw = {k: v for k, v in orjson.loads(good_fields).items() if k not in removed}
    raw.update(changed)
    data = orjson.dumps(raw)
    try:
        result = Message.decode(data)
    except DecodeError:
        return
    assert isinstance(result, Message)
    assert Message.decode(result.encode()) == result
