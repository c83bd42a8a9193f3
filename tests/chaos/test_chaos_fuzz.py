"""Drill: property-based fuzz of the envelope decoder and the signature check.

Whatever bytes a worker reads, ``Message.decode(signer.open(data))`` gives a Message or raises
DecodeError (BadSignature is one); nothing else may escape, or a worker would treat poison as an
internal failure. Beyond the unit tests' plain random bytes, these build inputs near the valid
ones: mutated signed and unsigned envelopes, every JSON shape in every field, deep nesting,
numbers JSON allows but Python or orjson may not, strings that are not valid UTF-8 or contain
lone surrogates, and signatures of every length.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import example, given, settings
from hypothesis import strategies as st

from shoal import DecodeError, Message
from shoal.signing import PREFIX, Signer

KEY = ("fuzz-key", "older-key")
SIGNERS = (Signer(()), Signer(KEY))
GOOD = orjson.loads(
    Message(
        id="0190d7a0b1c2d3e4f5a6b7c8d9e0f1a2",
        task="billing.charge",
        queue="billing",
        args=[42, "eur"],
        kwargs={"dry_run": True},
        enqueued_at=1_700_000_000.5,
        attempt=1,
        headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
        options={"timeout": 5.0},
    ).encode()
)
FIELDS = sorted(GOOD)


def dumps(value: Any) -> bytes:
    """JSON as any producer might write it: integers of any size, raw UTF-8 (lone surrogates
    kept as they are, so the bytes are not valid UTF-8)."""
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def outcome(data: bytes) -> None:
    """The property: a Message, or a DecodeError; with and without signing keys."""
    for signer in SIGNERS:
        try:
            message = Message.decode(signer.open(data))
        except DecodeError:
            continue
        assert isinstance(message, Message)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@st.composite
def envelopes(draw: st.DrawFn) -> bytes:
    """A valid envelope with some fields replaced by any JSON value, or removed."""
    raw: dict[str, Any] = dict(GOOD)
    for name in draw(st.sets(st.sampled_from(FIELDS), max_size=3)):
        del raw[name]
    raw.update(draw(st.dictionaries(st.sampled_from([*FIELDS, "extra"]), json_values, max_size=3)))
    return dumps(raw)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """``base`` with bytes flipped, cut, inserted or spliced in."""
    data = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if action == "flip" and where < len(data):
            data[where] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[where : where + draw(st.integers(1, 8))]
        elif action == "insert":
            data[where:where] = draw(
                st.sampled_from(
                    [b"\xff", b"\xc3\x28", b"\\ud800", b"[", b"{", b'"', b"\x00", b"1e999"]
                )
                | st.binary(min_size=1, max_size=8)
            )
        else:
            del data[where:]
    return bytes(data)


def deep(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


@st.composite
def deeply_nested(draw: st.DrawFn) -> bytes:
    """An envelope with one field nested up to 2,000 levels (orjson stops at 1,024)."""
    depth = draw(st.integers(1, 2000))
    field = draw(st.sampled_from(["args", "kwargs", "headers", "options", "id"]))
    nested = (
        deep(depth) if draw(st.booleans()) else deep(depth, b'{"k":', b"}").replace(b":}", b":1}")
    )
    body = orjson.dumps({**GOOD, field: 0})
    return body.replace(b'"' + field.encode() + b'":0', b'"' + field.encode() + b'":' + nested, 1)


signed = st.builds(lambda b: Signer(KEY).seal(b), envelopes())
signatures = st.builds(
    lambda sig, sep, body: PREFIX + sig + sep + body,
    st.binary(max_size=60) | st.text("ABCDEFabcdef0123456789-_", max_size=60).map(str.encode),
    st.sampled_from([b":", b"", b"::", b"\xff"]),
    envelopes() | st.binary(max_size=50),
)


@settings(max_examples=400)
@given(envelopes() | signed)
@example(dumps({**GOOD, "id": 2**65}))
@example(dumps({**GOOD, "attempt": 2**64}))
@example(dumps({**GOOD, "enqueued_at": True}))
@example(dumps({**GOOD, "task": "\ud800"}))
def test_any_envelope_shape_gives_a_message_or_decode_error(data: bytes) -> None:
    outcome(data)


@settings(max_examples=400)
@given(mutated(envelopes() | signed))
@example(Signer(KEY).seal(orjson.dumps(GOOD))[:-1] + b"\xff}")
@example(orjson.dumps(GOOD).replace(b'"billing"', b'"\\ud800"', 1))
@example(orjson.dumps(GOOD).replace(b"1700000000.5", b"1e999", 1))
def test_mutated_envelopes_give_a_message_or_decode_error(data: bytes) -> None:
    outcome(data)


@settings(max_examples=150)
@given(deeply_nested() | deeply_nested().map(Signer(KEY).seal))
@example(orjson.dumps({**GOOD, "args": 0}).replace(b'"args":0', b'"args":' + deep(1025), 1))
@example(deep(100_000))
def test_deep_nesting_gives_a_message_or_decode_error(data: bytes) -> None:
    outcome(data)


@settings(max_examples=300)
@given(signatures)
@example(PREFIX)
@example(PREFIX + b"A" * 43)
@example(PREFIX + b"A" * 43 + b":")
@example(PREFIX + "é".encode() * 30 + b":{}")
def test_any_signature_gives_a_message_or_decode_error(data: bytes) -> None:
    outcome(data)
