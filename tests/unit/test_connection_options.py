"""What redis-py is given for each URL and setting: the URL's own options keep working."""

from __future__ import annotations

from pathlib import Path

from shoal.protocol.connection import client_options
from shoal.redis_url import parse_redis_url
from shoal.settings import Settings


def options(url: str, **settings: object) -> dict[str, object]:
    s = Settings(redis_url=url, **settings)  # type: ignore[arg-type]
    return client_options(parse_redis_url(url), s)


def test_query_options_are_typed_and_kept() -> None:
    got = options("redis://h/0?socket_timeout=3&health_check_interval=9")
    assert got["socket_timeout"] == 3.0
    assert got["health_check_interval"] == 9


def test_db_and_credentials_in_the_query_are_honoured() -> None:
    got = options("unix:///run/redis.sock?db=3&password=pw&username=u")
    assert (got["db"], got["password"], got["username"]) == (3, "pw", "u")
    assert options("redis://h/?db=4")["db"] == 4


def test_the_url_wins_over_the_environment() -> None:
    got = options("redis://u:pw@h/0", redis_username="env-user", redis_password="env-pw")
    assert (got["username"], got["password"]) == ("u", "pw")
    got = options("redis://h/0", redis_username="env-user", redis_password="env-pw")
    assert (got["username"], got["password"]) == ("env-user", "env-pw")


def test_tls_options_in_the_query_still_work(tmp_path: Path) -> None:
    got = options("rediss://h/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=none")
    assert got["ssl_ca_certs"] == "/etc/ca.pem"
    assert got["ssl_cert_reqs"] == "none"
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    got = options("rediss://h/0", redis_tls_ca_file=str(ca), redis_tls_verify=False)
    assert (got["ssl_ca_certs"], got["ssl_cert_reqs"], got["ssl_check_hostname"]) == (
        str(ca),
        "none",
        False,
    )
    assert options("rediss://h/0")["ssl_cert_reqs"] == "required"
    assert "ssl_ca_certs" not in options("redis://h/0")
