"""A Queue's spec.redis in every form: the URL the operator builds, the env and TLS volume worker
pods get, the Secrets the operator reads for its own connection, and the errors for what the
CRD schema cannot see."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from kubernetes.client import ApiClient

from shoal import Settings
from shoal_operator import deployment as deploy
from shoal_operator.errors import InvalidReference, MissingReference, SpecError
from shoal_operator.kube import camel
from shoal_operator.redis_gateway import RedisGateway
from shoal_operator.redis_target import TLS_DIR, RedisTarget
from shoal_operator.settings import OperatorSettings

CA, CERT, KEY = b"-----CA-----\n", b"-----CERT-----\n", b"-----KEY-----\n"

SENTINEL: dict[str, Any] = {
    "sentinel": {
        "hosts": ["sentinel-0.sentinel:26379", "sentinel-1.sentinel:26379"],
        "masterName": "mymaster",
        "db": 2,
        "usernameSecretRef": {"name": "sentinel-auth"},
        "passwordSecretRef": {"name": "sentinel-auth", "key": "pw"},
    },
    "usernameSecretRef": {"name": "redis-auth"},
    "passwordSecretRef": {"name": "redis-auth"},
    "tls": {
        "caSecretRef": {"name": "redis-ca"},
        "certSecretRef": {"name": "redis-client"},
        "keySecretRef": {"name": "redis-client"},
        "verify": True,
    },
    "keyPrefix": "prod",
}


def target(**redis: Any) -> RedisTarget:
    return RedisTarget.from_queue("q", {"redis": redis})


def env(t: RedisTarget) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in t.env()}


def secret_ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


class Secrets:
    """The Secrets API, counting reads."""

    def __init__(self, secrets: dict[str, dict[str, bytes | str]]) -> None:
        self.secrets = secrets
        self.reads: list[str] = []

    def read_namespaced_secret(self, name: str, namespace: str) -> Any:
        self.reads.append(name)
        if name not in self.secrets:
            raise type("ApiException", (Exception,), {"status": 404})()
        data = {
            k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()
            for k, v in self.secrets[name].items()
        }
        return SimpleNamespace(data=data)


PRODUCTION_SECRETS: dict[str, dict[str, bytes | str]] = {
    "redis-auth": {"username": "shoal", "password": "s3cret"},
    "sentinel-auth": {"username": "watcher", "pw": "sentinel-pw"},
    "redis-ca": {"ca.crt": CA},
    "redis-client": {"tls.crt": CERT, "tls.key": KEY},
}


# --- URLs -------------------------------------------------------------------------------------


def test_sentinel_becomes_a_sentinel_url_tls_when_asked() -> None:
    assert target(**SENTINEL).url == (
        "rediss+sentinel://sentinel-0.sentinel:26379,sentinel-1.sentinel:26379/mymaster/2"
    )
    plain = target(sentinel={"hosts": ["s:26379"], "masterName": "my master/1"})
    assert plain.url == "redis+sentinel://s:26379/my%20master%2F1/0"


def test_cluster_becomes_a_cluster_url_tls_when_asked() -> None:
    assert target(cluster={"nodes": ["n0:6379", "n1"]}).url == "redis+cluster://n0:6379,n1"
    assert target(cluster={"nodes": ["n0:6379"]}, tls={}).url == "rediss+cluster://n0:6379"


@pytest.mark.parametrize(
    "url",
    [
        "redis://r:6379/0",
        "rediss://r:6380/1",
        "unix:///run/redis.sock",
        "redis+sentinel://s1:26379,s2:26379/mymaster/0",
        "rediss+cluster://n1:6379,n2:6379",
    ],
)
def test_every_url_form_is_passed_on_as_given(url: str) -> None:
    tls = {} if url.startswith("rediss") else None
    assert (
        env(target(url=url, tls=tls) if tls is not None else target(url=url))["SHOAL_REDIS_URL"]
        == url
    )


# --- what the schema cannot see -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("redis", "reason", "message"),
    [
        ({}, "InvalidRedis", "set exactly one of spec.redis.url, spec.redis.urlSecretRef, "),
        (
            {"url": "redis://r:6379", "sentinel": SENTINEL["sentinel"]},
            "InvalidRedis",
            "(found url, sentinel)",
        ),
        (
            {"url": "redis://r:6379/0", "tls": {"caSecretRef": {"name": "ca"}}},
            "TLSNeedsRediss",
            "spec.redis.tls is set but spec.redis.url 'redis://r:6379/0' does not use TLS; use "
            "rediss://",
        ),
        (
            {"url": "rediss://r:6379/0", "tls": {"certSecretRef": {"name": "c"}}},
            "TLSCertWithoutKey",
            "needs spec.redis.tls.certSecretRef and spec.redis.tls.keySecretRef; set both",
        ),
        (
            {"sentinel": {"hosts": ["s:26379"]}},
            "InvalidRedis",
            "spec.redis.sentinel.masterName is missing",
        ),
        (
            {"sentinel": {"hosts": [], "masterName": "m"}},
            "InvalidRedis",
            "spec.redis.sentinel.hosts must list at least one host:port",
        ),
        (
            {"cluster": {"nodes": ["n:99999"]}},
            "InvalidRedisURL",
            "spec.redis.cluster: Redis URL 'redis+cluster://n:99999' has an invalid port",
        ),
        ({"url": "redis://user:pw@r:6379"}, "PasswordInURL", "passwordSecretRef"),
        ({"url": "redis://r:6379/x"}, "InvalidRedisURL", "has database 'x'; use a number"),
    ],
    ids=[
        "no-form",
        "two-forms",
        "tls-with-redis-url",
        "cert-without-key",
        "no-master",
        "no-sentinels",
        "bad-port",
        "password-in-url",
        "bad-db",
    ],
)
def test_invalid_redis_specs_name_the_field_and_the_fix(
    redis: dict[str, Any], reason: str, message: str
) -> None:
    with pytest.raises(SpecError) as caught:
        target(**redis)
    assert caught.value.reason == reason
    assert caught.value.message.startswith("Queue q: ")
    assert message in caught.value.message


# --- pods: env and the TLS volume ---------------------------------------------------------------


def test_pods_get_credentials_by_reference_and_tls_files_by_path() -> None:
    assert env(target(**SENTINEL)) == {
        "SHOAL_REDIS_URL": target(**SENTINEL).url,
        "SHOAL_REDIS_USERNAME": secret_ref("redis-auth", "username"),
        "SHOAL_REDIS_PASSWORD": secret_ref("redis-auth", "password"),
        "SHOAL_REDIS_SENTINEL_USERNAME": secret_ref("sentinel-auth", "username"),
        "SHOAL_REDIS_SENTINEL_PASSWORD": secret_ref("sentinel-auth", "pw"),
        "SHOAL_REDIS_TLS_CA_FILE": "/etc/shoal/redis-tls/ca.crt",
        "SHOAL_REDIS_TLS_CERT_FILE": "/etc/shoal/redis-tls/tls.crt",
        "SHOAL_REDIS_TLS_KEY_FILE": "/etc/shoal/redis-tls/tls.key",
        "SHOAL_KEY_PREFIX": "prod",
    }


def test_tls_secrets_are_one_read_only_volume_one_source_per_secret() -> None:
    t = target(**SENTINEL)
    assert t.volumes() == [
        {
            "name": "redis-tls",
            "projected": {
                "defaultMode": 0o440,
                "sources": [
                    {
                        "secret": {
                            "name": "redis-ca",
                            "items": [{"key": "ca.crt", "path": "ca.crt"}],
                        }
                    },
                    {
                        "secret": {
                            "name": "redis-client",
                            "items": [
                                {"key": "tls.crt", "path": "tls.crt"},
                                {"key": "tls.key", "path": "tls.key"},
                            ],
                        }
                    },
                ],
            },
        }
    ]
    assert t.volume_mounts() == [{"name": "redis-tls", "mountPath": TLS_DIR, "readOnly": True}]


def test_one_secret_with_custom_keys_and_no_verification() -> None:
    tls = {
        "caSecretRef": {"name": "bundle", "key": "root.pem"},
        "certSecretRef": {"name": "bundle", "key": "client.pem"},
        "keySecretRef": {"name": "bundle", "key": "client-key.pem"},
        "verify": False,
    }
    t = target(url="rediss://r:6380/0", tls=tls)
    (volume,) = t.volumes()
    assert volume["projected"]["sources"] == [
        {
            "secret": {
                "name": "bundle",
                "items": [
                    {"key": "root.pem", "path": "ca.crt"},
                    {"key": "client.pem", "path": "tls.crt"},
                    {"key": "client-key.pem", "path": "tls.key"},
                ],
            }
        }
    ]
    assert env(t)["SHOAL_REDIS_TLS_VERIFY"] == "false"


def test_tls_without_files_mounts_nothing() -> None:
    t = target(url="rediss://r:6380/0", tls={"verify": True})
    assert t.volumes() == [] and t.volume_mounts() == []
    assert not any(name.startswith("SHOAL_REDIS_TLS") for name in env(t))
    assert env(target(url="redis://r:6379/0")).keys() == {"SHOAL_REDIS_URL", "SHOAL_KEY_PREFIX"}


def test_the_worker_deployment_mounts_the_tls_volume() -> None:
    t = target(**SENTINEL)
    spec = {"image": "tasks:1", "module": "tasks", "queues": ["q"]}
    d = deploy.build("tasks", "prod", spec, [deploy.QueueRef("q", t, 30)], OperatorSettings(), 1)
    pod = d["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["volumes"] == [{"name": "tmp", "emptyDir": {}}, *t.volumes()]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}, *t.volume_mounts()]


def test_the_tls_volume_read_back_through_the_client_is_no_drift() -> None:
    """The operator compares the live Deployment (as the kubernetes client returns it) with the
    one it builds: the TLS volume must survive that round trip, or every event would patch."""
    spec = {"image": "tasks:1", "module": "tasks", "queues": ["q"]}
    ref = deploy.QueueRef("q", target(**SENTINEL), 30)
    built = deploy.build("tasks", "prod", spec, [ref], OperatorSettings(), 1)
    live = ApiClient().deserialize(json.dumps(built), "V1Deployment", "application/json")
    assert deploy.drift(built["spec"], camel(live.to_dict())["spec"]) == []


def test_what_pods_get_is_what_the_runtime_reads(tmp_path: Path) -> None:
    """The contract with the runtime: the env, Secrets substituted and the volume's files where
    the kubelet would put them, gives Settings.from_env exactly the spec's connection."""
    for name, content in (("ca.crt", CA), ("tls.crt", CERT), ("tls.key", KEY)):
        (tmp_path / name).write_bytes(content)
    environ = {}
    for e in target(**SENTINEL).env():
        if "value" in e:
            environ[e["name"]] = e["value"].replace(TLS_DIR, str(tmp_path))
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            environ[e["name"]] = str(PRODUCTION_SECRETS[ref["name"]][ref["key"]])
    s = Settings.from_env(environ)
    assert s.redis_url == target(**SENTINEL).url
    assert (s.redis_username, s.redis_password) == ("shoal", "s3cret")
    assert (s.redis_sentinel_username, s.redis_sentinel_password) == ("watcher", "sentinel-pw")
    assert s.redis_tls_ca_file == str(tmp_path / "ca.crt")
    assert s.redis_tls_key_file == str(tmp_path / "tls.key")
    assert s.redis_tls_verify is True and s.key_prefix == "prod"


