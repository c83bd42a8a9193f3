"""Helpers the tests import (``from helpers import wait_for``): tests/ is on sys.path."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 10.0,
    message: str = "condition",
    interval: float = 0.01,
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout`` s.

    Returns the truthy value. The short pause between polls is not a wait for a duration: the
    deadline is the only timing, and a condition that holds earlier returns earlier."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message} (last value: {last!r})")
        time.sleep(interval)
