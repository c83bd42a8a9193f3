"""The App and its Producer share one truth: what is replaced on the App is what sending uses."""

from __future__ import annotations

import pytest

from shoal import App, EnqueueError, Settings
from shoal.errors import BadSignature
from shoal.message import Message, new_message_id
from shoal.signing import Signer


def _app() -> App:
    return App(settings=Settings(redis_url="redis://127.0.0.1:1/0"), middleware=[])


def _message(task_name: str, payload: str = "x") -> Message:
    return Message(new_message_id(), task_name, "q", [payload], {}, 0.0)


def test_a_signer_assigned_to_the_app_seals_what_its_tasks_send() -> None:
    app = _app()

    @app.task(queue="q", name="pay")
    def pay(who: str) -> None: ...

    app.signer = Signer(("new-key",))
    [(_, _, body, _)] = pay.producer.encode(pay, [_message("pay")])
    assert Signer(("new-key",)).open(body)  # sealed with the App's current signer
    with pytest.raises(BadSignature):
        Signer(("other",)).open(body)
    assert app.dlq("q").signer is app.signer


def test_settings_assigned_to_the_app_apply_to_the_next_send() -> None:
    app = _app()

    @app.task(queue="q", name="pay")
    def pay(who: str) -> None: ...

    app.settings = app.settings.with_overrides(max_message_bytes=64)
    with pytest.raises(EnqueueError, match="over the 64-byte limit"):
        pay.producer.encode(pay, [_message("pay", "x" * 100)])


def test_middleware_added_later_is_what_sending_runs() -> None:
    app = _app()
    before = app.hooks
    from shoal.middleware import Retries

    app.add_middleware(Retries())
    assert app.hooks is app.producer.hooks is not before
