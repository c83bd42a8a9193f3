"""Settings: SHOAL_* parsing, errors that name the variable, Redis URL checks, repr(App)."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal import App, ConfigurationError, Settings
from shoal.settings import DEFAULT_REDIS_URL, validate_redis_url


def test_from_env_parses_each_type() -> None:
    s = Settings.from_env(
        {
            "SHOAL_REDIS_URL": "redis://cache:6380/2",
            "SHOAL_KEY_PREFIX": "acme",
            "SHOAL_DEFAULT_QUEUE": "jobs",
            "SHOAL_LEASE": "12.5",
            "SHOAL_HEARTBEAT": "3",
            "SHOAL_MAX_RETRIES": "7",
            "SHOAL_MAX_MESSAGE_BYTES": "2048",
            "SHOAL_DLQ_MAX_ENTRIES": "5",
            "UNRELATED": "x",
        }
    )
    assert s.redis_url == "redis://cache:6380/2"
    assert s.redis_url_source == "SHOAL_REDIS_URL"
    assert s.key_prefix == "acme"
    assert s.default_queue == "jobs"
    assert s.lease_s == 12.5
    assert s.heartbeat_s == 3.0
    assert s.default_max_retries == 7
    assert isinstance(s.default_max_retries, int)
    assert s.max_message_bytes == 2048
    assert s.dlq_max_entries == 5


def test_from_env_defaults_when_unset() -> None:
    s = Settings.from_env({})
    assert s.redis_url == DEFAULT_REDIS_URL
    assert s.redis_url_source == "default"
    assert s == Settings()


def test_explicit_overrides_win_over_env() -> None:
    s = Settings.from_env(
        {"SHOAL_REDIS_URL": "redis://env:1/0", "SHOAL_LEASE": "20"},
        redis_url="redis://arg:2/0",
        lease_s=30.0,
        heartbeat_s=None,
    )
    assert s.redis_url == "redis://arg:2/0"
    assert s.redis_url_source == "argument"
    assert s.lease_s == 30.0
    assert s.heartbeat_s == Settings().heartbeat_s


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SHOAL_LEASE", "ten"),
        ("SHOAL_HEARTBEAT", ""),
        ("SHOAL_MAX_RETRIES", "1.5"),
        ("SHOAL_MAX_MESSAGE_BYTES", "1MB"),
        ("SHOAL_DLQ_MAX_AGE", "7d"),
    ],
)
def test_bad_value_error_names_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({variable: value})
    assert variable in str(info.value)
    assert repr(value) in str(info.value)


@pytest.mark.parametrize("field", ["SHOAL_LEASE", "SHOAL_HEARTBEAT", "SHOAL_IDLE_POLL"])
def test_non_positive_durations_are_refused(field: str) -> None:
    with pytest.raises(ConfigurationError, match="must be > 0"):
        Settings.from_env({field: "0"})


def test_heartbeat_must_be_at_most_half_the_lease() -> None:
    with pytest.raises(ConfigurationError, match="SHOAL_HEARTBEAT"):
        Settings.from_env({"SHOAL_LEASE": "2", "SHOAL_HEARTBEAT": "1.5"})
    assert Settings.from_env({"SHOAL_LEASE": "2", "SHOAL_HEARTBEAT": "1"}).heartbeat_s == 1.0


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost:6379/0",
        "rediss://h:6380/1",
        "unix:///tmp/redis.sock",
        "redis://h",
        "redis+sentinel://s1:26379,s2:26379/mymaster/0",
        "redis+cluster://n1:7000,n2:7001",
    ],
)
def test_validate_redis_url_accepts_every_form(url: str) -> None:
    assert validate_redis_url(url) == url
    assert Settings.from_env({"SHOAL_REDIS_URL": url}).redis_url == url


def test_a_bad_redis_url_is_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="scheme 'http'"):
        Settings.from_env({"SHOAL_REDIS_URL": "http://:hunter2@localhost:6379/0"})


def test_tls_files_need_a_tls_url(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    env = {"SHOAL_REDIS_URL": "redis://h:6379/0", "SHOAL_REDIS_TLS_CA_FILE": str(ca)}
    with pytest.raises(ConfigurationError, match="use rediss://"):
        Settings.from_env(env)
    env["SHOAL_REDIS_URL"] = "rediss://h:6379/0"
    assert Settings.from_env(env).redis_tls_ca_file == str(ca)


def test_a_missing_tls_file_is_named(tmp_path: Path) -> None:
    env = {
        "SHOAL_REDIS_URL": "rediss://h:6379/0",
        "SHOAL_REDIS_TLS_CA_FILE": str(tmp_path / "nope.pem"),
    }
    with pytest.raises(ConfigurationError, match=r"SHOAL_REDIS_TLS_CA_FILE=.*nope\.pem"):
        Settings.from_env(env)


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    env = {"SHOAL_REDIS_URL": "rediss://h/0", "SHOAL_REDIS_TLS_CERT_FILE": str(cert)}
    with pytest.raises(ConfigurationError, match="SHOAL_REDIS_TLS_KEY_FILE"):
        Settings.from_env(env)


@pytest.mark.parametrize(("raw", "value"), [("false", False), ("0", False), ("YES", True)])
def test_tls_verify_reads_yes_and_no(raw: str, value: bool) -> None:
    env = {"SHOAL_REDIS_URL": "rediss://h/0", "SHOAL_REDIS_TLS_VERIFY": raw}
    assert Settings.from_env(env).redis_tls_verify is value


def test_tls_verify_refuses_what_is_not_a_yes_or_no() -> None:
    with pytest.raises(ConfigurationError, match="SHOAL_REDIS_TLS_VERIFY='maybe'"):
        Settings.from_env({"SHOAL_REDIS_TLS_VERIFY": "maybe"})


def test_credentials_come_from_the_environment() -> None:
    s = Settings.from_env(
        {
            "SHOAL_REDIS_USERNAME": "worker",
            "SHOAL_REDIS_PASSWORD": "pw",
            "SHOAL_REDIS_SENTINEL_PASSWORD": "spw",
        }
    )
    assert (s.redis_username, s.redis_password, s.redis_sentinel_password) == (
        "worker",
        "pw",
        "spw",
    )
    assert "pw" not in repr(s)


def test_repr_app_says_where_the_url_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SHOAL_REDIS_URL", raising=False)
    default = App()
    assert "(from default)" in repr(default)
    assert DEFAULT_REDIS_URL in repr(default)

    monkeypatch.setenv("SHOAL_REDIS_URL", "redis://from-env:6390/3")
    from_env = App()
    assert "(from SHOAL_REDIS_URL)" in repr(from_env)
    assert "redis://from-env:6390/3" in repr(from_env)

    from_arg = App(redis_url="redis://:pw123@from-arg:6391/0")
    assert "(from argument)" in repr(from_arg)
    assert "from-arg:6391" in repr(from_arg)
    assert "pw123" not in repr(from_arg)


def test_app_overrides_settings_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_MAX_MESSAGE_BYTES", "4096")
    assert App().settings.max_message_bytes == 4096
    assert App(max_message_bytes=100).settings.max_message_bytes == 100
    with pytest.raises(ConfigurationError):
        App(redis_url="mysql://nope")
