"""Backoff: exponential with full jitter, never below the minimum nor above the cap."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from shoal.middleware.retries import backoff_s


@given(
    attempt=st.integers(min_value=0, max_value=200),
    min_s=st.floats(min_value=0.001, max_value=100),
    max_s=st.floats(min_value=0.001, max_value=10_000),
    seed=st.integers(),
)
def test_backoff_stays_within_bounds(attempt: int, min_s: float, max_s: float, seed: int) -> None:
    delay = backoff_s(attempt, min_s, max_s, random.Random(seed))
    ceiling = max(min_s, min(max_s, min_s * 2 ** max(0, attempt - 1)))
    assert min_s <= delay <= ceiling


def test_first_retry_waits_the_minimum() -> None:
    assert backoff_s(1, 0.5, 60, random.Random(1)) == 0.5


def test_backoff_grows_then_is_capped() -> None:
    rng = random.Random(7)
    samples = {a: [backoff_s(a, 1.0, 10.0, rng) for _ in range(500)] for a in (2, 3, 4, 10)}
    assert max(samples[2]) <= 2.0
    assert max(samples[3]) <= 4.0
    assert max(samples[3]) > 2.0, "attempt 3 can wait longer than attempt 2's ceiling"
    assert max(samples[10]) <= 10.0
    assert max(samples[10]) > 8.0, "jitter spreads up to the cap"
    assert len(set(samples[4])) > 400, "the delay is jittered"
