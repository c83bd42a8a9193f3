"""Production Redis through the real operator: a Queue on Sentinel with an ACL user and TLS from
Secrets becomes a worker Deployment wired to all of it; specs the schema cannot refuse become
conditions (never a crash loop); and the operator measures a queue on a real TLS redis-server,
as an ACL user with a client certificate, from what the Secrets hold."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from kube_emulator import DEPLOYMENTS, QUEUES, SECRETS, WORKERS, Kube

from crd_schema import ROOT
from shoal import App, Settings
from shoal.protocol.acl import acl_rule
from shoal.protocol.server import LocalRedis, free_port

WaitFor = Callable[..., Any]
EXAMPLE = ROOT / "examples" / "queue-production-redis.yaml"


@pytest.fixture(autouse=True)
def fast_operator(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_OPERATOR_POLL", "0.2")
    monkeypatch.setenv("SHOAL_OPERATOR_RETRY_DELAY", "0.5")


def secret(name: str, **data: str | bytes) -> dict[str, Any]:
    encoded = {
        k: base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()
        for k, v in data.items()
    }
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return dict(c)
    return None


def failed(kube: Kube, resource: Any, name: str, reason: str) -> Callable[[], Any]:
    """A wait_for predicate: the resource's Ready condition is False with ``reason``."""

    def check() -> dict[str, Any] | None:
        c = condition(kube.get(resource, name), "Ready")
        return c if c and c["status"] == "False" and c["reason"] == reason else None

    return check


def queue(name: str, redis_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {"redis": redis_spec},
    }


def worker(name: str, queues: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "shoal.dev/v1alpha1",
        "kind": "Worker",
        "metadata": {"name": name},
        "spec": {"image": "example/tasks:1", "module": "tasks", "queues": queues, "replicas": 1},
    }


def pod_env(deployment: dict[str, Any]) -> dict[str, Any]:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def by_ref(name: str, key: str) -> dict[str, Any]:
    return {"secretKeyRef": {"name": name, "key": key}}


def test_the_production_example_becomes_a_deployment_wired_to_sentinel_acl_and_tls(
    kube: Kube, running: None, wait_for: WaitFor
) -> None:
    # Given the example's Secrets, and its Queue and Worker, with the sentinels on loopback
    # ports where nothing listens (the Worker's Deployment needs no Redis)
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    example_queue = next(d for d in docs if d["kind"] == "Queue")
    example_worker = next(d for d in docs if d["kind"] == "Worker")
    sentinels = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    example_queue["spec"]["redis"]["sentinel"]["hosts"] = sentinels
    kube.create(SECRETS, secret("redis-auth", username="shoal", password="s3cret"))
    kube.create(SECRETS, secret("redis-sentinel-auth", password="sentinel-pw"))
    kube.create(SECRETS, secret("redis-tls", **{"ca.crt": "CA", "tls.crt": "C", "tls.key": "K"}))

    # When they are applied
    kube.create(QUEUES, example_queue)
    kube.create(WORKERS, example_worker)

    # Then the worker pods get the sentinel URL, the credentials by reference, the TLS files
    d = wait_for(lambda: kube.get_or_none(DEPLOYMENTS, "payments"), message="the Deployment")
    assert pod_env(d) | {"OTEL_RESOURCE_ATTRIBUTES": None} == {
        "SHOAL_REDIS_URL": f"rediss+sentinel://{','.join(sentinels)}/mymaster/0",
        "SHOAL_REDIS_USERNAME": by_ref("redis-auth", "username"),
        "SHOAL_REDIS_PASSWORD": by_ref("redis-auth", "password"),
        "SHOAL_REDIS_SENTINEL_PASSWORD": by_ref("redis-sentinel-auth", "password"),
        "SHOAL_REDIS_TLS_CA_FILE": "/etc/shoal/redis-tls/ca.crt",
        "SHOAL_REDIS_TLS_CERT_FILE": "/etc/shoal/redis-tls/tls.crt",
        "SHOAL_REDIS_TLS_KEY_FILE": "/etc/shoal/redis-tls/tls.key",
        "SHOAL_KEY_PREFIX": "payments",
        "SHOAL_SHUTDOWN_GRACE": "60",
        "OTEL_SERVICE_NAME": "payments",
        "OTEL_RESOURCE_ATTRIBUTES": None,
    }
    pod = d["spec"]["template"]["spec"]
    assert pod["volumes"][1] == {
        "name": "redis-tls",
        "projected": {
            "defaultMode": 0o440,
            "sources": [
                {
                    "secret": {
                        "name": "redis-tls",
                        "items": [
                            {"key": "ca.crt", "path": "ca.crt"},
                            {"key": "tls.crt", "path": "tls.crt"},
                            {"key": "tls.key", "path": "tls.key"},
                        ],
                    }
                }
            ],
        },
    }
    (c,) = pod["containers"]
    assert c["volumeMounts"][1] == {
        "name": "redis-tls",
        "mountPath": "/etc/shoal/redis-tls",
        "readOnly": True,
    }

    # And the operator, trying the sentinels itself, says they do not answer
    reachable = wait_for(
        lambda: condition(kube.get(QUEUES, "payments"), "RedisReachable"),
        message="RedisReachable",
    )
    assert reachable["status"] == "False" and reachable["reason"] == "RedisUnreachable"
    assert "mymaster" in reachable["message"] and "sentinel" in reachable["message"]


