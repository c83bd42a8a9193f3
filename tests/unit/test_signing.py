"""HMAC signing: seal/open, key rotation, and refusal of unsigned or forged messages."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal.errors import BadSignature, DecodeError
from shoal.message import Message
from shoal.signing import Signer


def test_sealed_message_opens_with_the_same_key() -> None:
    signer = Signer(("k1",))
    assert signer.open(signer.seal(b'{"v":1}')) == b'{"v":1}'


def test_rotation_verifies_with_any_key_and_signs_with_the_first() -> None:
    old, new = Signer(("old",)), Signer(("new", "old"))
    assert new.open(old.seal(b"body")) == b"body"  # still in flight from before the rotation
    assert new.seal(b"body") == Signer(("new",)).seal(b"body")
    with pytest.raises(BadSignature):
        old.open(new.seal(b"body"))  # a worker that never got the new key refuses it


def test_unsigned_message_is_refused_when_keys_are_set() -> None:
    with pytest.raises(BadSignature, match="not signed"):
        Signer(("k",)).open(b'{"v":1}')


def test_tampered_body_is_refused() -> None:
    sealed = Signer(("k",)).seal(b'{"amount":1}')
    with pytest.raises(BadSignature, match="matches none"):
        Signer(("k",)).open(sealed.replace(b'"amount":1', b'"amount":9'))


def test_without_keys_nothing_changes() -> None:
    assert Signer(()).seal(b"x") == b"x"
    assert Signer(()).open(Signer(("k",)).seal(b"x")) == b"x"


@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_a_message_or_a_decode_error(data: bytes) -> None:
    for signer in (Signer(()), Signer(("k",))):
        with contextlib.suppress(DecodeError):
            Message.decode(signer.open(data))


@given(st.binary(max_size=200))
def test_arbitrary_bytes_after_a_valid_prefix_never_escape(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        Message.decode(Signer(("k",)).open(b"s1:" + data))


@given(key=st.binary(max_size=100), body=st.binary(max_size=300))
def test_the_signature_is_hmac_sha256_of_the_body(key: bytes, body: bytes) -> None:
    """The per-key HMAC is copied per message: the result is the plain HMAC, for any key
    length (a key longer than SHA-256's block is hashed first), however often it is used."""
    signer = Signer((key.decode("latin-1"),))
    expected = hmac.new(key.decode("latin-1").encode(), body, hashlib.sha256).digest()
    for _ in range(2):
        sealed = signer.seal(body)
        assert sealed[3:46] == base64.urlsafe_b64encode(expected).rstrip(b"=")
        assert signer.open(sealed) == body
