"""Shoal, async tasks, with ``BENCH_FEATURE`` on (see :mod:`peers.shoal_features`)."""

from __future__ import annotations

from peers.shoal_features import build

app, work, Producer = build(asynchronous=True)