def test_what_the_schema_cannot_refuse_is_a_condition_and_a_fixed_secret_recovers(
    kube: Kube, running: None, redis_url: str, wait_for: WaitFor
) -> None:
    # Given a client certificate without its key (the API server's CEL rule would refuse it;
    # the operator must not crash on it either)
    half = {"cluster": {"nodes": ["127.0.0.1:7000"]}, "tls": {"certSecretRef": {"name": "c"}}}
    kube.create(QUEUES, queue("half", half))
    kube.create(WORKERS, worker("half", ["half"]))
    ready = wait_for(failed(kube, QUEUES, "half", "TLSCertWithoutKey"), message="Queue half")
    assert ready["message"] == (
        "Queue half: a client certificate needs spec.redis.tls.certSecretRef and "
        "spec.redis.tls.keySecretRef; set both, or neither"
    )
    ready = wait_for(failed(kube, WORKERS, "half", "QueueInvalid"), message="Worker half")
    assert "set both, or neither" in ready["message"]

    # Given TLS asked for, and a URL without TLS in the Secret (CEL cannot see it)
    kube.create(SECRETS, secret("redis", url=redis_url))
    plain = {"urlSecretRef": {"name": "redis"}, "tls": {"verify": False}}
    kube.create(QUEUES, queue("plain", plain))
    kube.create(WORKERS, worker("plain", ["plain"]))
    ready = wait_for(failed(kube, QUEUES, "plain", "TLSNeedsRediss"), message="Queue plain")
    assert ready["message"] == (
        f"Queue plain: spec.redis.tls is set but Secret default/redis key 'url' holds "
        f"{redis_url!r}, a URL without TLS; put a rediss:// (or rediss+sentinel://, "
        "rediss+cluster://) URL in the Secret, or remove spec.redis.tls"
    )
    wait_for(failed(kube, WORKERS, "plain", "TLSNeedsRediss"), message="Worker plain")
    assert not kube.exists(DEPLOYMENTS, "half") and not kube.exists(DEPLOYMENTS, "plain")

    # When the Secret is fixed, with no edit of the Queue or the Worker: the Worker recovers
    tls_url = redis_url.replace("redis://", "rediss://")
    kube.patch(SECRETS, "redis", {"data": {"url": base64.b64encode(tls_url.encode()).decode()}})
    d = wait_for(lambda: kube.get_or_none(DEPLOYMENTS, "plain"), message="the Deployment")
    assert pod_env(d)["SHOAL_REDIS_TLS_VERIFY"] == "false"
    assert (
        "volumes" not in d["spec"]["template"]["spec"]
        or len(d["spec"]["template"]["spec"]["volumes"]) == 1
    )  # verification off and no CA: no TLS files to mount


