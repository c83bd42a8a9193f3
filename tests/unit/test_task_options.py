"""Task declaration: options are checked when the decorator runs, not when a message arrives."""

from __future__ import annotations

import pytest

from shoal import App, ConfigurationError


@pytest.fixture
def app() -> App:
    return App(redis_url="redis://127.0.0.1:1/0")


def test_unknown_option_is_refused_naming_it(app: App) -> None:
    with pytest.raises(ConfigurationError) as info:

        @app.task(max_retires=3)
        def typo() -> None: ...

    assert "max_retires" in str(info.value)
    assert "max_retries" in str(info.value), "the error lists the accepted options"
    assert app.tasks == {}


def test_known_options_are_accepted(app: App) -> None:
    @app.task(queue="q", max_retries=2, min_backoff=0.5, timeout=3, store_result=True)
    def ok() -> int:
        return 1

    assert app.tasks[ok.name] is ok
    assert ok.queue == "q"
    assert ok.options["timeout"] == 3.0
    assert ok.store_result is True
    assert ok.options["max_retries"] == 2
    assert ok() == 1, "calling a task runs it here"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": "3"}, "max_retries"),
        ({"retry_on": ValueError}, "retry_on"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_option_values_are_refused(app: App, options: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        app.task(**options)(lambda: None)


def test_a_task_name_is_declared_once(app: App) -> None:
    app.task(name="dup")(lambda: None)
    with pytest.raises(ConfigurationError, match="dup"):
        app.task(name="dup")(lambda: None)


def test_default_name_and_queue(app: App) -> None:
    @app.task
    def plain() -> None: ...

    assert plain.name == f"{__name__}.test_default_name_and_queue.<locals>.plain"
    assert plain.queue == app.settings.default_queue
    assert "timeout" not in plain.options, "no timeout given: the queue/app default applies"
