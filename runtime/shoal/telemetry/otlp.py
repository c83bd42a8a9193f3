"""OTLP/protobuf for Shoal's consumer spans, written straight to bytes.

The SDK's exporter turns each span into protobuf objects, one per attribute, then serialises
them: more CPU than everything else a traced no-op task costs. A consumer span is almost all
constant per (queue, task): its name, kind and five attributes are encoded once
(:class:`Shape`), and each span adds only its ids, times, message id and attempt. Rare parts
(attributes, events or links a task adds itself) go through the general :func:`any_value`.

Field numbers are those of ``opentelemetry/proto/trace/v1/trace.proto``; the tests decode the
output with ``opentelemetry-proto`` and compare it with the SDK exporter's.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.telemetry.spans import ProcessSpan

_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (7), end_time_unix_nano (8): fixed64
_FIXED64 = struct.Struct("<Q")
_DOUBLE = struct.Struct("<d")
_FLAGS_ROOT = b"\x85\x01" + struct.pack("<I", 0x100)  # flags (16): context has is_remote
_FLAGS_REMOTE_PARENT = b"\x85\x01" + struct.pack("<I", 0x300)  # ... and the parent is remote
_LINK_FLAGS = b"\x35" + struct.pack("<I", 0x300)  # Link.flags (6): a remote span context
KIND_CONSUMER = 5
KIND_PRODUCER = 4
STATUS_CODES = {"UNSET": 0, "OK": 1, "ERROR": 2}


def varint(n: int) -> bytes:
    """A protobuf varint (``n`` >= 0)."""
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def _text(value: str) -> bytes:
    return value.encode("utf-8", "replace")  # a lone surrogate must not fail a whole batch


def any_value(value: Any) -> bytes:
    """An ``AnyValue`` message (its fields, without tag and length)."""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, int):
        return b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, str):
        return field(1, _text(value))
    if isinstance(value, bytes):
        return field(7, value)
    if isinstance(value, Mapping):
        return field(6, attributes(1, value))
    if isinstance(value, Sequence):
        return field(5, b"".join(field(1, any_value(v)) for v in value))
    return b""  # None: an empty AnyValue


def key_value(number: int, key: str, value: Any) -> bytes:
    """A ``KeyValue`` as field ``number`` of its message."""
    return field(number, field(1, _text(key)) + field(2, any_value(value)))


def attributes(number: int, items: Mapping[str, Any]) -> bytes:
    """Attributes as repeated ``KeyValue`` field ``number`` (9 in a span, 1 in a resource)."""
    return b"".join(key_value(number, k, v) for k, v in items.items())


class Shape:
    """What every consumer span of one (queue, task) shares, encoded once."""

    __slots__ = ("attributes", "constant", "head", "kind", "name", "size")

    def __init__(self, name: str, kind: int, constant: Mapping[str, Any]) -> None:
        self.name = name
        self.constant = dict(constant)
        self.kind = b"\x30" + varint(kind)  # kind (6)
        self.head = field(5, _text(name)) + self.kind  # name (5), kind
        self.attributes = attributes(9, constant)
        self.size = len(self.head) + len(self.attributes)
        """What the shared parts add to the size of a span."""


_MESSAGE_ID_KEY = field(1, b"messaging.message.id") + b"\x12"
_ATTEMPT_KEY = field(1, b"shoal.attempt") + b"\x12"


def _message_id(value: str) -> bytes:
    raw = _text(value)
    any_value = b"\x0a" + varint(len(raw)) + raw
    kv = _MESSAGE_ID_KEY + varint(len(any_value)) + any_value
    return b"\x4a" + varint(len(kv)) + kv


def _attempt(value: int) -> bytes:
    any_value = b"\x18" + varint(value & 0xFFFFFFFFFFFFFFFF)
    kv = _ATTEMPT_KEY + varint(len(any_value)) + any_value
    return b"\x4a" + varint(len(kv)) + kv


def _id_prefix(size: int) -> bytes:
    """Everything of the ``messaging.message.id`` attribute before its ``size`` UTF-8 bytes."""
    value = b"\x0a" + varint(size)
    kv_size = len(_MESSAGE_ID_KEY) + len(varint(len(value) + size)) + len(value) + size
    prefix = b"\x4a" + varint(kv_size) + _MESSAGE_ID_KEY + varint(len(value) + size) + value
    if len(_ID_PREFIXES) < 4096:
        _ID_PREFIXES[size] = prefix
    return prefix


_ID_PREFIXES: dict[int, bytes] = {}
_SIZE_PREFIXES: dict[int, bytes] = {}
_ATTEMPTS = tuple(_attempt(n) for n in range(32))
_IDS = struct.Struct(">HQQHQ")  # trace_id (1) and span_id (2), 16 and 8 bytes, big-endian
_IDS_PARENT = struct.Struct(">HQQHQHQ")  # ... and parent_span_id (4)
_LINK = struct.Struct(">4sQQHQ")  # links (13): the producer's trace_id (1) and span_id (2)
_LINK_HEAD = b"\x6a" + varint(2 + 16 + 2 + 8 + len(_LINK_FLAGS)) + b"\x0a\x10"
_LINK_TAIL = _LINK_FLAGS + _FLAGS_REMOTE_PARENT  # the link's flags, then the span's
_M64 = 0xFFFFFFFFFFFFFFFF
_FIXED_ROOT = _IDS.size + _TIMES.size + len(_FLAGS_ROOT)
_FIXED_PARENTED = _IDS_PARENT.size + _TIMES.size + _LINK.size + len(_LINK_TAIL)


def _size_prefix(size: int) -> bytes:
    """The tag and length of a span of ``size`` bytes (as field 2 of a ``ScopeSpans``)."""
    prefix = b"\x12" + varint(size)
    if len(_SIZE_PREFIXES) < 4096:
        _SIZE_PREFIXES[size] = prefix
    return prefix


def encode(s: ProcessSpan) -> bytes:
    """One ended consumer span, as field 2 (``spans``) of a ``ScopeSpans``.

    The common span (a task added nothing to it but through its own spans) is a few packs of
    its ids and times around the bytes its :class:`Shape` encoded once, its size summed, not
    measured; any other goes through :func:`span`. Both decode to the same message."""
    if (
        s.all_attributes is not None
        or s.name is not None
        or s.events is not None
        or s.links is not None
        or s.status_code
        or s.otel_state is not None
    ):
        return span(s)
    trace_id, parent, shape = s.trace_id, s.parent_id, s.shape
    high, low = trace_id >> 64, trace_id & _M64
    raw = s.message_id.encode("utf-8", "replace")
    id_prefix = _ID_PREFIXES.get(len(raw)) or _id_prefix(len(raw))
    attempt = s.attempt
    attempt_kv = _ATTEMPTS[attempt] if 0 <= attempt < 32 else _attempt(attempt)
    size = shape.size + len(id_prefix) + len(raw) + len(attempt_kv)
    times = _TIMES.pack(0x39, s.start_time, 0x41, s.end_time or s.start_time)
    if parent:
        size += _FIXED_PARENTED
        return b"".join(
            (
                _SIZE_PREFIXES.get(size) or _size_prefix(size),
                _IDS_PARENT.pack(0x0A10, high, low, 0x1208, s.span_id, 0x2208, parent),
                shape.head,
                times,
                shape.attributes,
                id_prefix,
                raw,
                attempt_kv,
                _LINK.pack(_LINK_HEAD, high, low, 0x1208, parent),
                _LINK_TAIL,
            )
        )
    size += _FIXED_ROOT
    return b"".join(
        (
            _SIZE_PREFIXES.get(size) or _size_prefix(size),
            _IDS.pack(0x0A10, high, low, 0x1208, s.span_id),
            shape.head,
            times,
            shape.attributes,
            id_prefix,
            raw,
            attempt_kv,
            _FLAGS_ROOT,
        )
    )


def span(s: ProcessSpan) -> bytes:
    """One consumer span, as field 2 (``spans``) of a ``ScopeSpans``, whatever it holds."""
    trace_id = s.trace_id.to_bytes(16, "big")
    parts = [b"\x0a\x10", trace_id, b"\x12\x08", s.span_id.to_bytes(8, "big")]
    if s.trace_state:
        parts.append(field(3, _text(s.trace_state)))
    parent = s.parent_id
    if parent:
        parts += (b"\x22\x08", parent.to_bytes(8, "big"))
    shape = s.shape
    if s.name is None:
        parts.append(shape.head)
    else:  # renamed by update_name
        parts += (field(5, _text(s.name)), shape.kind)
    parts.append(_TIMES.pack(0x39, s.start_time, 0x41, s.end_time or s.start_time))
    every = s.all_attributes
    if every is None:
        parts += (shape.attributes, _message_id(s.message_id), _attempt(s.attempt))
    else:  # the task set attributes of its own
        parts.append(attributes(9, dict(every)))
        if every.dropped:
            parts.append(b"\x50" + varint(every.dropped))
    for name, event_attributes, timestamp, dropped in s.events or ():
        event = b"\x09" + _FIXED64.pack(timestamp) + field(2, _text(name))
        event += attributes(3, event_attributes)
        if dropped:
            event += b"\x20" + varint(dropped)
        parts.append(field(11, event))
    if s.dropped_events:
        parts.append(b"\x60" + varint(s.dropped_events))
    if parent:  # the link to the producer (a remote span context)
        link = b"\x0a\x10" + trace_id + b"\x12\x08" + parent.to_bytes(8, "big") + _LINK_FLAGS
        parts.append(field(13, link))
    for link_trace, link_span, link_attributes, remote in s.links or ():
        link = b"\x0a\x10" + link_trace.to_bytes(16, "big") + b"\x12\x08"
        link += link_span.to_bytes(8, "big") + attributes(4, link_attributes)
        link += b"\x35" + struct.pack("<I", 0x300 if remote else 0x100)
        parts.append(field(13, link))
    if s.status_code:
        status = field(2, _text(s.status_description)) if s.status_description else b""
        parts.append(field(15, status + b"\x18" + varint(s.status_code)))
    parts.append(_FLAGS_REMOTE_PARENT if parent else _FLAGS_ROOT)
    body = b"".join(parts)
    return b"\x12" + varint(len(body)) + body


def scope(name: str, version: str | None) -> bytes:
    """An ``InstrumentationScope`` as field 1 of a ``ScopeSpans``."""
    return field(1, field(1, _text(name)) + (field(2, _text(version)) if version else b""))


def resource(items: Mapping[str, Any], schema_url: str | None) -> tuple[bytes, bytes]:
    """A ``Resource`` as field 1 of a ``ResourceSpans``, and its schema URL as field 3."""
    return field(1, attributes(1, items)), field(3, _text(schema_url)) if schema_url else b""


def request(resource_part: tuple[bytes, bytes], scope_part: bytes, encoded: bytes) -> bytes:
    """An ``ExportTraceServiceRequest`` holding spans already encoded by :func:`encode`."""
    scope_spans = field(2, scope_part + encoded)
    head, schema = resource_part
    return field(1, head + scope_spans + schema)
