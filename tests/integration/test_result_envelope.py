"""The result envelope on a real Redis: the Lua scripts that share it with
:mod:`shoal.protocol.results` agree with it byte for byte.

``join.lua`` writes a group's gathered list as a success, which the Python reader must decode;
``workflow_failed.lua`` keeps a success by its first bytes, which the Python writer must start
with."""

from __future__ import annotations

import asyncio

import orjson
import redis

from shoal import App
from shoal.protocol import AsyncBroker, queue_keys
from shoal.protocol.results import (
    SUCCESS_PREFIX,
    decode_result,
    encode_failure,
    encode_success,
)


def test_a_group_result_written_by_join_lua_decodes_in_python(app: App) -> None:
    async def gather() -> None:
        broker = AsyncBroker(app.settings)
        try:
            await broker.start_group("q", "g1", 3, b"[]")  # nothing follows: it ends the workflow
            for index, value in enumerate([{"a": 1}, [2, "two"], None]):
                await broker.join("q", "g1", index, orjson.dumps(value), "wf1")  # as workflow.py
        finally:
            await broker.close()

    asyncio.run(gather())
    (raw,) = app.broker.stored_results("q", ["wf1"])
    assert raw is not None and raw.startswith(SUCCESS_PREFIX)
    stored = decode_result(raw)
    assert (stored.ok, stored.value, stored.error) == (True, [{"a": 1}, [2, "two"], None], None)


def test_workflow_failed_lua_keeps_a_python_success_and_replaces_a_failure(
    app: App, redis_client: redis.Redis
) -> None:
    key = queue_keys(app.settings.key_prefix, "q").result("wf2")
    late = encode_failure("member m failed", member="m", reason="retries_exhausted")

    async def fail() -> bool:
        broker = AsyncBroker(app.settings)
        try:
            return await broker.fail_workflow("q", "wf2", late)
        finally:
            await broker.close()

    redis_client.rpush(key, encode_success({"done": True}))
    assert asyncio.run(fail()) is False  # the success is kept
    assert decode_result(redis_client.lindex(key, 0)).value == {"done": True}  # type: ignore[arg-type]

    redis_client.delete(key)
    redis_client.rpush(key, encode_failure("an earlier failure"))
    assert asyncio.run(fail()) is True  # a failure is replaced
    stored = decode_result(redis_client.lindex(key, 0))  # type: ignore[arg-type]
    assert (stored.ok, stored.member, stored.reason) == (False, "m", "retries_exhausted")
