"""Redis URLs as users write them, read without talking to Redis.

One server (``redis://``, ``rediss://`` for TLS, ``unix://``), a Sentinel-managed master
(``redis+sentinel://s1:26379,s2:26379/MASTER/db``) and a Redis Cluster
(``redis+cluster://n1:6379,n2:6379``, seed nodes). Pure, so settings validate a URL at start-up
and every error can quote the URL as given, credentials masked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, NoReturn
from urllib.parse import SplitResult, unquote, urlsplit

from shoal.errors import ConfigurationError

Kind = Literal["standalone", "sentinel", "cluster", "unix"]

FORMS = (
    "redis://host:port/db, rediss:// for TLS, "
    "redis+sentinel://host1:26379,host2:26379/MASTER_NAME/db, "
    "redis+cluster://host1:6379,host2:6379, or unix:///path.sock"
)
"""Every form Shoal accepts, for error messages."""

_SCHEMES: dict[str, tuple[Kind, bool]] = {
    "redis": ("standalone", False),
    "rediss": ("standalone", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "unix": ("unix", False),
}
_DEFAULT_PORT = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}


def mask_url(url: str) -> str:
    """The URL as given, with its password (in the credentials or a ``password=`` option)
    replaced by ``***``, for logs and error messages. Never trusts the URL to be well formed:
    a password holding ``/``, ``?`` or ``#`` is masked too."""
    scheme, userinfo, rest = _split_credentials(url)
    masked = url
    if userinfo is not None and ":" in userinfo:
        masked = f"{scheme}://{userinfo.split(':', 1)[0]}:***@{rest}"
    return _QUERY_PASSWORD.sub(r"\1***", masked)


_QUERY_PASSWORD = re.compile(r"([?&](?:sentinel_)?password=)[^&#]*")


def _split_credentials(url: str) -> tuple[str, str | None, str]:
    """(scheme, user info or None, the rest): the credentials end at the last ``@`` that is
    not in a query option, so a password may hold any character."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", None, url
    at = rest.rfind("@")
    if at == -1 or "=" in rest[:at]:
        return scheme, None, rest
    return scheme, rest[:at], rest[at + 1 :]


@dataclass(frozen=True, slots=True)
class RedisUrl:
    """A parsed Redis URL. ``given`` is the text the user wrote; :attr:`masked` is for errors."""

    given: str
    kind: Kind
    tls: bool
    hosts: tuple[tuple[str, int], ...]
    """One server's address, the sentinels', or the cluster's seed nodes."""
    username: str | None
    password: str | None
    db: int
    master_name: str | None
    """Sentinel only: the name the sentinels monitor the master by."""
    path: str | None
    """unix only: the socket's path."""
    query: str
    """redis-py's connection options (``socket_timeout=3``), passed on as they are."""

    @property
    def masked(self) -> str:
        return mask_url(self.given)


def parse_redis_url(given: str) -> RedisUrl:
    """Read ``given``; raise a one-line ConfigurationError naming the masked URL and the fix."""
    scheme, userinfo_or_none, rest = _split_credentials(given)
    try:
        parts = urlsplit(f"{scheme}://{rest}" if scheme else given)
    except ValueError as exc:  # a broken [IPv6] address
        _refuse(given, f"cannot be read ({exc})", f"use {FORMS}")
    form = _SCHEMES.get(parts.scheme)
    if form is None:
        _refuse(given, f"has scheme {parts.scheme or '(none)'!r}", f"use {FORMS}")
    kind, tls = form
    userinfo = userinfo_or_none or ""
    if kind == "unix":
        return _unix(given, parts, userinfo)
    netloc = parts.netloc
    hosts = tuple(_host_port(given, h, _DEFAULT_PORT[kind]) for h in netloc.split(",") if h)
    if not hosts:
        _refuse(given, "names no host", f"use {FORMS}")
    if kind == "standalone" and len(hosts) > 1:
        _refuse(
            given,
            "lists several hosts",
            "use redis+sentinel://h1:26379,h2:26379/MASTER_NAME/db for a Sentinel-managed "
            "master, or redis+cluster://h1:6379,h2:6379 for a Redis Cluster",
        )
    segments = [s for s in parts.path.split("/") if s]
    master_name = None
    if kind == "sentinel":
        if not segments:
            _refuse(
                given,
                "names no master",
                "use redis+sentinel://h1:26379,h2:26379/MASTER_NAME/db (the name in "
                "`sentinel monitor MASTER_NAME ...`)",
            )
        master_name = unquote(segments.pop(0))
    db = _db(given, segments, kind)
    user, has_password, password = userinfo.partition(":")
    return RedisUrl(
        given=given,
        kind=kind,
        tls=tls,
        hosts=hosts,
        username=unquote(user) or None,
        password=unquote(password) if has_password else None,
        db=db,
        master_name=master_name,
        path=None,
        query=parts.query,
    )


def _unix(given: str, parts: SplitResult, userinfo: str) -> RedisUrl:
    if not parts.path:
        _refuse(given, "names no socket path", "use unix:///path/to/redis.sock")
    options = dict(p.partition("=")[::2] for p in parts.query.split("&") if p)
    db = _db(given, [options["db"]] if "db" in options else [], "unix")
    user, has_password, password = userinfo.partition(":")
    return RedisUrl(
        given=given,
        kind="unix",
        tls=False,
        hosts=(),
        username=unquote(user) or None,
        password=unquote(password) if has_password else None,
        db=db,
        master_name=None,
        path=parts.path,
        query=parts.query,
    )


def _host_port(given: str, text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        _refuse(
            given,
            f"has an invalid port {port_text!r} for host {host!r}",
            f"use a number from 1 to 65535 (Redis listens on {default_port} by default)",
        )
    return host, int(port_text)


def _db(given: str, segments: list[str], kind: Kind) -> int:
    if not segments:
        return 0
    text = segments[0]
    if not text.isdigit() or len(segments) > 1:
        _refuse(given, f"has database {'/'.join(segments)!r}", "use a number, as in /0")
    if kind == "cluster" and int(text) != 0:
        _refuse(
            given,
            f"asks for database {text}",
            "use database 0 (a Redis Cluster has only database 0), or another key prefix "
            "(SHOAL_KEY_PREFIX) to keep apps apart",
        )
    return int(text)


def _refuse(given: str, problem: str, fix: str) -> NoReturn:
    raise ConfigurationError(f"Redis URL {mask_url(given)!r} {problem}; {fix}")
