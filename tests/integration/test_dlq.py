"""The dead-letter queue under attack: forgeries are never replayed (so never re-signed), and
huge poison bodies are stored, logged and listed as bounded excerpts. Real Redis throughout.

Entries live in two hashes: the bounded summary in ``dead:entries`` (what ``list`` reads) and
the message body in ``dead:bodies`` (what ``show`` and ``replay`` read)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import redis
from click.testing import CliRunner
from processes import WorkerProcess, runs

from helpers import wait_for
from shoal import App
from shoal.cli import cli
from shoal.dead_letter import (
    ERROR_BYTES,
    EXCERPT_BYTES,
    TRACEBACK_BYTES,
    dead_letter_entry,
)
from shoal.message import Message, new_message_id
from shoal.reasons import REASONS
from topologies import Topology

TEN_MIB = 10 * 1024 * 1024


def shoal(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``python -m shoal`` command against this test's Redis."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    full.update(env, COLUMNS="250")
    return subprocess.run(
        [sys.executable, "-m", "shoal", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, key_prefix: str) -> None:
    """Point in-process ``shoal`` commands (CliRunner) at this test's Redis and prefix."""
    for name in [k for k in os.environ if k.startswith("SHOAL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("SHOAL_REDIS_URL", redis_url)
    monkeypatch.setenv("SHOAL_KEY_PREFIX", key_prefix)
    monkeypatch.setenv("COLUMNS", "250")


def dead_json(app: App, queue: str, message_id: str) -> dict[str, Any]:
    raw = app.broker.redis.hget(app.broker.keys(queue).dead_entries, message_id)
    assert raw is not None, f"{message_id} is not in the DLQ"
    entry: dict[str, Any] = orjson.loads(raw)
    return entry


def hash_sizes(client: redis.Redis | redis.RedisCluster, key: str) -> dict[str, int]:
    """Field → value length of a hash, read with HSTRLEN (never the values themselves)."""
    return {f.decode(): int(client.hstrlen(key, f)) for f in client.hkeys(key)}


# --- replay never re-signs what failed verification -----------------------------------------


def test_forged_message_replayed_from_the_cli_is_refused_and_never_runs(
    make_app: Callable[..., App],
    redis_url: str,
    redis_client: redis.Redis,
    key_prefix: str,
    worker_process: Callable[..., WorkerProcess],
) -> None:
    env = {"SHOAL_REDIS_URL": redis_url, "SHOAL_KEY_PREFIX": key_prefix}
    signed = make_app(signing_keys=("k1",))
    forger = make_app()  # no keys: its messages are unsigned
    keys = signed.broker.keys("delivery")

    # Given a worker (a real process) that requires signatures, and a forged message it refused
    proc = worker_process(
        redis_url, "--queues", "delivery", "--concurrency", "1", SHOAL_SIGNING_KEYS="k1", **env
    )
    forged = forger.remote("record", queue="delivery").enqueue("forged")
    wait_for(lambda: signed.measure("delivery").dead == 1, timeout=30, message="a dead letter")
    assert dead_json(signed, "delivery", forged.id)["reason"] == "bad_signature"

    # When the operator replays every dead letter from the CLI, with the signing keys at hand
    replay = shoal({**env, "SHOAL_SIGNING_KEYS": "k1"}, "dlq", "replay", "delivery", "--all")

    # Then the forgery is refused, named with its reason, and left in the DLQ
    assert replay.returncode == 0, replay.stderr
    assert "replayed 0 message(s)" in replay.stdout
    assert f"skipped {forged.id}: refused" in replay.stdout and "bad_signature" in replay.stdout
    assert "shoal dlq purge delivery" in replay.stdout  # what the operator may do instead
    assert redis_client.zscore(keys.dead, forged.id) is not None
    assert not redis_client.hexists(keys.messages, forged.id)
    # and it never runs: a genuine message enqueued after it runs, on one slot, alone
    signed.remote("record", queue="delivery").enqueue("genuine")
    wait_for(lambda: "genuine" in runs(redis_client, key_prefix), timeout=30, message=proc.log())
    assert "forged" not in runs(redis_client, key_prefix)
    assert signed.measure("delivery").dead == 1

    # And the operator may still show it (reason, meaning, body excerpt with its size) ...
    show = shoal(env, "dlq", "show", "delivery", forged.id)
    assert show.returncode == 0, show.stderr
    assert "bad_signature" in show.stdout and REASONS["bad_signature"] in show.stdout
    assert "not replayable" in show.stdout
    assert '"forged"' in show.stdout  # the excerpt of what was stored
    # ... and purge it by id
    purge = shoal(env, "dlq", "purge", "delivery", forged.id)
    assert purge.returncode == 0, purge.stderr
    assert "purged 1 dead letter(s)" in purge.stdout
    assert redis_client.zcard(keys.dead) == 0
    assert redis_client.hlen(keys.dead_entries) == 0
    assert redis_client.hlen(keys.dead_bodies) == 0


@pytest.mark.parametrize("reason", ["bad_signature", "undecodable", "too_large"])
def test_replay_from_python_refuses_what_failed_verification_or_decoding(
    make_app: Callable[..., App], worker: Any, reason: str
) -> None:
    app = make_app(signing_keys=("k1",), max_message_bytes=2000)
    ran: list[str] = []

    @app.task(queue="q", name="pay")
    def pay(who: str) -> None:
        ran.append(who)

    keys = app.broker.keys("q")
    forger = make_app(max_message_bytes=100_000)
    if reason == "bad_signature":  # an unsigned envelope: decodes fine, verified by nobody
        message_id = forger.remote("pay", queue="q").enqueue("mallory").id
    elif reason == "too_large":  # a well signed message over the worker's limit
        big = make_app(signing_keys=("k1",), max_message_bytes=100_000)
        message_id = big.remote("pay", queue="q").enqueue("x" * 5000).id
    else:
        message_id = "notjson1"
        # well signed, but not an envelope
        app.broker.redis.hset(keys.messages, message_id, app.signer.seal(b"{not json"))
        app.broker.redis.lpush(keys.waiting, f"0:{message_id}")
    worker(app, ["q"])
    assert dead_json(app, "q", message_id)["reason"] == reason

    report = app.dlq("q").replay([message_id])

    assert report.replayed == []
    assert reason in report.skipped[message_id] and "refused" in report.skipped[message_id]
    assert app.dlq("q").replay().skipped.keys() == {message_id}  # replay(all) too
    worker(app, ["q"])
    assert ran == [] and len(app.dlq("q")) == 1
    assert not app.broker.redis.hexists(keys.messages, message_id)


def test_replay_refuses_an_id_mismatch_and_any_envelope_not_stored_under_its_id(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()
    ran: list[str] = []

    @app.task(queue="q", name="pay")
    def pay(who: str) -> None:
        ran.append(who)

    keys = app.broker.keys("q")
    client = app.broker.redis
    for key_id, reason in (("spoof1", "id_mismatch"), ("spoof2", "retries_exhausted")):
        # an envelope naming another message's id, set aside under the key it was fetched by
        other = Message(new_message_id(), "pay", "q", ["eve"], {}, 0.0)
        entry, body = dead_letter_entry(key_id, "q", other, reason, RuntimeError("no"))
        client.zadd(keys.dead, {key_id: 1})
        client.hset(keys.dead_entries, key_id, entry)
        client.hset(keys.dead_bodies, key_id, body)

    report = app.dlq("q").replay()

    assert report.replayed == []
    assert "id_mismatch" in report.skipped["spoof1"]
    assert "envelope id" in report.skipped["spoof2"]
    worker(app, ["q"])
    assert ran == [] and len(app.dlq("q")) == 2


def test_replayable_entries_still_replay_with_signing_keys(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app(signing_keys=("k1",))
    healed = {"now": False}

    @app.task(queue="q", name="pay", max_retries=0, store_result=True)
    def pay(who: str) -> str:
        if not healed["now"]:
            raise RuntimeError("partner down")
        return who

    handle = pay.enqueue("alice")
    worker(app, ["q"])
    entry = app.dlq("q").get(handle.id)
    assert entry is not None and entry.stored == "envelope" and entry.refusal is None
    healed["now"] = True
    assert app.dlq("q").replay().replayed == [handle.id]
    worker(app, ["q"])
    assert handle.result(timeout=5) == "alice"
    assert app.broker.redis.hlen(app.broker.keys("q").dead_bodies) == 0


def test_a_dead_letter_written_or_edited_in_redis_is_never_replayed_signed(
    make_app: Callable[..., App], worker: Any
) -> None:
    """Signing defends against producers that can write to Redis: they can write DLQ entries
    too. A replay acts only on a stored body the worker sealed, whatever the summary says."""
    app = make_app(signing_keys=("k1",))
    ran: list[str] = []

    @app.task(queue="q", name="pay", max_retries=0)
    def pay(who: str) -> None:
        if who == "alice":
            raise RuntimeError("partner down")
        ran.append(who)

    keys, client = app.broker.keys("q"), app.broker.redis
    genuine = pay.enqueue("alice")
    worker(app, ["q"])
    # Given a forged entry written from scratch, and the genuine entry's body swapped
    forged = Message("forged1", "pay", "q", ["mallory"], {}, 1.0)
    summary, _ = dead_letter_entry("forged1", "q", forged, "retries_exhausted", ValueError("x"))
    client.zadd(keys.dead, {"forged1": 1})
    client.hset(keys.dead_entries, "forged1", summary)
    client.hset(keys.dead_bodies, "forged1", forged.encode())
    swapped = Message(genuine.id, "pay", "q", ["mallory"], {}, 1.0)
    client.hset(keys.dead_bodies, genuine.id, swapped.encode())

    # When the operator replays everything
    report = app.dlq("q").replay()

    # Then nothing comes back, each refusal says why, and mallory never runs
    assert report.replayed == []
    assert set(report.skipped) == {"forged1", genuine.id}
    assert all("does not verify" in why for why in report.skipped.values())
    worker(app, ["q"])
    assert ran == []


def test_an_entry_that_is_not_a_summary_is_listed_as_unreadable_and_never_replayed(
    make_app: Callable[..., App], worker: Any
) -> None:
    app = make_app()

    @app.task(queue="q", name="pay", max_retries=0)
    def pay() -> None:
        raise RuntimeError("down")

    genuine = pay.enqueue()
    worker(app, ["q"])
    keys = app.broker.keys("q")
    app.broker.redis.zadd(keys.dead, {"junk": 1, "no-id": 2})
    app.broker.redis.hset(keys.dead_entries, mapping={"junk": b"\xff{", "no-id": b"{}"})

    by_id = {e.id: e for e in app.dlq("q").entries()}
    assert by_id[genuine.id].reason != "unreadable"
    assert by_id["junk"].reason == by_id["no-id"].reason == "unreadable"
    report = app.dlq("q").replay(["junk", "no-id"])
    assert report.replayed == [] and set(report.skipped) == {"junk", "no-id"}
    assert app.dlq("q").purge(ids=["junk", "no-id"]) == 2


# --- bounded storage, logs and listing --------------------------------------------------------


def test_ten_mib_poison_is_stored_logged_and_listed_as_bounded_excerpts(
    make_app: Callable[..., App],
    worker: Any,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    key_prefix: str,
) -> None:
    app = make_app(max_message_bytes=16 * 1024 * 1024)  # let 10 MiB reach the decoder

    @app.task(queue="q", name="boom", max_retries=1, min_backoff=0.01, max_backoff=0.01)
    def boom() -> None:
        raise RuntimeError("y" * 1_000_000)

    keys, client = app.broker.keys("q"), app.broker.redis
    huge = b"x" * TEN_MIB
    # Given a 10 MiB waiting token (not "<ms>:<id>"), a 10 MiB undecodable stored body, and a
    # task whose exception message is a megabyte (retried once, then dead)
    client.lpush(keys.waiting, huge)
    client.hset(keys.messages, "bigbody", huge)
    client.lpush(keys.waiting, b"0:bigbody")
    failing = boom.enqueue()

    # When a worker drains them
    with caplog.at_level(logging.INFO, logger="shoal"):
        worker(app, ["q"])

    # Then the worker log carries bounded excerpts only
    longest = max(len(r.getMessage()) for r in caplog.records)
    assert longest <= 3 * ERROR_BYTES, f"a {longest}-character log line"
    # and every DLQ entry and body is bounded, in Redis, with the real size recorded
    ids = [i.decode() for i in client.zrange(keys.dead, 0, -1)]
    assert len(ids) == 3 and "bigbody" in ids and failing.id in ids
    (token_id,) = set(ids) - {"bigbody", failing.id}
    assert len(token_id) <= 128  # the token is not its own id: it is 10 MiB
    entries = hash_sizes(client, keys.dead_entries)
    bodies = hash_sizes(client, keys.dead_bodies)
    assert max(entries.values()) <= ERROR_BYTES + TRACEBACK_BYTES + 2048, entries
    assert bodies[token_id] == bodies["bigbody"] == EXCERPT_BYTES
    assert bodies[failing.id] <= ERROR_BYTES + 1024  # the whole envelope (last_error bounded)
    assert dead_json(app, "q", token_id)["size"] == TEN_MIB
    assert dead_json(app, "q", token_id)["reason"] == "undecodable"
    assert dead_json(app, "q", "bigbody")["size"] == TEN_MIB
    assert dead_json(app, "q", "bigbody")["reason"] == "undecodable"
    boom_entry = dead_json(app, "q", failing.id)
    assert len(boom_entry["error"].encode()) <= ERROR_BYTES
    assert len(boom_entry["traceback"].encode()) <= TRACEBACK_BYTES
    assert "RuntimeError" in boom_entry["traceback"]  # the end of a traceback is kept

    # And listing never reads the bodies: with the bodies hash made unreadable (WRONGTYPE for
    # any hash read), entries() and `shoal dlq list` still work
    cli_env(monkeypatch, redis_url, key_prefix)
    client.rename(keys.dead_bodies, keys.dead_bodies + ".saved")
    client.set(keys.dead_bodies, "not a hash")
    assert {e.id for e in app.dlq("q").entries()} == set(ids)
    listed = CliRunner().invoke(cli, ["dlq", "list", "q"])
    assert listed.exit_code == 0, listed.output
    assert "bigbody" in listed.output and token_id in listed.output
    assert "undecodable" in listed.output and "retries_exhausted" in listed.output
    client.delete(keys.dead_bodies)
    client.rename(keys.dead_bodies + ".saved", keys.dead_bodies)

    # And show prints the excerpt with the real size
    shown = CliRunner().invoke(cli, ["dlq", "show", "q", "bigbody"])
    assert shown.exit_code == 0, shown.output
    assert f"first {EXCERPT_BYTES} of {TEN_MIB} bytes" in shown.output
    assert len(shown.output) < 3 * EXCERPT_BYTES


# --- purging and trimming remove both halves --------------------------------------------------


@pytest.mark.every_topology
def test_purge_by_id_by_age_and_trimming_delete_entries_and_bodies(
    make_app: Callable[..., App], worker: Any, topology: Topology
) -> None:
    app = make_app(dlq_max_entries=3)

    @app.task(queue="q", max_retries=0)
    def fails(n: int) -> None:
        raise RuntimeError(f"no {n}")

    handles = [fails.enqueue(n) for n in range(5)]
    worker(app, ["q"], concurrency=1)
    keys, client = app.broker.keys("q"), topology.admin()  # the app's user may not HKEYS
    dead = app.dlq("q")
    kept = set(dead.all_ids())
    assert len(kept) == 3 and kept <= {h.id for h in handles}
    assert set(hash_sizes(client, keys.dead_entries)) == kept
    assert set(hash_sizes(client, keys.dead_bodies)) == kept

    old = sorted(kept)[0]  # dead since 1970: the next dead-lettering trims it by age
    client.zadd(keys.dead, {old: 1})
    fails.enqueue(9)
    worker(app, ["q"])
    assert not client.hexists(keys.dead_entries, old) and not client.hexists(keys.dead_bodies, old)

    one, *rest = dead.all_ids()
    assert dead.purge(ids=[one, "not-there"]) == 1
    assert set(dead.all_ids()) == set(rest)
    assert dead.purge(older_than_s=3600, ids=rest) == 0  # too young
    assert dead.purge(older_than_s=3600) == 0
    assert dead.purge() == len(rest)
    assert client.hlen(keys.dead_entries) == client.hlen(keys.dead_bodies) == 0


def test_cli_purge_by_id_names_what_was_not_there(
    make_app: Callable[..., App],
    worker: Any,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    key_prefix: str,
) -> None:
    app = make_app()
    app.remote("nobody.defines.this", queue="q").enqueue()
    worker(app, ["q"])
    (gone,) = app.dlq("q").all_ids()
    cli_env(monkeypatch, redis_url, key_prefix)
    result = CliRunner().invoke(cli, ["dlq", "purge", "q", gone, "nope"])
    assert result.exit_code == 0, result.output
    assert "purged 1 dead letter(s) from q" in result.output
    assert "not in the dead-letter queue: nope" in result.output
    assert len(app.dlq("q")) == 0


# --- entries written before bodies were split ------------------------------------------------


def legacy_entry(message_id: str, reason: str, message: str) -> bytes:
    """An entry as workers wrote it before the bodies hash: the message inside the JSON."""
    return orjson.dumps(
        {
            "id": message_id,
            "queue": "q",
            "task": "pay",
            "reason": reason,
            "error": "RuntimeError: down",
            "exception_type": "RuntimeError",
            "traceback": "",
            "attempts": 1,
            "enqueued_at": 1.0,
            "failed_at": 2.0,
            "traceparent": None,
            "message": message,
            "workflow": None,
        }
    )


def test_old_format_entries_still_show_and_replay(
    make_app: Callable[..., App],
    worker: Any,
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    key_prefix: str,
) -> None:
    app = make_app(signing_keys=("k1",))
    ran: list[str] = []

    @app.task(queue="q", name="pay")
    def pay(who: str) -> None:
        ran.append(who)

    keys, client = app.broker.keys("q"), app.broker.redis
    good = Message("old1", "pay", "q", ["alice"], {}, 1.0, attempt=3)
    forged = Message("old2", "pay", "q", ["mallory"], {}, 1.0)
    client.zadd(keys.dead, {"old1": 1, "old2": 2})
    client.hset(keys.dead_entries, "old1", legacy_entry("old1", "retries_exhausted", _s(good)))
    client.hset(keys.dead_entries, "old2", legacy_entry("old2", "bad_signature", _s(forged)))

    entry = app.dlq("q").get("old1")
    assert entry is not None and entry.message == _s(good) and entry.size is None
    cli_env(monkeypatch, redis_url, key_prefix)
    shown = CliRunner().invoke(cli, ["dlq", "show", "q", "old1"])
    assert shown.exit_code == 0, shown.output
    assert '"alice"' in shown.output and "retries_exhausted" in shown.output
    assert {e.id for e in app.dlq("q").entries()} == {"old1", "old2"}

    # With signing keys, an entry stored before bodies were sealed cannot be verified
    sealed_report = app.dlq("q").replay()
    assert sealed_report.replayed == []
    assert "does not verify" in sealed_report.skipped["old1"]
    assert "bad_signature" in sealed_report.skipped["old2"]

    # Without keys (no signing in use), the old entry replays as before
    unsigned = make_app()
    unsigned.tasks.update(app.tasks)
    report = unsigned.dlq("q").replay()

    assert report.replayed == ["old1"]
    assert "bad_signature" in report.skipped["old2"]
    worker(unsigned, ["q"])
    assert ran == ["alice"]
    assert app.dlq("q").all_ids() == ["old2"]


def _s(message: Message) -> str:
    return message.encode().decode()
