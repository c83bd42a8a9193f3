"""Redis URLs as users write them: one server, TLS, Sentinel, a Cluster, a socket."""

from __future__ import annotations

import pytest

from shoal.errors import ConfigurationError
from shoal.redis_url import RedisUrl, mask_url, parse_redis_url


def test_one_server() -> None:
    url = parse_redis_url("redis://user:pw@cache.internal:6380/2?socket_timeout=3")
    assert url == RedisUrl(
        given="redis://user:pw@cache.internal:6380/2?socket_timeout=3",
        kind="standalone",
        tls=False,
        hosts=(("cache.internal", 6380),),
        username="user",
        password="pw",
        db=2,
        master_name=None,
        path=None,
        query="socket_timeout=3",
    )
    assert parse_redis_url("redis://h").hosts == (("h", 6379),)
    assert parse_redis_url("redis://h").db == 0
    assert parse_redis_url("rediss://h:6380/0").tls


def test_sentinel_hosts_master_and_db() -> None:
    url = parse_redis_url("redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/3")
    assert url.kind == "sentinel"
    assert url.hosts == (("s1", 26379), ("s2", 26379), ("::1", 26380))
    assert (url.master_name, url.db, url.password, url.tls) == ("mymaster", 3, "pw", False)
    assert parse_redis_url("rediss+sentinel://s1/m").tls
    assert parse_redis_url("redis+sentinel://s1/m").db == 0


def test_cluster_seed_nodes() -> None:
    url = parse_redis_url("redis+cluster://u:p@n1:7000,n2:7001")
    assert (url.kind, url.hosts, url.username, url.db) == (
        "cluster",
        (("n1", 7000), ("n2", 7001)),
        "u",
        0,
    )
    assert parse_redis_url("rediss+cluster://n1:7000/0").tls


def test_percent_encoded_credentials_are_decoded() -> None:
    url = parse_redis_url("redis://us%40er:p%3Aw%40rd@h:1/0")
    assert (url.username, url.password) == ("us@er", "p:w@rd")


def test_unix_socket() -> None:
    url = parse_redis_url("unix:///run/redis.sock?db=1")
    assert (url.kind, url.path, url.db) == ("unix", "/run/redis.sock", 1)


@pytest.mark.parametrize(
    ("given", "needle"),
    [
        ("http://localhost:6379/0", "scheme 'http'"),
        ("localhost:6379", "scheme 'localhost'"),
        ("", "scheme '(none)'"),
        ("redis://localhost:notaport/0", "invalid port 'notaport'"),
        ("redis://localhost:99999/0", "invalid port '99999'"),
        ("redis://a:1,b:2/0", "redis+cluster://"),
        ("redis://h:1/x", "database 'x'"),
        ("redis+sentinel://s1:26379", "names no master"),
        ("redis+sentinel://s1:26379/m/x", "database 'x'"),
        ("redis+cluster://n1:7000/3", "database 0"),
        ("redis+cluster:///0", "no host"),
        ("unix://", "socket path"),
    ],
)
def test_errors_name_the_url_and_the_fix(given: str, needle: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_redis_url(given)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert "use " in message  # every error says what to write instead


def test_errors_mask_the_password() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_redis_url("redis+sentinel://u:hunter2@s1:26379")
    assert "hunter2" not in str(info.value)
    assert "u:***@s1:26379" in str(info.value)


def test_mask_url_keeps_the_url_as_given() -> None:
    assert mask_url("redis://:secret@h:1/0") == "redis://:***@h:1/0"
    assert mask_url("rediss://user:secret@h:1/0") == "rediss://user:***@h:1/0"
    assert mask_url("redis+cluster://u:s@a:1,b:2") == "redis+cluster://u:***@a:1,b:2"
    assert mask_url("redis://h:1/0") == "redis://h:1/0"
    assert parse_redis_url("rediss://u:s@h:1/0").masked == "rediss://u:***@h:1/0"


@pytest.mark.parametrize(
    "given",
    [
        "redis://user:pa/ss@host:6379/0",
        "redis://user:p#w@host:6379/0",
        "redis://:p?w@host/0",
        "redis+sentinel://u:a/b@s1,s2/m",
        "redis://host/0?password=hunter2&socket_timeout=3",
    ],
)
def test_masking_never_shows_a_password_whatever_it_holds(given: str) -> None:
    masked = mask_url(given)
    for secret in ("pa/ss", "p#w", "p?w", "a/b", "hunter2"):
        assert secret not in masked
    assert "***" in masked


def test_a_password_with_a_slash_is_read_whole() -> None:
    url = parse_redis_url("redis://user:pa/ss@host:6379/2")
    assert (url.username, url.password, url.hosts, url.db) == (
        "user",
        "pa/ss",
        (("host", 6379),),
        2,
    )


def test_a_broken_ipv6_address_is_refused_naming_the_url() -> None:
    with pytest.raises(ConfigurationError, match=r"'redis://\[::1/0'.*use "):
        parse_redis_url("redis://[::1/0")
