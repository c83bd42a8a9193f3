"""A Queue's Redis connection, as pods get it (env and a TLS volume, secrets by reference) and as
the operator uses it (the same values read from the Secrets, to measure the queue).

``spec.redis`` names one server (``url``, ``urlSecretRef``), a Sentinel-managed master
(``sentinel``) or a Redis Cluster (``cluster``); credentials and TLS material stay in Secrets.
Here it becomes the ``SHOAL_REDIS_*`` settings the runtime reads, never a second URL dialect.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote

from shoal.errors import ConfigurationError
from shoal.redis_url import RedisUrl, parse_redis_url
from shoal_operator.errors import InvalidReference, MissingReference, SpecError

TLS_DIR = "/etc/shoal/redis-tls"
"""Where worker pods find the Queue's TLS files (``ca.crt``, ``tls.crt``, ``tls.key``)."""
TLS_VOLUME = "redis-tls"
TLS_FILE_MODE = 0o440
"""Read-only for the owner (root) and the group: the pod's fsGroup, the Shoal user's group, so
the non-root worker reads its key and nobody else in the pod does (the kubelet would add the
group bits for fsGroup anyway)."""


class SecretReader(Protocol):
    def read_namespaced_secret(self, name: str, namespace: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class TLS:
    """``spec.redis.tls``: which Secret keys hold the PEM files, and whether to verify."""

    ca: SecretKey | None
    cert: SecretKey | None
    key: SecretKey | None
    verify: bool

    def files(self) -> list[tuple[str, str, SecretKey]]:
        """(env var, file name in TLS_DIR, Secret key) of each file the spec names."""
        named = (
            ("SHOAL_REDIS_TLS_CA_FILE", "ca.crt", self.ca),
            ("SHOAL_REDIS_TLS_CERT_FILE", "tls.crt", self.cert),
            ("SHOAL_REDIS_TLS_KEY_FILE", "tls.key", self.key),
        )
        return [(env, file, ref) for env, file, ref in named if ref is not None]


@dataclass(frozen=True, slots=True)
class ResolvedRedis:
    """A target with its Secrets read: what the operator's own connection needs."""

    url: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls_ca: bytes | None = None
    tls_cert: bytes | None = None
    tls_key: bytes | None = field(default=None, repr=False)
    tls_verify: bool = True


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where a queue lives. Equal targets mean the same Redis, credentials and key prefix."""

    url: str | None
    """Given in the spec, or built from ``sentinel``/``cluster``; None: in ``url_secret``."""
    url_secret: SecretKey | None
    username_secret: SecretKey | None
    password_secret: SecretKey | None
    sentinel_username_secret: SecretKey | None
    sentinel_password_secret: SecretKey | None
    tls: TLS | None
    key_prefix: str
    queue: str = field(default="", compare=False)
    """The Queue it came from, for messages (two Queues on one Redis still share a target)."""

    @classmethod
    def from_queue(cls, name: str, spec: dict[str, Any]) -> RedisTarget:
        """Read ``spec.redis``; raise SpecError for what the CRD schema could not catch."""
        redis = spec.get("redis") or {}
        forms = [f for f in ("url", "urlSecretRef", "sentinel", "cluster") if redis.get(f)]
        if len(forms) != 1:
            raise SpecError(
                "InvalidRedis",
                f"Queue {name}: set exactly one of spec.redis.url, spec.redis.urlSecretRef, "
                f"spec.redis.sentinel and spec.redis.cluster (found "
                f"{', '.join(forms) or 'none'})",
            )
        tls = _tls(name, redis.get("tls"))
        sentinel = redis.get("sentinel") or {}
        url = redis.get("url") or None
        if url is not None:
            _check_given_url(name, url, tls)
        elif sentinel:
            url = _sentinel_url(name, sentinel, tls is not None)
        elif redis.get("cluster"):
            url = _cluster_url(name, redis["cluster"], tls is not None)
        return cls(
            url=url,
            url_secret=_ref(name, redis, "urlSecretRef", "url"),
            username_secret=_ref(name, redis, "usernameSecretRef", "username"),
            password_secret=_ref(name, redis, "passwordSecretRef", "password"),
            sentinel_username_secret=_ref(name, sentinel, "usernameSecretRef", "username"),
            sentinel_password_secret=_ref(name, sentinel, "passwordSecretRef", "password"),
            tls=tls,
            key_prefix=redis.get("keyPrefix", "shoal"),
            queue=name,
        )

    def env(self) -> list[dict[str, Any]]:
        """Container env reaching this Redis; secret values stay in their Secrets."""
        env: list[dict[str, Any]] = []
        if self.url_secret is not None:
            env.append(_from_secret("SHOAL_REDIS_URL", self.url_secret))
        else:
            env.append({"name": "SHOAL_REDIS_URL", "value": self.url})
        for env_name, ref in (
            ("SHOAL_REDIS_USERNAME", self.username_secret),
            ("SHOAL_REDIS_PASSWORD", self.password_secret),
            ("SHOAL_REDIS_SENTINEL_USERNAME", self.sentinel_username_secret),
            ("SHOAL_REDIS_SENTINEL_PASSWORD", self.sentinel_password_secret),
        ):
            if ref is not None:
                env.append(_from_secret(env_name, ref))
        if self.tls is not None:
            for env_name, file, _ in self.tls.files():
                env.append({"name": env_name, "value": f"{TLS_DIR}/{file}"})
            if not self.tls.verify:
                env.append({"name": "SHOAL_REDIS_TLS_VERIFY", "value": "false"})
        env.append({"name": "SHOAL_KEY_PREFIX", "value": self.key_prefix})
        return env

    def volumes(self) -> list[dict[str, Any]]:
        """The TLS files as one read-only projected volume: one source per referenced Secret,
        its ``items`` picking the keys, so a CA and a client certificate may live in different
        Secrets and still land in one directory (updated in place when a Secret rotates)."""
        if self.tls is None or not self.tls.files():
            return []
        items: dict[str, list[dict[str, str]]] = {}
        for _, file, ref in self.tls.files():
            items.setdefault(ref.name, []).append({"key": ref.key, "path": file})
        sources = [{"secret": {"name": secret, "items": keys}} for secret, keys in items.items()]
        return [
            {"name": TLS_VOLUME, "projected": {"defaultMode": TLS_FILE_MODE, "sources": sources}}
        ]

    def volume_mounts(self) -> list[dict[str, Any]]:
        if not self.volumes():
            return []
        return [{"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True}]

    def resolve(self, api: SecretReader, namespace: str) -> ResolvedRedis:
        """Every value the pods get by reference, read from the Secrets (each Secret once).
        MissingReference names a missing Secret or key; InvalidReference a URL in a Secret
        that cannot be used (not a Redis URL, or without TLS while spec.redis.tls is set)."""
        secrets = _Secrets(api, namespace)
        url = self.url
        if url is None:
            assert self.url_secret is not None
            url = secrets.text(self.url_secret) or ""
            self._check_secret_url(url, namespace)
        tls = self.tls
        return ResolvedRedis(
            url=url,
            username=secrets.text(self.username_secret),
            password=secrets.text(self.password_secret),
            sentinel_username=secrets.text(self.sentinel_username_secret),
            sentinel_password=secrets.text(self.sentinel_password_secret),
            tls_ca=secrets.read(tls.ca) if tls else None,
            tls_cert=secrets.read(tls.cert) if tls else None,
            tls_key=secrets.read(tls.key) if tls else None,
            tls_verify=tls.verify if tls else True,
        )

    def _check_secret_url(self, url: str, namespace: str) -> None:
        """What CEL checks on ``spec.redis.url``, for a URL it cannot see."""
        assert self.url_secret is not None
        where = f"Secret {namespace}/{self.url_secret.name} key {self.url_secret.key!r}"
        try:
            parsed = parse_redis_url(url)
        except ConfigurationError as exc:
            raise InvalidReference(
                "InvalidRedisURL", f"Queue {self.queue}: {where}: {exc}; fix the Secret"
            ) from None
        if self.tls is not None and not parsed.tls:
            raise InvalidReference(
                "TLSNeedsRediss",
                f"Queue {self.queue}: spec.redis.tls is set but {where} holds "
                f"{parsed.masked!r}, a URL without TLS; put a rediss:// (or rediss+sentinel://, "
                "rediss+cluster://) URL in the Secret, or remove spec.redis.tls",
            )


class _Secrets:
    """Secret values for one resolve: each Secret read once, missing ones named."""

    def __init__(self, api: SecretReader, namespace: str) -> None:
        self.api, self.namespace = api, namespace
        self._data: dict[str, dict[str, str]] = {}

    def read(self, ref: SecretKey | None) -> bytes | None:
        if ref is None:
            return None
        data = self._data.get(ref.name)
        if data is None:
            data = self._data[ref.name] = self._fetch(ref)
        if ref.key not in data:
            raise MissingReference(
                "SecretKeyNotFound",
                f"Secret {self.namespace}/{ref.name} has no key {ref.key!r} "
                f"(it has: {', '.join(sorted(data)) or 'none'})",
            )
        return base64.b64decode(data[ref.key])

    def text(self, ref: SecretKey | None) -> str | None:
        raw = self.read(ref)
        if raw is None:
            return None
        try:
            return raw.decode()
        except UnicodeDecodeError:
            assert ref is not None
            raise InvalidReference(
                "InvalidSecretValue",
                f"Secret {self.namespace}/{ref.name} key {ref.key!r} is not UTF-8 text; "
                "store the value as plain text",
            ) from None

    def _fetch(self, ref: SecretKey) -> dict[str, str]:
        try:
            secret = self.api.read_namespaced_secret(ref.name, self.namespace)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                raise MissingReference(
                    "SecretNotFound",
                    f"Secret {self.namespace}/{ref.name} does not exist; create it "
                    f"with the key {ref.key!r}",
                ) from None
            raise
        data: dict[str, str] = (
            secret.data if hasattr(secret, "data") else secret.get("data")
        ) or {}
        return data


def _ref(queue: str, obj: dict[str, Any], field_name: str, default_key: str) -> SecretKey | None:
    ref = obj.get(field_name)
    if not ref:
        return None
    if not ref.get("name"):
        raise SpecError(
            "InvalidRedis",
            f"Queue {queue}: {field_name} names no Secret; set its name (and key, default "
            f"{default_key!r})",
        )
    return SecretKey(ref["name"], ref.get("key") or default_key)


def _tls(queue: str, tls: dict[str, Any] | None) -> TLS | None:
    if tls is None:
        return None
    cert = _ref(queue, tls, "certSecretRef", "tls.crt")
    key = _ref(queue, tls, "keySecretRef", "tls.key")
    if (cert is None) != (key is None):
        raise SpecError(
            "TLSCertWithoutKey",
            f"Queue {queue}: a client certificate needs spec.redis.tls.certSecretRef and "
            "spec.redis.tls.keySecretRef; set both, or neither",
        )
    return TLS(
        ca=_ref(queue, tls, "caSecretRef", "ca.crt"),
        cert=cert,
        key=key,
        verify=bool(tls.get("verify", True)),
    )


def _check_given_url(queue: str, url: str, tls: TLS | None) -> None:
    if "@" in url.split("//", 1)[-1].split("/", 1)[0]:
        raise SpecError(
            "PasswordInURL",
            f"Queue {queue}: spec.redis.url must not carry a "
            "password; put it in a Secret and use "
            "spec.redis.passwordSecretRef",
        )
    parsed = _parse(queue, url, "spec.redis.url")
    if tls is not None and not parsed.tls:
        raise SpecError(
            "TLSNeedsRediss",
            f"Queue {queue}: spec.redis.tls is set but spec.redis.url {url!r} does not use TLS; "
            "use rediss:// (or rediss+sentinel://, rediss+cluster://), or remove spec.redis.tls",
        )


def _sentinel_url(queue: str, sentinel: dict[str, Any], tls: bool) -> str:
    hosts = _hosts(queue, sentinel.get("hosts"), "spec.redis.sentinel.hosts", "26379")
    master = sentinel.get("masterName")
    if not master:
        raise SpecError(
            "InvalidRedis",
            f"Queue {queue}: spec.redis.sentinel.masterName is missing; set the name the "
            "sentinels monitor the master by (`sentinel monitor NAME ...`)",
        )
    db = sentinel.get("db", 0)
    if not isinstance(db, int) or db < 0:
        raise SpecError(
            "InvalidRedis", f"Queue {queue}: spec.redis.sentinel.db {db!r} is not a number >= 0"
        )
    scheme = "rediss+sentinel" if tls else "redis+sentinel"
    url = f"{scheme}://{hosts}/{quote(str(master), safe='')}/{db}"
    _parse(queue, url, "spec.redis.sentinel")
    return url


def _cluster_url(queue: str, cluster: dict[str, Any], tls: bool) -> str:
    hosts = _hosts(queue, cluster.get("nodes"), "spec.redis.cluster.nodes", "6379")
    url = f"{'rediss+cluster' if tls else 'redis+cluster'}://{hosts}"
    _parse(queue, url, "spec.redis.cluster")
    return url


def _hosts(queue: str, hosts: Any, where: str, port: str) -> str:
    if not hosts or not all(isinstance(h, str) and h and "," not in h for h in hosts):
        raise SpecError(
            "InvalidRedis",
            f"Queue {queue}: {where} must list at least one host:port (e.g. redis-0.redis:{port})",
        )
    return ",".join(hosts)


def _parse(queue: str, url: str, where: str) -> RedisUrl:
    try:
        return parse_redis_url(url)
    except ConfigurationError as exc:
        raise SpecError("InvalidRedisURL", f"Queue {queue}: {where}: {exc}") from None


def _from_secret(env_name: str, ref: SecretKey) -> dict[str, Any]:
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
