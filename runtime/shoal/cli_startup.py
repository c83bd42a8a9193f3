"""Checks the ``shoal`` command makes before it starts anything, each failing with one line that
says what was wrong and what to do: Redis answers (and is Redis), a port is free, arguments fit
the task's function.

Why a worker waits for Redis at start-up, and for how long: a worker started before its Redis
(a pod scheduled before the Redis pod is ready, a laptop's Redis not started yet) should come up
by itself once Redis does, without a screenful of warnings; one whose Redis never comes (a wrong
URL) should stop with a clear message rather than retry silently for ever, so Kubernetes shows
the pod as failing and restarts it with its own backoff. Once started, a worker rides out Redis
outages (the runtime reconnects with backoff and loses nothing): this wait is for start-up only.
"""

from __future__ import annotations

import inspect
import logging
import math
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from shoal.errors import BrokerError, ConfigurationError, EnqueueError, ShoalError
from shoal.redis_url import mask_url

if TYPE_CHECKING:
    from shoal.app import App

log = logging.getLogger("shoal.startup")

DEFAULT_WAIT_S = 60.0
"""How long ``shoal worker`` waits for Redis at start-up (``--wait-for-redis``)."""

FIRST_STEP_S = 0.5
LONGEST_STEP_S = 10.0


def is_redis_client_error(exc: BaseException) -> bool:
    """An exception of redis-py's own (a reply that is not RESP, a protocol error): told apart
    by its module, so the CLI need not import redis to catch it."""
    return type(exc).__module__.split(".")[0] == "redis"


def not_redis(url: str, exc: BaseException) -> ShoalError:
    return ConfigurationError(
        f"the server at {mask_url(url)} answered, but not as Redis ({exc}): SHOAL_REDIS_URL "
        "points at another service; check its host and port (Redis listens on 6379 by default)"
    )


def speaks_another_protocol(exc: BaseException) -> bool:
    """A reply that is not Redis's protocol at all (an HTTP server on that port), as opposed
    to Redis refusing a command (no permission, a read-only replica, out of memory)."""
    return type(exc).__name__ == "InvalidResponse" or "protocol error" in str(exc).lower()


def redis_refused(url: str, exc: BaseException) -> ShoalError:
    return ConfigurationError(
        f"Redis at {mask_url(url)} refused a command: {exc}. Check the user's ACL rules "
        "(`shoal redis-acl` prints the rule Shoal needs), that the URL names the primary and "
        "not a read-only replica, and the server's memory"
    )


def explain_redis_error(url: str, exc: BaseException) -> ShoalError:
    """The one-line error for a redis-py error that reached the CLI."""
    return not_redis(url, exc) if speaks_another_protocol(exc) else redis_refused(url, exc)


def wait_for_redis(app: App, wait_s: float, sleep: Callable[[float], None] = time.sleep) -> None:
    """Return once Redis answers a PING; until then log one line per try, backing off from
    0.5 s to 10 s, for at most ``wait_s`` seconds (``inf``: for ever), then raise a
    ShoalError saying so. A server that answers but is not Redis raises at once."""
    url = app.settings.redis_url
    deadline = time.monotonic() + (wait_s if wait_s > 0 else 0.0)
    step, tries = FIRST_STEP_S, 0
    while True:
        tries += 1
        try:
            app.broker.ping()
            if tries > 1:
                log.info("Redis at %s answers; starting", mask_url(url))
            return
        except BrokerError as exc:
            left = deadline - time.monotonic()
            if left <= 0 or _refused_us(exc):
                waited = "" if wait_s <= 0 else f" (waited {wait_s:g}s, {tries} tries)"
                raise BrokerError(
                    f"{str(exc).rstrip('.')}{waited}; --wait-for-redis SECONDS waits longer "
                    "at start-up"
                ) from None
            pause = min(step, left)
            log.warning(
                "Redis at %s does not answer yet; trying again in %.1fs (%s)",
                mask_url(url),
                pause,
                "waiting for ever" if math.isinf(left) else f"giving up in {math.ceil(left)}s",
            )
            sleep(pause)
            step = min(step * 2, LONGEST_STEP_S)
        except Exception as exc:
            if is_redis_client_error(exc):
                raise explain_redis_error(url, exc) from None
            raise


def _refused_us(exc: BrokerError) -> bool:
    """Redis answered and refused these credentials: waiting would not help."""
    cause = exc.__cause__ or exc.__context__
    return cause is not None and "Authentication" in type(cause).__name__


def check_port_free(option: str, port: int) -> None:
    """Raise a one-line error when ``port`` cannot be listened on (in use, or privileged):
    found before the workers start, not as a traceback from the supervisor."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as http.server does
        try:
            sock.bind(("0.0.0.0", port))
        except OSError as exc:
            raise ConfigurationError(
                f"{option} {port}: cannot listen there ({exc.strerror or exc}); stop what uses "
                f"it (`ss -ltnp 'sport = :{port}'` shows it) or pass another port"
            ) from None


def unknown_task_hint(name: str, known: Sequence[str]) -> str:
    """What to say of a task name the app does not define: the likeliest names it does."""
    import difflib

    close = [k for k in known if k.rpartition(".")[2] == name] or difflib.get_close_matches(
        name, known, n=3
    )
    if close:
        return "did you mean " + " or ".join(repr(k) for k in close) + "?"
    return f"it has: {', '.join(sorted(known)) or 'none'}"


def check_arguments(
    fn: Callable[..., Any], task: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> None:
    """Refuse arguments the task's function cannot take, before anything is sent: a worker
    would dead-letter the message as ``bad_arguments``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to check (some builtins): let it through
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        plain = signature.replace(  # names only: annotations may be unevaluated strings
            parameters=[p.replace(annotation=p.empty) for p in signature.parameters.values()],
            return_annotation=signature.empty,
        )
        raise EnqueueError(
            f"task {task!r} takes {plain}, not --args "
            f"{_json(args)} --kwargs {_json(kwargs)}: {exc}; nothing was enqueued"
        ) from None


def _json(value: Any) -> str:
    import orjson

    return orjson.dumps(value).decode()
