"""Rate limits: ``@app.task(rate_limit="20/s")`` and ``Queue.spec.rateLimit`` (also ``/m``,
``/h``), held across every worker of the cluster.

Both keep a GCRA clock in Redis (``{p}:{q}:rate``: the theoretical arrival time of the next
start): starts are spaced evenly, ``1/rate`` apart, with no burst after an idle spell. A queue's
limit is applied by ``fetch.lua`` itself (it leases no more than the clock allows, and tells
the worker when the next start is due). A task's limit is applied when its message is leased
(``throttle.lua``): a message that may not start yet is put back as delayed, its start slot
reserved, so it waits in Redis and never holds a worker slot.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from shoal.errors import ConfigurationError

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_FORM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` starts per ``unit`` (``s``, ``m`` or ``h``)."""

    count: float
    unit: str

    @property
    def per_second(self) -> float:
        return self.count / UNITS[self.unit]

    @property
    def interval_ms(self) -> float:
        """Milliseconds between two starts."""
        return UNITS[self.unit] * 1000 / self.count

    def __str__(self) -> str:
        """The canonical form Redis stores (``fetch.lua`` parses it): ``20/s``, ``1.5/m``,
        ``1000000/h``: plain decimals, never an exponent."""
        digits = f"{self.count:.9f}".rstrip("0").rstrip(".")
        return f"{digits}/{self.unit}"


def parse_rate(text: object, what: str) -> Rate:
    """``"20/s"`` → Rate(20, "s"); a ConfigurationError naming ``what`` otherwise."""
    match = _FORM.match(text) if isinstance(text, str) else None
    count = float(match.group(1)) if match else 0.0
    if match is None or not math.isfinite(count) or float(f"{count:.9f}") <= 0:
        raise ConfigurationError(
            f"{what}: rate limit {text!r} is not a rate; write N/s, N/m or N/h with N > 0 "
            "(e.g. '20/s', '100/m', '1.5/h')"
        )
    return Rate(count, match.group(2))
