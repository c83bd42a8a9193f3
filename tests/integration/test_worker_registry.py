"""The worker registry's wire format: ``{p}:workers`` scores are milliseconds, like every other
time Shoal stores (the key table in shoal/protocol/keys.py says so)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from click.testing import CliRunner

from shoal import App
from shoal.cli import cli
from shoal.protocol import AsyncBroker
from shoal.protocol.keys import worker_key, workers_key
from shoal.protocol.registry import UNREADABLE, WorkerRegistration


def test_a_registration_is_scored_with_its_heartbeat_in_milliseconds(
    make_app: Callable[..., App],
) -> None:
    app = make_app()
    broker = AsyncBroker(app.settings)

    async def register() -> None:
        try:
            await broker.register_worker(WorkerRegistration(id="w-1"), ttl_s=30)
        finally:
            await broker.close()

    before_ms = int(time.time() * 1000)
    asyncio.run(register())
    after_ms = int(time.time() * 1000)

    score = app.broker.redis.zscore(workers_key(app.settings.key_prefix), "w-1")
    assert score is not None
    assert score == int(score)  # whole milliseconds
    assert before_ms <= score <= after_ms  # in seconds it would be a thousand times smaller
    assert [w.id for w in app.broker.workers()] == ["w-1"]


def test_a_registration_that_is_not_one_is_listed_not_fatal(
    make_app: Callable[..., App], redis_url: str, key_prefix: str
) -> None:
    # Given a live worker, and two entries written into the registry by something else: bytes
    # that are not JSON under an id that is not UTF-8, and JSON with fields of the wrong type
    app = make_app()
    r = app.broker.redis
    prefix = app.settings.key_prefix
    r.zadd(workers_key(prefix), {"good": 1, b"\xff\xfe": 2, "typed": 3})
    r.set(worker_key(prefix, "good"), WorkerRegistration(id="good", pid=7).to_json())
    r.set(worker_key(prefix, "").encode() + b"\xff\xfe", b"\x80 not json")
    r.set(worker_key(prefix, "typed"), b'{"id": "typed", "pid": "seven"}')

    # When they are listed, by the API and by the CLI
    workers = {w.id: w for w in app.broker.workers()}
    shown = CliRunner().invoke(
        cli,
        ["info", "--workers"],
        env={"SHOAL_REDIS_URL": redis_url, "SHOAL_KEY_PREFIX": key_prefix},
    )

    # Then the live worker reads whole, and the others are listed as unreadable, by a
    # printable name, instead of ending the listing
    assert workers["good"].pid == 7
    assert workers["\\xff\\xfe"].version == UNREADABLE
    assert workers["typed"].version == UNREADABLE
    assert shown.exit_code == 0, shown.output
    assert "good" in shown.output  # (cells are cut to the terminal's width: issue 17)