def test_queues_with_the_same_redis_share_a_target() -> None:
    a = RedisTarget.from_queue("a", {"redis": SENTINEL})
    b = RedisTarget.from_queue("b", {"redis": SENTINEL})
    assert a == b and len({a, b}) == 1
    other = RedisTarget.from_queue("c", {"redis": {**SENTINEL, "passwordSecretRef": {"name": "x"}}})
    assert other != a


# --- the operator's own connection: Secrets read through the API ---------------------------------


def test_resolve_reads_every_secret_once() -> None:
    api = Secrets(PRODUCTION_SECRETS)
    found = target(**SENTINEL).resolve(api, "prod")
    assert found.url == target(**SENTINEL).url
    assert (found.username, found.password) == ("shoal", "s3cret")
    assert (found.sentinel_username, found.sentinel_password) == ("watcher", "sentinel-pw")
    assert (found.tls_ca, found.tls_cert, found.tls_key) == (CA, CERT, KEY)
    assert sorted(api.reads) == ["redis-auth", "redis-ca", "redis-client", "sentinel-auth"]
    assert "s3cret" not in repr(found) and "KEY" not in repr(found)


def test_resolve_names_a_missing_tls_secret_or_key() -> None:
    without_ca = {k: v for k, v in PRODUCTION_SECRETS.items() if k != "redis-ca"}
    with pytest.raises(MissingReference, match="Secret prod/redis-ca does not exist; create it "):
        target(**SENTINEL).resolve(Secrets(without_ca), "prod")
    no_key = {**PRODUCTION_SECRETS, "redis-client": {"tls.crt": CERT}}
    with pytest.raises(MissingReference) as caught:
        target(**SENTINEL).resolve(Secrets(no_key), "prod")
    assert caught.value.reason == "SecretKeyNotFound"
    assert caught.value.message == "Secret prod/redis-client has no key 'tls.key' (it has: tls.crt)"


