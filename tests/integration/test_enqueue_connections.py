"""The producer's enqueue connections (:class:`shoal.protocol.direct.DirectScripts`): kept
between calls, yet a script Redis forgot is loaded again, a connection Redis closed while idle
is replaced before anything is sent, threads and forked children each use their own."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import pytest
import redis

from shoal import App, EnqueueOutcomeUnknown
from shoal.protocol.direct import DirectScripts


def _stored(client: redis.Redis, app: App, queue: str) -> tuple[int, int]:
    """(messages stored, tokens waiting) of ``queue``."""
    keys = app.broker.keys(queue)
    return int(client.hlen(keys.messages)), int(client.llen(keys.waiting))


@pytest.mark.every_topology
def test_an_enqueue_after_redis_forgot_its_scripts_loads_them_and_stores_once(
    make_app: Callable[..., App], topology: object
) -> None:
    app = make_app()

    @app.task(queue="forgot")
    def job(n: int) -> None: ...

    job.enqueue(1)
    admin = topology.admin()  # type: ignore[attr-defined]
    admin.script_flush()  # a restarted Redis (or SCRIPT FLUSH): EVALSHA answers NOSCRIPT

    second = job.enqueue(2)

    stats = app.measure("forgot")
    assert (stats.waiting, stats.enqueued) == (2, 2)
    assert app.broker.whereabouts("forgot", second.id) == "stored"


def test_a_connection_redis_closed_while_idle_is_replaced_before_sending(
    app: App, redis_client: redis.Redis
) -> None:
    @app.task(queue="idle")
    def job(n: int) -> None: ...

    job.enqueue(1)
    # Given Redis closed the producer's connections while it was idle (a timeout, CLIENT KILL)
    killed = redis_client.client_kill_filter(_type="normal", skipme=True)
    assert killed >= 1

    # When it enqueues again, the dead connection is noticed before the send: no "outcome
    # unknown", nothing sent twice
    handle = job.enqueue(2)

    assert _stored(redis_client, app, "idle") == (2, 2)
    assert app.broker.whereabouts("idle", handle.id) == "stored"


def test_an_enqueue_failing_mid_command_is_not_resent_and_its_connection_not_reused(
    app: App, redis_client: redis.Redis
) -> None:
    @app.task(queue="mid")
    def job(n: int) -> None: ...

    job.enqueue(0)
    direct = app.broker._direct
    assert isinstance(direct, DirectScripts)
    [conn] = direct.idle

    # Given a connection that fails once the script was written (the reply is lost)
    read = conn.read_response

    def lose_the_reply(*args: object, **kwargs: object) -> object:
        read(*args, **kwargs)
        raise redis.ConnectionError("reply lost")

    conn.read_response = lose_the_reply  # type: ignore[method-assign]
    with pytest.raises(EnqueueOutcomeUnknown):
        job.enqueue(1)

    # Then it ran once, the connection went back to the pool, and the next enqueue is fine
    assert _stored(redis_client, app, "mid") == (2, 2)
    assert conn not in direct.idle
    del conn.read_response
    job.enqueue(2)
    assert _stored(redis_client, app, "mid") == (3, 3)


def test_threads_enqueueing_at_once_each_store_every_message(
    app: App, redis_client: redis.Redis
) -> None:
    @app.task(queue="threads")
    def job(thread: int, n: int) -> None: ...

    ids: list[str] = []
    lock = threading.Lock()

    def produce(thread: int) -> None:
        mine = [job.enqueue(thread, n).id for n in range(50)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=produce, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(set(ids)) == 400
    assert _stored(redis_client, app, "threads") == (400, 400)
    direct = app.broker._direct
    assert direct is not None and 1 <= len(direct.idle) <= 8  # one per concurrent caller


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")
def test_a_forked_child_enqueues_on_connections_of_its_own(
    app: App, redis_client: redis.Redis
) -> None:
    @app.task(queue="fork")
    def job(n: int) -> None: ...

    job.enqueue(0)
    direct = app.broker._direct
    assert direct is not None and len(direct.idle) == 1
    parent_conn = direct.idle[0]

    pid = os.fork()
    if pid == 0:  # the child: the parent's socket must not be shared
        code = 1
        try:
            if direct.idle == []:
                job.enqueue(1)
                code = 0 if parent_conn not in direct.idle else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    job.enqueue(2)  # the parent's connection is still in step
    assert direct.idle == [parent_conn]
    assert _stored(redis_client, app, "fork") == (3, 3)


def test_a_pool_limited_to_one_connection_still_enqueues_to_a_new_queue(
    redis_url: str, key_prefix: str
) -> None:
    """A kept connection is one the pool can no longer lend (``?max_connections=1``): such a
    pool keeps none, and every command shares its one connection as before."""
    app = App(redis_url=f"{redis_url}?max_connections=1", key_prefix=key_prefix)

    @app.task(queue="one-a")
    def a() -> None: ...

    @app.task(queue="one-b")
    def b() -> None: ...

    try:
        a.enqueue()
        b.enqueue()  # a new queue: registered through the pool first
        assert app.measure("one-a").waiting == app.measure("one-b").waiting == 1
    finally:
        app.close()
