"""How a message's records read as a state (``shoal.task_status``), without Redis."""

from __future__ import annotations

import orjson
import pytest

from shoal.message import Message
from shoal.protocol.registry import RunningTask, WorkerRegistration
from shoal.protocol.results import encode_cancelled, encode_failure, encode_success
from shoal.protocol.scripts import Whereabouts
from shoal.task_progress import Progress
from shoal.task_status import read_status

NOW = 1_700_000_000_000
ENVELOPE = b"envelope"


def where(**records: object) -> Whereabouts:
    fields: dict[str, object] = dict.fromkeys(Whereabouts._fields)
    fields["now_ms"] = NOW
    fields.update(records)
    return Whereabouts(**fields)  # type: ignore[arg-type]


def opened(attempt: int) -> Message:
    return Message("m1", "resize", "images", [], {}, 0.0, attempt=attempt)


def status_of(
    w: Whereabouts, attempt: int = 0, workers: tuple[WorkerRegistration, ...] = ()
) -> object:
    return read_status("images", "m1", w, lambda _: opened(attempt), lambda: workers)


def test_a_running_message_names_its_worker_and_attempt() -> None:
    runner = WorkerRegistration(id="w2", running=(RunningTask("images", "m1", "resize", 2, 1.0),))
    other = WorkerRegistration(id="w1", running=(RunningTask("other", "m1", "resize", 1, 1.0),))
    s = status_of(where(envelope=ENVELOPE, lease_deadline_ms=NOW + 5), 1, (other, runner))
    assert (s.state, s.worker, s.attempt, s.task) == ("running", "w2", 2, "resize")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("attempt", "state"), [(0, "delayed"), (1, "retrying")])
def test_a_delayed_message_is_retrying_after_its_first_attempt(attempt: int, state: str) -> None:
    s = status_of(where(envelope=ENVELOPE, due_ms=NOW + 2000.0), attempt)
    assert (s.state, s.due_at) == (state, (NOW + 2000) / 1000)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("reason", "state"),
    [
        ("retries_exhausted", "failed"),
        ("bad_arguments", "failed"),
        ("expired", "dead"),
        ("unknown_task", "dead"),
    ],
)
def test_a_dead_letter_is_failed_when_its_code_failed_else_dead(reason: str, state: str) -> None:
    entry = orjson.dumps({"reason": reason, "error": "boom", "attempts": 3, "task": "resize"})
    s = status_of(where(dead_entry=entry))
    assert (s.state, s.reason, s.error, s.attempt) == (state, reason, "boom", 3)  # type: ignore[attr-defined]


def test_stored_results_tell_success_failure_and_cancel() -> None:
    assert status_of(where(result=encode_success(1))).state == "succeeded"  # type: ignore[attr-defined]
    assert status_of(where(result=encode_failure("x"))).state == "failed"  # type: ignore[attr-defined]
    cancelled = status_of(where(result=encode_cancelled("before it ran")))
    assert (cancelled.state, cancelled.reason) == ("cancelled", "cancelled")  # type: ignore[attr-defined]
    assert status_of(where()).state == "unknown"  # type: ignore[attr-defined]


def test_progress_reports_read_back_and_junk_reads_as_none() -> None:
    report = Progress(3, 12, "resizing", 1.0)
    assert Progress.from_json(report.to_json()) == report
    assert report.describe() == "3/12 (25%) resizing"
    assert Progress(5, None, None, 0).describe() == "5"
    assert Progress.from_json(b"\xff not json") is None
    assert Progress.from_json(b"[1, 2]") is None
    s = status_of(where(envelope=ENVELOPE, progress=report.to_json()))
    assert s.progress == report  # type: ignore[attr-defined]


def test_progress_outside_a_task_says_where_to_call_it() -> None:
    from shoal import progress

    with pytest.raises(RuntimeError, match="from inside a task"):
        progress(1, 2)