# --- a real TLS Redis ---------------------------------------------------------------------------


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all EC P-256."""
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    ca_extensions = ["basicConstraints=critical,CA:TRUE", "keyUsage=critical,keyCertSign,cRLSign"]
    openssl(
        *["req", "-x509", *new_key, "-days", "2", "-subj", "/CN=shoal-test-ca"],
        *[arg for ext in ca_extensions for arg in ("-addext", ext)],
        *["-keyout", "ca.key", "-out", "ca.crt"],
        cwd=directory,
    )
    for name, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        (directory / f"{name}.ext").write_text(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            f"extendedKeyUsage={usage}\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
        )
        openssl(
            *["req", *new_key, "-subj", f"/CN={name}"],
            *["-keyout", f"{name}.key", "-out", f"{name}.csr"],
            cwd=directory,
        )
        openssl(
            *["x509", "-req", "-in", f"{name}.csr", "-days", "2", "-extfile", f"{name}.ext"],
            *["-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", f"{name}.crt"],
            cwd=directory,
        )


@pytest.fixture
def tls_redis(tmp_path: Path, key_prefix: str) -> Iterator[tuple[LocalRedis, int, Path]]:
    """A redis-server that takes TLS clients with a certificate of our CA only, and only the ACL
    user ``shoal`` (password ``s3cret``, Shoal's rule); its plain port is for set-up."""
    certs = tmp_path / "certs"
    certs.mkdir()
    make_certificates(certs)
    tls_port = free_port()
    server = LocalRedis(
        args=[
            *["--tls-port", str(tls_port), "--tls-auth-clients", "yes"],
            *["--tls-cert-file", str(certs / "server.crt")],
            *["--tls-key-file", str(certs / "server.key")],
            *["--tls-ca-cert-file", str(certs / "ca.crt")],
        ]
    ).start()
    try:
        admin = redis.Redis(port=server.port)
        admin.acl_setuser("shoal", enabled=True, passwords=["+s3cret"], reset=True)
        admin.execute_command("ACL", "SETUSER", "shoal", *acl_rule(key_prefix))
        admin.acl_setuser("default", enabled=False)  # nobody else gets in
        admin.close()
        yield server, tls_port, certs
    finally:
        server.stop()


def test_the_operator_measures_a_queue_over_tls_as_an_acl_user_from_secrets(
    kube: Kube,
    running: None,
    tls_redis: tuple[LocalRedis, int, Path],
    key_prefix: str,
    wait_for: WaitFor,
) -> None:
    # Given 3 messages waiting on a TLS Redis that wants a client certificate and a user
    _, tls_port, certs = tls_redis
    url = f"rediss://127.0.0.1:{tls_port}/0"
    settings = Settings(
        redis_url=url,
        redis_username="shoal",
        redis_password="s3cret",
        redis_tls_ca_file=str(certs / "ca.crt"),
        redis_tls_cert_file=str(certs / "client.crt"),
        redis_tls_key_file=str(certs / "client.key"),
        key_prefix=key_prefix,
    ).validated()
    app = App(settings=settings, middleware=[])
    app.remote("tasks.pay", queue="payments").enqueue_many([(i,) for i in range(3)])

    # When a Queue names it, with the user, the password and the TLS files in Secrets
    files = {"ca.crt": "ca.crt", "tls.crt": "client.crt", "tls.key": "client.key"}
    pem = {key: (certs / file).read_bytes() for key, file in files.items()}
    kube.create(SECRETS, secret("redis-auth", username="shoal", password="s3cret"))
    kube.create(SECRETS, secret("redis-tls", **pem))
    spec = {
        "url": url,
        "usernameSecretRef": {"name": "redis-auth"},
        "passwordSecretRef": {"name": "redis-auth"},
        "tls": {
            "caSecretRef": {"name": "redis-tls"},
            "certSecretRef": {"name": "redis-tls"},
            "keySecretRef": {"name": "redis-tls"},
        },
        "keyPrefix": key_prefix,
    }
    payments = queue("payments", spec)
    payments["spec"]["defaults"] = {"maxRetries": 7}
    kube.create(QUEUES, payments)

    # Then the operator measures it over TLS and writes its defaults there
    q = wait_for(
        lambda: (o := kube.get(QUEUES, "payments")).get("status", {}).get("waiting") == 3 and o,
        message="3 waiting, measured over TLS",
    )
    assert condition(q, "RedisReachable")["status"] == "True"  # type: ignore[index]
    wait_for(lambda: app.queue_defaults("payments") == {"max_retries": 7}, message="defaults")

    # When the CA in the Secret is not the one that signed the server: unreachable, saying why
    other = dict(pem)
    other["ca.crt"] = (certs / "client.crt").read_bytes()  # a certificate, but not the CA
    kube.patch(SECRETS, "redis-tls", secret("redis-tls", **other))
    reachable = wait_for(
        lambda: (
            (c := condition(kube.get(QUEUES, "payments"), "RedisReachable"))
            and c["status"] == "False"
            and c
        ),
        message="RedisReachable=False with the wrong CA",
    )
    assert (
        "certificate" in reachable["message"] and "SHOAL_REDIS_TLS_CA_FILE" in reachable["message"]
    )
    app.close()
