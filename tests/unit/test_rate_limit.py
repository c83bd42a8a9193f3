"""Rate limits: what a task or a Queue may say, and what reaches Redis."""

from __future__ import annotations

import pytest

from shoal import App
from shoal.errors import ConfigurationError
from shoal.queue_defaults import from_queue_spec, validate
from shoal.rate_limit import Rate, parse_rate


@pytest.mark.parametrize(
    ("text", "rate", "interval_ms"),
    [
        ("20/s", Rate(20, "s"), 50.0),
        (" 100 / m ", Rate(100, "m"), 600.0),
        ("1.5/h", Rate(1.5, "h"), 2_400_000.0),
    ],
)
def test_rates_parse_to_their_spacing(text: str, rate: Rate, interval_ms: float) -> None:
    assert parse_rate(text, "task 't'") == rate
    assert rate.interval_ms == pytest.approx(interval_ms)


@pytest.mark.parametrize("text", ["20", "0/s", "20/d", "-1/s", "fast", 20, None, "nan/s"])
def test_what_is_not_a_rate_is_refused_with_the_form_to_use(text: object) -> None:
    with pytest.raises(ConfigurationError, match=r"task 't'.*N/s, N/m or N/h"):
        parse_rate(text, "task 't'")


def test_a_task_rate_limit_is_checked_and_kept_canonical() -> None:
    app = App(redis_url="redis://127.0.0.1:1/0")

    @app.task(rate_limit="20.0 /s")
    def paced() -> None: ...

    assert paced.options["rate_limit"] == "20/s"
    with pytest.raises(ConfigurationError, match="rate limit '20 per second'"):
        app.task(name="bad", rate_limit="20 per second")(lambda: None)


def test_a_queue_spec_rate_limit_becomes_the_queue_default_fetch_reads() -> None:
    spec = {"rateLimit": "1200/m", "defaults": {"maxRetries": 3}}
    assert validate("emails", from_queue_spec(spec)) == {"max_retries": "3", "rate_limit": "1200/m"}
    with pytest.raises(ConfigurationError, match="queue 'emails'"):
        validate("emails", {"rate_limit": "lots"})
