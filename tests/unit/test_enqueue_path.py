"""The lean enqueue path: with no middleware hooking sending, a task's enqueue builds no Message
and runs no hooks, yet stores the same envelope, with the same checks and errors; with such
middleware, every send runs its hooks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shoal import App, EnqueueError, Settings, telemetry
from shoal.message import Message, encode_envelope, message_id_at, new_message_id
from shoal.middleware import Middleware, Retries, Tracing, default_middleware
from shoal.middleware.hooks import Hooks
from shoal.protocol import Guard, Outgoing
from shoal.signing import Signer
from shoal.task import Task


class Recorder(Middleware):
    """Hooks sending: adds a header in ``enqueue_context``, records ``after_enqueue``."""

    def __init__(self) -> None:
        self.contexts: list[list[str]] = []
        self.after: list[list[str]] = []

    @contextlib.contextmanager
    def _context(self, messages: Sequence[Message]) -> Iterator[None]:
        self.contexts.append([m.id for m in messages])
        for m in messages:
            m.headers["recorded"] = "yes"
        yield

    def enqueue_context(
        self, task: Task[Any, Any], messages: Sequence[Message]
    ) -> contextlib.AbstractContextManager[None]:
        return self._context(messages)

    def after_enqueue(self, task: Task[Any, Any], messages: Sequence[Message]) -> None:
        self.after.append([m.id for m in messages])


class AfterOnly(Middleware):
    def after_enqueue(self, task: Task[Any, Any], messages: Sequence[Message]) -> None: ...


class WorkerOnly(Middleware):
    def before_process(self, task: Task[Any, Any], message: Message) -> None: ...


@pytest.mark.parametrize(
    ("middleware", "hooked"),
    [
        ([], False),
        ([Retries()], False),
        ([WorkerOnly()], False),
        ([AfterOnly()], True),
        ([Recorder()], True),
        ([Tracing()], True),  # decides per send whether a tracer provider is set
        (default_middleware(), True),
    ],
)
def test_hooks_say_whether_any_middleware_hooks_sending(
    middleware: list[Middleware], hooked: bool
) -> None:
    assert Hooks(middleware).on_enqueue is hooked


def test_tracing_without_a_tracer_provider_leaves_the_send_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the default middleware and no tracer provider anywhere (OpenTelemetry not set up)
    configured = False
    monkeypatch.setattr(telemetry, "tracing_configured", lambda: configured)
    hooks = Hooks(default_middleware())
    # Then a send skips the hooks (and the Message objects they take) entirely
    assert hooks.on_enqueue and not hooks.sending()
    # and once a provider is set (by the app, at any time), sends are traced again
    configured = True
    assert hooks.sending()
    from opentelemetry.sdk.trace import TracerProvider

    assert Hooks([Tracing(tracer_provider=TracerProvider())]).sending()
    assert Hooks([AfterOnly()]).sending()  # other middleware are always asked


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@given(
    args=st.lists(JSON, max_size=4),
    kwargs=st.dictionaries(st.text(max_size=6), JSON, max_size=3),
    options=st.sampled_from([{}, {"timeout": 5.0}, {"timeout": 1.0, "dedupe_key": "k"}]),
)
def test_the_lean_envelope_is_the_bytes_a_message_encodes(
    args: list[Any], kwargs: dict[str, Any], options: dict[str, Any]
) -> None:
    message = Message(new_message_id(), "t.name", "q", args, kwargs, 1.5, options=options)
    lean = encode_envelope(message.id, "t.name", "q", tuple(args), kwargs, 1.5, 0, {}, options)
    assert lean == message.encode()
    assert Message.decode(lean) == message


def test_an_id_from_the_clock_sorts_by_it_and_is_unique() -> None:
    ids = [message_id_at(1_700_000_000_123_000_000 + i * 1_000_000) for i in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert ids[0][:12] == f"{1_700_000_000_123:012x}"


class FakeBroker:
    """What the producer hands to Redis (nothing is sent)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, list[Outgoing]]] = []

    def enqueue(
        self,
        queue: str,
        items: Sequence[Outgoing],
        *,
        task: str | None = None,
        priority_ms: int | None = None,
    ) -> list[str]:
        self.sent.append((queue, list(items)))
        return [message_id for message_id, *_ in items]


