"""What a DLQ entry holds (bounded summary, whole verified envelope or an excerpt) and the
reason vocabulary, without Redis."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest

import shoal
from shoal.dead_letter import (
    ERROR_BYTES,
    EXCERPT_BYTES,
    TRACEBACK_BYTES,
    DeadLetter,
    clip,
    clip_middle,
    dead_letter_entry,
    read_entry,
)
from shoal.message import Message
from shoal.reasons import REASONS, UNREPLAYABLE, Reason, is_reason, meaning
from shoal.signing import Signer

RUNTIME = Path(shoal.__file__).parent


def summary(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(raw)
    return data


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as exc:
        return exc


def test_a_verified_message_is_kept_whole_and_summarised() -> None:
    message = Message("m1", "pay", "q", ["alice"], {}, 1.0, attempt=2, headers={"traceparent": 5})
    entry, body = dead_letter_entry("m1", "q", message, "retries_exhausted", raised(KeyError("k")))
    data = summary(entry)
    assert body == message.encode()
    assert (data["stored"], data["size"], data["attempts"], data["task"]) == (
        "envelope",
        len(body),
        3,
        "pay",
    )
    assert data["traceparent"] is None  # not a string: not copied
    assert "message" not in data
    assert "KeyError" in data["traceback"]
    assert DeadLetter.from_json(entry, body).refusal is None


def test_huge_errors_tracebacks_and_bad_bytes_are_bounded() -> None:
    error = raised(RuntimeError("y" * 1_000_000 + "\udcff"))  # a lone surrogate, too
    raw = b"\xff" * 3_000_000
    entry, body = dead_letter_entry("t1", "q", None, "undecodable", error, raw)
    data = summary(entry)
    assert len(entry) <= ERROR_BYTES + TRACEBACK_BYTES + 1024
    assert len(data["error"].encode()) <= ERROR_BYTES and "bytes in all" in data["error"]
    assert len(data["traceback"].encode()) <= TRACEBACK_BYTES
    assert data["traceback"].startswith("Traceback") and "RuntimeError" in data["traceback"]
    assert body == raw[:EXCERPT_BYTES]
    assert (data["size"], data["stored"]) == (len(raw), "excerpt")
    refusal = DeadLetter.from_json(entry, body).refusal
    assert refusal is not None and "undecodable" in refusal and "verification" in refusal


@pytest.mark.parametrize(
    ("reason", "key", "stored"),
    [
        ("internal_error", "k1", "envelope"),  # verifies and decodes: kept whole, replayable
        ("internal_error", "other", "excerpt"),  # signed by another key: never kept whole
        ("bad_signature", "k1", "excerpt"),  # the reason says it failed verification
    ],
)
def test_raw_bytes_are_kept_whole_only_when_they_verify(reason: str, key: str, stored: str) -> None:
    message = Message("m2", "pay", "q", [], {}, 1.0)
    raw = Signer((key,)).seal(message.encode())
    entry, body = dead_letter_entry(
        "m2", "q", None, reason, ValueError("x"), raw, signer=Signer(("k1",))
    )
    data = summary(entry)
    assert (data["stored"], data["size"]) == (stored, len(raw))
    if stored == "envelope":
        assert Signer(("k1",)).open(body) == message.encode() and data["task"] == "pay"
    else:
        assert body == raw[:EXCERPT_BYTES] and data["task"] is None


def test_raw_bytes_of_another_id_are_an_excerpt() -> None:
    raw = Message("someone-else", "pay", "q", [], {}, 1.0).encode()
    entry, _ = dead_letter_entry(
        "m3", "q", None, "internal_error", ValueError("x"), raw, signer=Signer(())
    )
    assert summary(entry)["stored"] == "excerpt"


def test_a_message_too_deep_to_encode_keeps_the_bytes_read() -> None:
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    message = Message("m4", "pay", "q", [deep], {}, 1.0)
    raw = Message("m4", "pay", "q", [], {}, 1.0).encode()  # what was read: not as deep
    entry, body = dead_letter_entry(
        "m4", "q", message, "too_deep", ValueError("deep"), raw, signer=Signer(())
    )
    assert (summary(entry)["stored"], body) == ("excerpt", raw)  # too_deep: never replayed
    entry, body = dead_letter_entry("m4", "q", message, "too_deep", ValueError("deep"))
    assert (summary(entry)["stored"], body) == ("excerpt", b"")


def test_clip_never_exceeds_its_limit() -> None:
    for n in (0, 10, 4095, 4096, 4097, 100_000):
        for text in ("a" * n, "é" * n):
            assert len(clip(text, 4096).encode()) <= 4096
            assert len(clip_middle(text, 4096).encode()) <= 4096
    assert clip("short", 4096) == "short"


def test_an_entry_round_trips_through_its_reader() -> None:
    message = Message(
        "m5", "pay", "q", [1], {}, 7.0, attempt=1, headers={"traceparent": "00-abc-def-01"}
    )
    flow = {"id": "wf", "kind": "chain"}
    error = raised(ValueError("boom"))
    summary_json, body = dead_letter_entry(
        "m5", "q", message, "not_retryable", error, workflow=flow
    )
    entry = read_entry("m5", summary_json, body)
    data = summary(summary_json)
    assert entry == DeadLetter(
        id="m5",
        queue="q",
        task="pay",
        reason="not_retryable",
        error="ValueError: boom",
        exception_type="ValueError",
        traceback=data["traceback"],
        attempts=2,
        enqueued_at=7.0,
        failed_at=data["failed_at"],
        traceparent="00-abc-def-01",
        workflow=flow,
        size=len(body),
        stored="envelope",
        body=body,
    )
    assert entry.trace_id == "abc" and entry.message == message.encode().decode()


def test_an_entry_from_a_newer_shoal_reads_without_its_new_fields() -> None:
    summary_json, body = dead_letter_entry("m6", "q", None, "undecodable", ValueError("x"), b"?")
    newer = orjson.dumps({**summary(summary_json), "region": "eu", "hops": [1, 2]})
    assert read_entry("m6", newer, body) == read_entry("m6", summary_json, body)


@pytest.mark.parametrize("raw", [b"not json", b"[]", b'{"queue":"q"}'])
def test_a_summary_that_is_not_one_reads_as_unreadable(raw: bytes) -> None:
    entry = read_entry("m7", raw, b"body")
    assert (entry.id, entry.reason, entry.stored, entry.body) == (
        "m7",
        "unreadable",
        "excerpt",
        b"body",
    )
    assert entry.refusal is not None


def test_old_entries_carry_their_message_inside() -> None:
    old = orjson.dumps({"id": "o1", "queue": "q", "reason": "unknown_task", "message": "{}"})
    entry = DeadLetter.from_json(old)
    assert (entry.message, entry.stored, entry.size, entry.refusal) == ("{}", None, None, None)


# --- the reason vocabulary --------------------------------------------------------------------


def produced_reasons() -> set[str]:
    """Every DLQ reason literal in the worker and the middleware: ``_dead_letter(…, "r", …)``,
    rejections ``("r", error)``, ``outcome.reason = "r"`` and the Outcome default."""
    found: set[str] = set()
    for path in [RUNTIME / "worker.py", *sorted((RUNTIME / "middleware").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "_dead_letter":
                candidates = list(node.args)
            elif isinstance(node, ast.Tuple) and len(node.elts) == 2:
                first, second = node.elts
                candidates = [first] if isinstance(second, ast.Name) else []
            elif isinstance(node, ast.Assign):
                targets = [getattr(t, "attr", "") for t in node.targets]
                candidates = [node.value] if "reason" in targets else []
            elif isinstance(node, ast.AnnAssign):
                candidates = [node.value] if getattr(node.target, "id", "") == "reason" else []
            else:
                continue
            found |= {
                c.value
                for c in candidates
                if isinstance(c, ast.Constant) and isinstance(c.value, str)
            }
    return found


def test_every_reason_a_worker_can_give_is_documented() -> None:
    produced = produced_reasons()
    assert {"too_large", "bad_signature", "retries_exhausted", "failed"} <= produced
    assert produced - REASONS.keys() == set()


def test_unreplayable_reasons_are_known_and_cover_what_failed_verification() -> None:
    assert REASONS.keys() >= UNREPLAYABLE
    assert {"bad_signature", "undecodable", "too_large", "id_mismatch"} <= UNREPLAYABLE
    assert "retries_exhausted" not in UNREPLAYABLE and "bad_arguments" not in UNREPLAYABLE


def test_the_reason_type_and_the_descriptions_name_the_same_reasons() -> None:
    assert set(get_args(Reason)) == REASONS.keys()
    assert all(is_reason(r) for r in REASONS) and not is_reason("no_such_reason")
    assert meaning("too_large") == REASONS["too_large"]
    assert meaning("from_a_newer_shoal") == "-"  # a reason this version does not know
