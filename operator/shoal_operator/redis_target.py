"""A Queue's Redis connection, as pods get it (env, secrets by reference) and as the operator
uses it (the URL and password read from the Secrets, to measure the queue)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Protocol

from shoal_operator.errors import MissingReference, SpecError


class SecretReader(Protocol):
    def read_namespaced_secret(self, name: str, namespace: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class SecretKey:
    name: str
    key: str


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where a queue lives. Equal targets mean the same Redis and key prefix."""

    url: str | None
    url_secret: SecretKey | None
    password_secret: SecretKey | None
    key_prefix: str

    @classmethod
    def from_queue(cls, name: str, spec: dict[str, Any]) -> RedisTarget:
        """Read ``spec.redis``; raise SpecError for what the CRD schema could not catch."""
        redis = spec.get("redis") or {}
        url, url_ref = redis.get("url"), redis.get("urlSecretRef")
        if bool(url) == bool(url_ref):
            raise SpecError(
                "InvalidRedis",
                f"Queue {name}: set exactly one of spec.redis.url and spec.redis.urlSecretRef",
            )
        if url and "@" in url.split("//", 1)[-1].split("/", 1)[0]:
            raise SpecError(
                "PasswordInURL",
                f"Queue {name}: spec.redis.url must not carry a "
                "password; put it in a Secret and use "
                "spec.redis.passwordSecretRef",
            )
        pw_ref = redis.get("passwordSecretRef")
        return cls(
            url=url or None,
            url_secret=SecretKey(url_ref["name"], url_ref.get("key", "url")) if url_ref else None,
            password_secret=SecretKey(pw_ref["name"], pw_ref.get("key", "password"))
            if pw_ref
            else None,
            key_prefix=redis.get("keyPrefix", "shoal"),
        )

    def env(self) -> list[dict[str, Any]]:
        """Container env reaching this Redis; secret values stay in their Secrets."""
        env: list[dict[str, Any]] = []
        if self.url_secret is not None:
            env.append(_from_secret("SHOAL_REDIS_URL", self.url_secret))
        else:
            env.append({"name": "SHOAL_REDIS_URL", "value": self.url})
        if self.password_secret is not None:
            env.append(_from_secret("SHOAL_REDIS_PASSWORD", self.password_secret))
        env.append({"name": "SHOAL_KEY_PREFIX", "value": self.key_prefix})
        return env

    def resolve(self, api: SecretReader, namespace: str) -> tuple[str, str | None]:
        """The URL and password, read from the Secrets when referenced."""
        url = self.url or self._read(api, namespace, self.url_secret)
        password = (
            self._read(api, namespace, self.password_secret) if self.password_secret else None
        )
        return url, password

    @staticmethod
    def _read(api: SecretReader, namespace: str, ref: SecretKey | None) -> str:
        assert ref is not None
        try:
            secret = api.read_namespaced_secret(ref.name, namespace)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:
                raise MissingReference(
                    "SecretNotFound",
                    f"Secret {namespace}/{ref.name} does not exist; create it "
                    f"with the key {ref.key!r}",
                ) from None
            raise
        data = (secret.data if hasattr(secret, "data") else secret.get("data")) or {}
        if ref.key not in data:
            raise MissingReference(
                "SecretKeyNotFound",
                f"Secret {namespace}/{ref.name} has no key {ref.key!r} "
                f"(it has: {', '.join(sorted(data)) or 'none'})",
            )
        return base64.b64decode(data[ref.key]).decode()


def _from_secret(env_name: str, ref: SecretKey) -> dict[str, Any]:
    return {"name": env_name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
