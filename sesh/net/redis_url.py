"""Redis store URLs and options: parsed without importing the Redis client (coredis), which only a node
configured for Redis loads."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class RedisSetupError(Exception):
    """A misconfiguration the operator must fix (credentials, TLS, cluster mode); names the flag."""


@dataclass(frozen=True, slots=True)
class RedisURL:
    tls: bool
    host: str
    port: int
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:  # never the password
        user = f"{self.username}@" if self.username else ""
        return f"{'rediss' if self.tls else 'redis'}://{user}{self.host}:{self.port}"


def is_redis_url(text: str) -> bool:
    return text.startswith(("redis://", "rediss://"))


def parse_redis_url(text: str) -> RedisURL:
    """``redis[s]://[user[:password]@]host[:port]``; ValueError otherwise."""
    parts = urlsplit(text)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise ValueError(f"expected redis://[user:password@]host:port or rediss://..., got {text!r}")
    if parts.path not in ("", "/", "/0") or parts.query or parts.fragment:
        raise ValueError(f"{text!r}: only database 0 is used (Redis Cluster has no other); drop the path")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{text!r}: the port must be 1-65535") from None
    return RedisURL(
        tls=parts.scheme == "rediss",
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


@dataclass(frozen=True, slots=True)
class RedisOptions:
    operation_timeout: float = 1.0  # one call to one node
    failover_timeout: float = 5.0  # how long a call for a slot without a reachable primary is retried
    wait_replicas: int = 1  # WAIT for this many replicas (at most the shard's live ones); 0: never
    wait_timeout: float = 1.0
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