class FakeAsyncBroker:
    """The worker's side: a guard that refuses stores nothing (None)."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse

    async def enqueue(
        self, queue: str, items: Sequence[Outgoing], guard: Guard | None
    ) -> list[str] | None:
        return None if self.refuse else [message_id for message_id, *_ in items]


def _app(middleware: list[Middleware], **overrides: Any) -> tuple[App, FakeBroker]:
    settings = Settings(redis_url="redis://127.0.0.1:1/0").with_overrides(**overrides)
    app = App(settings=settings, middleware=middleware)
    broker = FakeBroker()
    app.producer._broker = broker  # type: ignore[assignment]
    return app, broker


def _stored(broker: FakeBroker) -> list[dict[str, Any]]:
    return [orjson.loads(body) for _, items in broker.sent for _, _, body, _ in items]


def test_with_no_middleware_hooking_sending_no_message_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app, broker = _app([Retries(), WorkerOnly()])

    @app.task(queue="q", name="pay")
    def pay(who: str, amount: int, *, note: str = "") -> None: ...

    built: list[Any] = []
    monkeypatch.setattr("shoal.task.Message", lambda *a, **k: built.append(a))
    handle = pay.enqueue("ann", 5, note="n")
    assert built == []
    [stored] = _stored(broker)
    assert stored["id"] == handle.id
    assert (stored["task"], stored["queue"]) == ("pay", "q")
    assert (stored["args"], stored["kwargs"]) == (["ann", 5], {"note": "n"})
    assert (stored["attempt"], stored["headers"], stored["options"]) == (0, {}, {})
    assert Message.decode(broker.sent[0][1][0][2]).id == handle.id


def test_middleware_hooking_sending_sees_every_kind_of_enqueue() -> None:
    recorder = Recorder()
    app, broker = _app([recorder])

    @app.task(queue="q", name="pay")
    def pay(who: str) -> None: ...

    one = pay.enqueue("ann")
    opted = pay.with_options(timeout=3, dedupe_key="d").enqueue("bob")
    many = pay.enqueue_many([("cy",), ("di",)])
    expected = [[one.id], [opted.id], [h.id for h in many]]
    assert recorder.contexts == expected
    assert recorder.after == expected
    stored = _stored(broker)
    assert all(s["headers"] == {"recorded": "yes"} for s in stored)
    assert stored[1]["options"] == {"timeout": 3.0, "dedupe_key": "d"}
    assert broker.sent[1][1][0][3] == "d"


def test_middleware_added_later_is_run_by_the_next_enqueue() -> None:
    app, broker = _app([])

    @app.task(queue="q", name="pay")
    def pay(who: str) -> None: ...

    pay.enqueue("before")
    recorder = Recorder()
    app.add_middleware(recorder)
    handle = pay.enqueue("after")
    assert recorder.after == [[handle.id]]
    assert [s["headers"] for s in _stored(broker)] == [{}, {"recorded": "yes"}]


def test_the_lean_path_seals_with_the_current_signer() -> None:
    app, broker = _app([], signing_keys=("k1",))

    @app.task(queue="q", name="pay")
    def pay(who: str) -> None: ...

    pay.enqueue("ann")
    app.signer = Signer(("k2",))
    pay.with_options(timeout=1).enqueue("bob")
    first, second = (body for _, items in broker.sent for _, _, body, _ in items)
    assert first.startswith(b"s1:") and second.startswith(b"s1:")
    assert orjson.loads(Signer(("k1",)).open(first))["args"] == ["ann"]
    assert orjson.loads(Signer(("k2",)).open(second))["args"] == ["bob"]


def test_the_lean_path_carries_per_message_options() -> None:
    app, broker = _app([])

    @app.task(queue="q", name="pay")
    def pay(who: str) -> None: ...

    pay.with_options(delay=2.5, timeout=4, dedupe_key="once").enqueue("ann")
    [(queue, [(_, delay_ms, body, dedupe)])] = broker.sent
    assert (queue, delay_ms, dedupe) == ("q", 2500, "once")
    assert orjson.loads(body)["options"] == {"timeout": 4.0, "dedupe_key": "once"}


@pytest.mark.parametrize("middleware", [[], [Recorder()]], ids=["lean", "hooked"])
def test_a_bad_argument_is_named_on_either_path(middleware: list[Middleware]) -> None:
    app, broker = _app(middleware, max_message_bytes=200)

    @app.task(queue="q", name="pay")
    def pay(*args: Any, **kwargs: Any) -> None: ...

    with pytest.raises(EnqueueError, match=r"argument args\[1\] \(set\) is not JSON"):
        pay.enqueue(1, {2})
    with pytest.raises(EnqueueError, match=r"argument blob= \(object\) is not JSON"):
        pay.enqueue(blob=object())
    with pytest.raises(EnqueueError, match=r"over the 200-byte limit \(largest argument: big="):
        pay.enqueue("small", big="x" * 300)
    assert broker.sent == []


@pytest.mark.parametrize("hooked", [False, True])
def test_send_async_runs_the_hooks_only_when_middleware_hooks_sending(hooked: bool) -> None:
    recorder = Recorder()
    app, _ = _app([recorder] if hooked else [])

    @app.task(queue="q", name="pay")
    def pay(who: str) -> None: ...

    def message() -> Message:
        return Message(new_message_id(), "pay", "q", ["x"], {}, 0.0)

    async def send(broker: FakeAsyncBroker, sent: Message) -> list[str] | None:
        return await app.producer.send_async(broker, pay, [sent], None)  # type: ignore[arg-type]

    stored, refused = message(), message()
    assert asyncio.run(send(FakeAsyncBroker(), stored)) == [stored.id]
    assert asyncio.run(send(FakeAsyncBroker(refuse=True), refused)) is None
    if hooked:
        assert recorder.contexts == [[stored.id], [refused.id]]
        assert recorder.after == [[stored.id]]  # nothing stored, no after_enqueue
    assert stored.headers == ({"recorded": "yes"} if hooked else {})