@pytest.mark.parametrize(
    ("url", "reason", "message"),
    [
        (
            "redis://:pw@r:6379/0",
            "TLSNeedsRediss",
            "Queue q: spec.redis.tls is set but Secret prod/redis key 'url' holds "
            "'redis://:***@r:6379/0', a URL without TLS; put a rediss:// (or rediss+sentinel://, "
            "rediss+cluster://) URL in the Secret, or remove spec.redis.tls",
        ),
        (
            "http://r:6379",
            "InvalidRedisURL",
            "Queue q: Secret prod/redis key 'url': Redis URL 'http://r:6379' has scheme 'http'",
        ),
    ],
)
def test_a_url_in_a_secret_is_checked_as_cel_checks_a_given_one(
    url: str, reason: str, message: str
) -> None:
    t = target(urlSecretRef={"name": "redis"}, tls={"caSecretRef": {"name": "redis-ca"}})
    with pytest.raises(InvalidReference) as caught:
        t.resolve(Secrets({"redis": {"url": url}, "redis-ca": {"ca.crt": CA}}), "prod")
    assert caught.value.reason == reason
    assert caught.value.message.startswith(message)
    assert isinstance(caught.value, MissingReference)  # retried: the Secret may be fixed


def test_connect_writes_tls_files_privately_and_keeps_the_connection_while_unchanged() -> None:
    gateway = RedisGateway()
    api = Secrets(PRODUCTION_SECRETS)
    try:
        conn = gateway.connect(target(**SENTINEL), api, "prod")
        s = conn.settings
        assert s.redis_url == target(**SENTINEL).url and s.key_prefix == "prod"
        assert (s.redis_username, s.redis_password) == ("shoal", "s3cret")
        assert (s.redis_sentinel_username, s.redis_sentinel_password) == ("watcher", "sentinel-pw")
        files = (s.redis_tls_ca_file, s.redis_tls_cert_file, s.redis_tls_key_file)
        assert [Path(f).read_bytes() for f in files if f] == [CA, CERT, KEY]
        directory = gateway.tls_files.directory
        assert directory is not None and stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert {stat.S_IMODE(os.stat(f).st_mode) for f in files if f} == {0o600}

        # The same Secrets: the same Connection, hence the same App
        again = gateway.connect(target(**SENTINEL), api, "prod")
        assert again == conn and hash(again) == hash(conn)
        assert gateway.app(again) is gateway.app(conn)

        # A rotated client certificate: a new file, a new Connection
        api.secrets["redis-client"] = {"tls.crt": b"-----NEW-----\n", "tls.key": KEY}
        rotated = gateway.connect(target(**SENTINEL), api, "prod")
        assert rotated != conn
        assert rotated.settings.redis_tls_cert_file != s.redis_tls_cert_file
        assert rotated.settings.redis_tls_key_file == s.redis_tls_key_file
    finally:
        gateway.close()
    assert not directory.exists()


def test_connect_with_verification_off() -> None:
    gateway = RedisGateway()
    t = target(url="rediss://r:6380/0", tls={"verify": False})
    conn = gateway.connect(t, Secrets({}), "prod")
    assert conn.settings.redis_tls_verify is False
    assert conn.settings.redis_tls_ca_file is None
    assert gateway.tls_files.directory is None  # nothing to write, no directory
    gateway.close()
