"""One frozen dataclass per role, and the one way to fill it: defaults < TOML file (--config) < flags.

Every field that a user may set carries an :class:`Option` in its metadata: the flags that set it, the
help text, and a parser that turns a flag's string or a TOML value into the field's type (raising
``ValueError`` with a message that says what was expected). ``sesh/cli.py`` builds each subcommand's
argparse parser from these, so the flags, the TOML keys (the field names, ``-`` or ``_``) and the help
can never drift apart. Errors name the flag (``--lbmethod: expected ...``) or the file and key
(``node.toml: key 'lbmethod': expected ...``).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from sesh.core.session import MAX_INACTIVE_LIMIT


class ConfigError(Exception):
    """A configuration value is wrong; the message names the flag, or the file and key, to fix."""


Parser = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Option:
    flags: tuple[str, ...]
    help: str
    parse: Parser
    metavar: str | None = None
    # "value": takes one argument; "flag": a --x/--no-x switch; "count": -v, -vv; "append": repeatable;
    # "positional": an optional positional argument (its one "flag" is its name).
    kind: str = "value"
    # The section of --help the flag is listed in ("msm", "cluster"); "" for the role's common flags.
    group: str = ""


def option(
    default: Any,
    *flags: str,
    help: str,
    parse: Parser | None = None,
    metavar: str | None = None,
    kind: str = "value",
    group: str = "",
) -> Any:
    """A dataclass field that is also a flag and a TOML key."""
    if parse is None:
        parse = _parser_for_default(default, kind)
    meta = {"option": Option(tuple(flags), help, parse, metavar, kind, group)}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults: config is frozen")
    return field(default=default, metadata=meta)


def _parser_for_default(default: Any, kind: str) -> Parser:
    if kind in ("flag",) or isinstance(default, bool):
        return as_bool
    if kind == "count" or isinstance(default, int):
        return as_int()
    if isinstance(default, float):
        return as_float()
    return as_str


# -- value parsers: each takes a string (from a flag) or a TOML value, returns the typed value ---------


def as_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def as_int(lo: int | None = None, hi: int | None = None) -> Parser:
    def parse(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got {value!r}")
        if isinstance(value, int):
            number = value
        else:
            try:
                number = int(str(value), 10)
            except ValueError:
                raise ValueError(f"expected a whole number, got {value!r:.80}") from None
        _check_range(number, lo, hi)
        return number

    return parse


def as_float(lo: float | None = None, hi: float | None = None) -> Parser:
    def parse(value: Any) -> float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a number, got {value!r}") from None
        if number != number:
            raise ValueError("expected a number, got NaN")
        _check_range(number, lo, hi)
        return number

    return parse


def _check_range(number: float, lo: float | None, hi: float | None) -> None:
    if lo is not None and hi is not None and not lo <= number <= hi:
        raise ValueError(f"expected a value from {lo} to {hi}, got {number}")
    if lo is not None and number < lo:
        raise ValueError(f"expected a value of at least {lo}, got {number}")
    if hi is not None and number > hi:
        raise ValueError(f"expected a value of at most {hi}, got {number}")


def as_choice(*choices: str) -> Parser:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"expected {'|'.join(choices)}, got {value!r}")
        return str(value)

    return parse


def as_port(value: Any) -> int:
    port: int = as_int(0, 65535)(value)
    return port


_SIZE_SUFFIXES = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def as_size(value: Any) -> int:
    """A byte count with an optional k/m/g suffix, as memcached's ``-I 1m``."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"expected a positive size, got {value}")
        return value
    match = re.fullmatch(r"\s*(\d+)\s*([kKmMgG]?)[bB]?\s*", str(value))
    if not match:
        raise ValueError(f"expected a size such as 1048576, 512k or 1m, got {value!r}")
    size = int(match.group(1)) * _SIZE_SUFFIXES[match.group(2).lower()]
    if size < 1:
        raise ValueError(f"expected a positive size, got {value!r}")
    return size


def as_size_up_to(limit: int) -> Parser:
    """:func:`as_size` with an upper bound (a buffer the process would have to hold in memory)."""

    def parse(value: Any) -> int:
        size = as_size(value)
        if size > limit:
            raise ValueError(f"expected a size of at most {limit} bytes, got {size}")
        return size

    return parse


# RFC 6265's cookie-name is an RFC 7230 token: anything else (";", "=", spaces, CR/LF) would let the
# name split or end the Set-Cookie header the node builds from it.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def as_token(value: Any) -> str:
    text = as_str(value)
    if not _TOKEN.fullmatch(text):
        raise ValueError(f"expected a cookie name (letters, digits and !#$%&'*+-.^_`|~), got {text!r:.80}")
    return text


def as_url_path(value: Any) -> str:
    """An absolute URL path without query, parameters or anything a request target could not carry;
    empty disables what it locates."""
    text = as_str(value)
    if text and not re.fullmatch(r"/[A-Za-z0-9\-._~!$&'()*+,=:@/%]*", text):
        raise ValueError(f"expected an absolute path such as /sesh/status (or empty), got {text!r:.80}")
    return text


def as_secret(value: Any) -> str:
    """A token sent in a header or a query string: visible ASCII only, so comparing it is exact."""
    text = as_str(value)
    # '&', '#' and '%' would be read differently in a ?token= query; a space ends an Authorization value.
    if not re.fullmatch(r"[!-~]*", text) or any(c in text for c in "&#%"):
        raise ValueError("expected visible ASCII characters other than &, # and % (no spaces)")
    return text


def as_regex(value: Any) -> str:
    text = as_str(value)
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression ({exc}): {text!r}") from None
    return text


# httpd's mpm_event stops at ServerLimit 16 processes by default; each worker also keeps its own idle
# member connections, so more processes than that would mostly multiply those.
AUTO_WORKERS_LIMIT: Final = 16


def as_workers(value: Any) -> int | Literal["auto"]:
    """``auto`` (resolved when the role starts, from the CPUs it may run on) or a count from 1 to 64."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        count: int = as_int(1, 64)(value)
    except ValueError as exc:
        raise ValueError(f"expected auto or {exc.args[0].removeprefix('expected ')}") from None
    return count


def as_str_list(value: Any) -> tuple[str, ...]:
    """A comma-separated string, or a TOML array of strings."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"expected a comma-separated list or an array of strings, got {value!r}")


def request_head_timeout_option() -> Any:
    return option(
        20.0,
        "--request-head-timeout",
        help="seconds a request head may take from its first byte, on every request of a connection "
        "(httpd's mod_reqtimeout header=20); a slower client gets 408",
        parse=as_float(0.001),
    )


def max_connections_option(default_note: str = "") -> Any:
    return option(
        0,
        "--max-connections",
        help="concurrent client connections; past it new ones get 503 and are closed; 0: the open-file "
        f"limit less headroom{default_note}",
        parse=as_int(0),
    )


def log_level_option() -> Any:
    return option(
        "info",
        "--log-level",
        help="least severe log level written to stderr: debug|info|warning|error|critical",
        parse=as_choice("debug", "info", "warning", "error", "critical"),
    )


def verbose_option() -> Any:
    return option(0, "-v", "--verbose", help="log more: each -v lowers --log-level one step", kind="count")


def quiet_option() -> Any:
    return option(0, "-q", "--quiet", help="log less: each -q raises --log-level one step", kind="count")


# -- the roles ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeConfig:
    """``sesh node``: an app node (demo page or ASGI app) with its session backend."""

    mode: str = option(
        "local",
        "--mode",
        help="where sessions live: local (this process only), cluster (replicated to every peer), "
        "msm (backed up to memcached-protocol store nodes)",
        parse=as_choice("local", "cluster", "msm"),
    )
    name: str = option("node1", "--name", help="node name shown on the demo page and in status")
    route: str = option(
        "",
        "--route",
        help="route appended to session ids (Tomcat's jvmRoute) so a balancer can stick to this node; "
        "empty for none",
    )
    host: str = option("127.0.0.1", "--host", help="address to listen on")
    port: int = option(8081, "--port", help="TCP port to listen on; 0 picks a free one", parse=as_port)
    app: str = option(
        "",
        "--app",
        help="serve this ASGI 3 application (package.module:attr) instead of the demo page",
        metavar="MODULE:ATTR",
    )
    max_inactive: int = option(
        1800,
        "--max-inactive",
        help="seconds a session may stay idle before it expires (Tomcat's maxInactiveInterval), at most a "
        "year",
        # Every store exptime and expiry time is computed from it: bounded so they stay what memcached and
        # the node's date functions can carry (an unbounded one once broke a store connection).
        parse=as_int(1, MAX_INACTIVE_LIMIT),
    )
    expire_interval: float = option(
        10.0,
        "--expire-interval",
        help="seconds between sweeps that expire idle sessions",
        parse=as_float(0.01, 3600),
    )
    cookie_name: str = option("JSESSIONID", "--cookie-name", help="name of the session cookie", parse=as_token)
    cookie_secure: bool = option(
        False, "--cookie-secure", help="mark the session cookie Secure (HTTPS only)", kind="flag"
    )
    status_path: str = option(
        "/sesh/status",
        "--status-path",
        help="where the node's statistics (JSON) are served; empty to serve none. Answered to loopback "
        "clients that did not come through a proxy (no X-Forwarded-For), or to anyone with --status-token",
        parse=as_url_path,
    )
    status_token: str = option(
        "",
        "--status-token",
        help="token that opens the status path from anywhere, sent as 'Authorization: Bearer TOKEN' or "
        "?token=TOKEN; empty: loopback clients only",
        parse=as_secret,
    )
    max_body: int = option(
        1024 * 1024,
        "--max-body",
        help="largest request body accepted, in bytes (k/m suffixes allowed, at most 1g); larger gets 413",
        parse=as_size_up_to(1024**3),
    )
    shutdown_grace: float = option(
        10.0,
        "--shutdown-grace",
        help="seconds in-flight requests get to finish after SIGTERM/SIGINT",
        parse=as_float(0, 3600),
    )
    workers: int = option(
        1,
        "--workers",
        help="worker processes sharing the listening port (SO_REUSEPORT), to use every core; only with "
        "--mode msm --no-sticky, where every request loads its session from the store",
        parse=as_int(1, 64),
    )
    session_queue: int = option(
        64,
        "--session-queue",
        help="requests on one session run one at a time on this node; at most this many may run or "
        "wait per session, more are answered 503 with Retry-After (0: no serialization)",
        parse=as_int(0, 100_000),
    )
    session_reruns: int = option(
        8,
        "--session-reruns",
        help="times a re-runnable handler (the demo page, an --app-rerun app) is run again on the "
        "current session when its session write lost a race with another node; then 503",
        parse=as_int(0, 1000),
    )
    app_rerun: bool = option(
        False,
        "--app-rerun",
        help="the ASGI app may be run again for a request whose session write lost a race (it has no "
        "effects beyond its session); without it such a request is answered 503 with Retry-After",
        kind="flag",
    )
    log_level: str = log_level_option()
    verbose: int = verbose_option()
    quiet: int = quiet_option()
    # --- msm mode (memcached-session-manager's settings, same meaning) ---
    memcached_nodes: str = option(
        "",
        "--memcached-nodes",
        help="msm: store nodes as id:host:port,... (ids optional with one node), e.g. "
        "n1:127.0.0.1:11211,n2:127.0.0.1:11212; or Redis: redis://[user:password@]host:port (one server), "
        "several redis:// seeds of one Redis Cluster, rediss:// for TLS",
        group="msm",
    )
    sticky: bool = option(
        True,
        "--sticky",
        help="msm: keep sessions in memory and back them up to the store (sticky), or load them from "
        "the store every request (--no-sticky)",
        kind="flag",
        group="msm",
    )
    failover_nodes: str = option(
        "", "--failover-nodes", help="msm: store node ids used only when every other node is down",
        group="msm",
    )
    locking_mode: str = option(
        "none",
        "--locking-mode",
        help="msm non-sticky: none|all|auto|uriPattern:REGEX — which requests lock the session",
        group="msm",
    )
    request_uri_ignore_pattern: str = option(
        "",
        "--request-uri-ignore-pattern",
        help="msm: requests whose URI matches this regex neither load nor store the session",
        parse=as_regex,
        group="msm",
    )
    session_attribute_filter: str = option(
        "",
        "--session-attribute-filter",
        help="msm: only attributes whose name matches this regex are stored",
        parse=as_regex,
        group="msm",
    )
    session_backup_async: bool = option(
        False,
        "--session-backup-async",
        help="msm: write sessions to the store after the response instead of before it: faster, but "
        "the updates of the last moments before a node dies (those still queued) are lost although "
        "the client was told they succeeded",
        kind="flag",
        group="msm",
    )
    session_backup_timeout: float = option(
        1.0,
        "--session-backup-timeout",
        help="msm: seconds a synchronous store write may take before the session fails over to the "
        "next store node (then 503 if that fails too)",
        parse=as_float(0.001, 60),
        group="msm",
    )
    operation_timeout: float = option(
        1.0,
        "--operation-timeout",
        help="msm: seconds one store operation may take",
        parse=as_float(0.001, 60),
        group="msm",
    )
    lock_expiration: float = option(
        5.0,
        "--lock-expiration",
        help="msm: seconds after which a session lock left by a dead node expires",
        parse=as_float(0.1, 3600),
        group="msm",
    )
    storage_key_prefix: str = option(
        "",
        "--storage-key-prefix",
        help="msm: prefix of store keys: static:NAME, host, context, webappVersion (comma-separated)",
        group="msm",
    )
    # --- msm on Redis / Valkey (selected by redis:// or rediss:// URLs in --memcached-nodes) ---
    redis_wait_replicas: int = option(
        1,
        "--redis-wait-replicas",
        help="redis: acknowledge a write only once this many replicas have it (WAIT), at most the live "
        "replicas its shard has; 0 acknowledges on the primary alone (a failover may lose the last writes)",
        parse=as_int(0, 16),
        group="redis",
    )
    redis_wait_timeout: float = option(
        1.0,
        "--redis-wait-timeout",
        help="redis: seconds a write waits for its replicas before the request is answered 503",
        parse=as_float(0.001, 60),
        group="redis",
    )
    redis_failover_timeout: float = option(
        5.0,
        "--redis-failover-timeout",
        help="redis cluster: seconds a request waits for its slot's primary to be reachable again (a "
        "failover) before it is answered 503; about cluster-node-timeout plus a second or two",
        parse=as_float(0, 120),
        group="redis",
    )
    redis_tls_ca_file: str = option(
        "", "--redis-tls-ca-file", help="redis: CA certificates (PEM) that sign the servers' (rediss:// URLs)",
        group="redis",
    )
    redis_tls_cert_file: str = option(
        "", "--redis-tls-cert-file", help="redis: client certificate (PEM), for servers with tls-auth-clients",
        group="redis",
    )
    redis_tls_key_file: str = option(
        "", "--redis-tls-key-file", help="redis: the client certificate's private key (PEM)", group="redis",
    )
    # --- cluster mode ---
    members: tuple[str, ...] = option(
        (),
        "--member",
        help="cluster: a static peer's receiver host:port (repeatable); with --membership static",
        parse=as_str_list,
        kind="append",
        group="cluster",
    )
    request_head_timeout: float = request_head_timeout_option()
    max_connections: int = max_connections_option()
    membership: str = option(
        "multicast",
        "--membership",
        help="cluster: find peers by multicast heartbeats (McastService) or use the --member list (static)",
        parse=as_choice("multicast", "static"),
        group="cluster",
    )
    mcast_address: str = option(
        "228.0.0.4", "--mcast-address", help="cluster: multicast group of heartbeats",
        group="cluster",
    )
    mcast_port: int = option(
        45564, "--mcast-port", help="cluster: multicast port of heartbeats", parse=as_port,
        group="cluster",
    )
    mcast_bind: str = option(
        "127.0.0.1",
        "--mcast-bind",
        help="cluster: interface address heartbeats are sent and received on (127.0.0.1 keeps them on this "
        "host)",
        group="cluster",
    )
    mcast_ttl: int = option(
        0, "--mcast-ttl", help="cluster: multicast TTL (0: this host only)", parse=as_int(0, 255),
        group="cluster",
    )
    frequency: int = option(
        500, "--frequency", help="cluster: milliseconds between heartbeats", parse=as_int(10, 60_000),
        group="cluster",
    )
    drop_time: int = option(
        3000,
        "--drop-time",
        help="cluster: milliseconds without a heartbeat before a member is checked over TCP and dropped",
        parse=as_int(50, 600_000),
        group="cluster",
    )
    domain: str = option(
        "", "--domain", help="cluster: only members of this domain form a cluster (several share a group)",
        group="cluster",
    )
    receiver_address: str = option(
        "auto", "--receiver-address", help="cluster: address peers connect to (auto: the --mcast-bind address)",
        group="cluster",
    )
    receiver_port: int = option(
        4000, "--receiver-port", help="cluster: TCP port peers connect to; 0 picks a free one", parse=as_port,
        group="cluster",
    )
    auto_bind: int = option(
        100, "--auto-bind", help="cluster: how many ports from --receiver-port on to try", parse=as_int(1, 1000),
        group="cluster",
    )
    send_options: str = option(
        "ack",
        "--send-options",
        help="cluster: ack (the response waits until every live member applied the change; loses nothing) or "
        "async (Tomcat's channelSendOptions=8: sent after, may be lost)",
        parse=as_choice("ack", "async"),
        group="cluster",
    )
    ack_timeout: float = option(
        5.0,
        "--ack-timeout",
        help="cluster: seconds a member may take to acknowledge before it is checked and dropped",
        parse=as_float(0.01),
        group="cluster",
    )
    replication_filter: str = option(
        "",
        "--replication-filter",
        help="cluster: requests whose path matches this regex are assumed not to change the session (only "
        "its access time is sent); ReplicationValve's filter",
        parse=as_regex,
        group="cluster",
    )
    route_binder: bool = option(
        True,
        "--route-binder",
        help="cluster: a session that arrives with another node's route gets this node's (JvmRouteBinderValve; "
        "needs --route)",
        kind="flag",
        group="cluster",
    )
    state_transfer_timeout: float = option(
        60.0,
        "--state-transfer-timeout",
        help="cluster: seconds a joining node waits for every session from a peer before serving anyway",
        parse=as_float(0.1),
        group="cluster",
    )
    expire_sessions_on_shutdown: bool = option(
        False,
        "--expire-sessions-on-shutdown",
        help="cluster: invalidate this node's sessions everywhere when it stops (off: peers keep them)",
        kind="flag",
        group="cluster",
    )
    notify_listeners_on_replication: bool = option(
        True,
        "--notify-listeners-on-replication",
        help="cluster: accepted for Tomcat compatibility; sesh has no session listeners, so it has no effect",
        kind="flag",
        group="cluster",
    )
    cluster_secret: str = option(
        "", "--cluster-secret", help="cluster: shared secret that authenticates every frame and heartbeat",
        group="cluster",
    )
    cluster_secret_file: str = option(
        "", "--cluster-secret-file", help="cluster: read the shared secret from this file (first line)",
        group="cluster",
    )
    insecure_cluster: bool = option(
        False,
        "--insecure-cluster",
        help="cluster: allow a non-loopback interface without a secret (anyone who reaches it can write "
        "sessions)",
        kind="flag",
        group="cluster",
    )


@dataclass(frozen=True)
class MemberConfig:
    """One ``BalancerMember`` with httpd's parameters."""

    url: str
    route: str = ""
    loadfactor: int = 1
    redirect: str = ""
    lbset: int = 0
    status: str = ""
    retry: float = 60.0
    timeout: float = 300.0
    connectiontimeout: float = 5.0
    hcmethod: str = ""
    hcinterval: float = 30.0
    hcpasses: int = 1
    hcfails: int = 1
    hcuri: str = ""


def as_member_status(value: Any) -> str:
    """httpd's ``status=`` flags: ``+H`` hot standby, ``+D`` disabled, ``+S`` stopped, ``+N`` drain,
    ``+I`` ignore errors, ``+R`` hot spare (``-X`` clears, a bare letter sets)."""
    text = as_str(value)
    if not re.fullmatch(r"(?:[+-]?[HDSNIRE])*", text, re.IGNORECASE):
        raise ValueError(f"expected flags such as +H, +D, +S, +N, +I or +R, got {text!r}")
    return text


_MEMBER_PARSERS: dict[str, Parser] = {
    "route": as_str,
    "loadfactor": as_int(1, 100),
    "redirect": as_str,
    "lbset": as_int(0, 99),
    "status": as_member_status,
    "retry": as_float(0),
    "timeout": as_float(0.001),
    "connectiontimeout": as_float(0.001),
    "hcmethod": as_choice("", "GET", "HEAD", "TCP", "OPTIONS"),
    "hcinterval": as_float(0.01),
    "hcpasses": as_int(1),
    "hcfails": as_int(1),
    "hcuri": as_str,
}


def _member_from_mapping(raw: Mapping[str, Any]) -> MemberConfig:
    if "url" not in raw:
        raise ValueError("a member needs a url, e.g. 'http://127.0.0.1:8081 route=a'")
    url = as_str(raw["url"])
    if not re.fullmatch(r"http://[^/\s]+(/\S*)?", url):
        raise ValueError(f"member url must look like http://host:port, got {url!r}")
    values: dict[str, Any] = {"url": url.rstrip("/")}
    for key, value in raw.items():
        if key == "url":
            continue
        if key not in _MEMBER_PARSERS:
            raise ValueError(f"unknown member parameter {key!r} (known: {', '.join(_MEMBER_PARSERS)})")
        try:
            values[key] = _MEMBER_PARSERS[key](value)
        except ValueError as exc:
            raise ValueError(f"member parameter {key}: {exc}") from None
    return MemberConfig(**values)


def as_member(value: Any) -> MemberConfig:
    """``"http://127.0.0.1:8081 route=a loadfactor=1"`` or a TOML table with the same keys."""
    if isinstance(value, MemberConfig):
        return value
    if isinstance(value, Mapping):
        return _member_from_mapping(value)
    words = as_str(value).split()
    if not words:
        raise ValueError("expected 'URL [key=value ...]', got an empty string")
    raw: dict[str, Any] = {"url": words[0]}
    for word in words[1:]:
        key, sep, val = word.partition("=")
        if not sep:
            raise ValueError(f"expected key=value after the url, got {word!r}")
        raw[key.lower()] = val
    return _member_from_mapping(raw)


def as_members(value: Any) -> tuple[MemberConfig, ...]:
    if isinstance(value, (list, tuple)):
        return tuple(as_member(v) for v in value)
    return (as_member(value),)


def as_upgrade(value: Any) -> str:
    """A comma-separated list of Upgrade protocol names (RFC 9110 tokens), or ``none``."""
    text = as_str(value).strip().lower()
    if text in ("", "none"):
        return "none"
    names = [name.strip() for name in text.split(",")]
    if not all(name and all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~/") for c in name) for name in names):
        raise ValueError(f"expected protocol names like websocket (comma-separated) or none, got {value!r}")
    return ",".join(names)


@dataclass(frozen=True)
class BalancerConfig:
    """``sesh balancer``: mod_proxy_balancer's knobs with their httpd names."""

    host: str = option("127.0.0.1", "--host", help="address to listen on")
    port: int = option(8080, "--port", help="TCP port to listen on; 0 picks a free one", parse=as_port)
    members: tuple[MemberConfig, ...] = option(
        (),
        "--member",
        help="a BalancerMember: 'URL key=value ...' with route, loadfactor (1-100), redirect, lbset, "
        "status (+H hot standby, +D disabled, +S stopped, +N drain, +I ignore errors), retry, timeout, "
        "connectiontimeout, hcmethod, hcinterval, hcpasses, hcfails, hcuri; repeatable. In TOML: "
        "[[members]] tables with the same keys",
        parse=as_members,
        kind="append",
        metavar="'URL key=value ...'",
    )
    lbmethod: str = option(
        "byrequests",
        "--lbmethod",
        help="how a member is elected: byrequests (weighted request count), bytraffic (weighted bytes), "
        "bybusyness (fewest in-flight requests)",
        parse=as_choice("byrequests", "bytraffic", "bybusyness"),
    )
    stickysession: str = option(
        "",
        "--stickysession",
        help="session cookie and URL parameter names, e.g. JSESSIONID|jsessionid; empty for no stickiness",
    )
    stickysessionsep: str = option(
        ".", "--stickysessionsep", help="separator between session id and route in the sticky value"
    )
    scolonpathdelim: bool = option(
        False,
        "--scolonpathdelim",
        help="also find the sticky session in a ;jsessionid= path parameter",
        kind="flag",
    )
    nofailover: bool = option(
        False,
        "--nofailover",
        help="never send a sticky session to another member when its member is unusable (503 instead)",
        kind="flag",
    )
    maxattempts: int = option(
        -1,
        "--maxattempts",
        help="failover attempts before giving up; -1 means one per member",
        parse=as_int(-1),
    )
    failonstatus: str = option(
        "",
        "--failonstatus",
        help="member response statuses (comma-separated, e.g. 500,503) that put the member in error",
        parse=lambda value: _valid(failonstatus_codes, as_str(value)),
    )
    forcerecovery: bool = option(
        True,
        "--forcerecovery",
        help="when every member is in error, retry them all at once rather than answer 503",
        kind="flag",
    )
    timeout: float = option(
        0.0,
        "--timeout",
        help="seconds to wait for a free member when all are busy (0: do not wait)",
        parse=as_float(0),
    )
    preserve_host: bool = option(
        False, "--preserve-host", help="send the client's Host header to members (ProxyPreserveHost)",
        kind="flag",
    )
    via: bool = option(False, "--via", help="add a Via header (ProxyVia On)", kind="flag")
    path: str = option("/", "--path", help="the ProxyPass mount: only requests under this path are proxied")
    manager_path: str = option(
        "/balancer-manager",
        "--manager-path",
        help="where the balancer-manager page is served (the classic setup uses /status)",
    )
    manager_token: str = option(
        "",
        "--manager-token",
        help="token required for balancer-manager edits; one is generated and printed when empty",
    )
    send_timeout: float = option(
        60.0,
        "--send-timeout",
        help="seconds a client may take none of a response before its connection is closed (httpd's "
        "Timeout; toward members, each member's timeout applies)",
        parse=as_float(0.001),
    )
    upgrade: str = option(
        "websocket",
        "--upgrade",
        help="protocols a client may switch to through the balancer (Upgrade header), comma-separated; "
        "'none' for none (httpd's ProxyPass upgrade=)",
        parse=as_upgrade,
    )
    pool_size: int = option(
        64,
        "--pool-size",
        help="idle keep-alive connections kept per member",
        parse=as_int(0),
    )
    workers: int | Literal["auto"] = option(
        "auto",
        "--workers",
        help="worker processes sharing the listening port (SO_REUSEPORT) and the member state: a number "
        f"from 1 to 64, or auto: one per CPU this process may run on, at most {AUTO_WORKERS_LIMIT} (as "
        "httpd's mpm_event uses every core); 1 runs a single process",
        parse=as_workers,
    )
    shutdown_grace: float = option(
        10.0, "--shutdown-grace", help="seconds in-flight requests get after SIGTERM/SIGINT", parse=as_float(0)
    )
    log_level: str = log_level_option()
    verbose: int = verbose_option()
    quiet: int = quiet_option()
    request_head_timeout: float = request_head_timeout_option()
    max_connections: int = max_connections_option(", halved (each takes a member connection too)")


@dataclass(frozen=True)
class StoreConfig:
    """``sesh store``: a memcached-protocol server, flags as memcached's."""

    port: int = option(11211, "-p", "--port", help="TCP port to listen on; 0 picks a free one", parse=as_port)
    listen: str = option("127.0.0.1", "-l", "--listen", help="address to listen on")
    memory_limit: int = option(
        64, "-m", "--memory-limit", help="item memory in MiB before LRU eviction", parse=as_int(1)
    )
    max_item_size: int = option(
        1024 * 1024,
        "-I",
        "--max-item-size",
        help="largest item, in bytes (k/m suffixes allowed, as memcached's -I 1m)",
        parse=as_size,
    )
    conn_limit: int = option(
        1024, "-c", "--conn-limit", help="most simultaneous client connections", parse=as_int(1)
    )
    stall_timeout: float = option(
        30.0,
        "--stall-timeout",
        help="disconnect a client that stops this many seconds in the middle of a command or while "
        "its replies wait to be read (0: never, as memcached)",
        parse=as_float(0),
    )
    verbose: int = option(
        0, "-v", "--verbose", help="log more (-v, -vv), as memcached's -v; lowers --log-level", kind="count"
    )
    log_level: str = log_level_option()
    quiet: int = quiet_option()
    state_file: str = option(
        "",
        "--state-file",
        help="write every live item here on a graceful stop and load it at start (warm restart)",
        metavar="PATH",
    )


def as_role_settings(value: Any) -> tuple[tuple[str, str, Any], ...]:
    """``ROLE.KEY=VALUE`` (a flag), or a TOML table ``[set.ROLE]`` of KEY = VALUE: settings passed through
    to a role (``balancer``, ``node``, ``store``) or to one member (``node1``, ``store-n1``)."""
    if isinstance(value, str):
        target, sep, rest = value.partition(".")
        key, eq, raw = rest.partition("=")
        if not sep or not eq or not target or not key:
            raise ValueError(f"expected ROLE.KEY=VALUE such as node.max-inactive=600, got {value!r}")
        return ((target, key, raw),)
    if isinstance(value, Mapping):
        out: list[tuple[str, str, Any]] = []
        for target, table in value.items():
            if not isinstance(table, Mapping):
                raise ValueError(f"expected a table [set.{target}] of settings, got {table!r}")
            out.extend((str(target), str(key), raw) for key, raw in table.items())
        return tuple(out)
    raise ValueError(f"expected ROLE.KEY=VALUE or a table of role tables, got {value!r}")


def as_fault(value: Any) -> tuple[str, float]:
    """``TARGET@SECONDS``: a member name (or a shell command) and when, after the drill starts."""
    text = as_str(value)
    target, sep, when = text.rpartition("@")
    if not sep or not target:
        raise ValueError(f"expected TARGET@SECONDS such as node1@5, got {text!r}")
    seconds: float = as_float(0)(when)
    return (target, seconds)


def as_faults(value: Any) -> tuple[tuple[str, float], ...]:
    if isinstance(value, (list, tuple)):
        return tuple(as_fault(v) for v in value)
    return (as_fault(value),)


@dataclass(frozen=True)
class UpConfig:
    """``sesh up``: the seed's whole topology on localhost as supervised child processes."""

    mode: str = option(
        "msm",
        "--mode",
        help="the nodes' session mode: msm (store-backed, the seed), local (sessions die with their node: "
        "shows the drill finding losses) or cluster (replicated)",
        parse=as_choice("msm", "local", "cluster"),
    )
    sticky: bool = option(
        False,
        "--sticky",
        help="balancer stickysession JSESSIONID|jsessionid, nodes with routes a, b, ..., sticky msm with "
        "each node's own store node as its failover node (the seed's sticky variant)",
        kind="flag",
    )
    store: str = option(
        "sesh",
        "--store",
        help="what serves the store nodes: sesh (sesh store), memcached (Debian's memcached binary) or "
        "redis (a local Redis Cluster: 3 primaries + 3 replicas of Debian's redis-server; --stores is ignored)",
        parse=as_choice("sesh", "memcached", "redis"),
    )
    nodes: int = option(2, "--nodes", help="number of app nodes (node1, node2, ...)", parse=as_int(1, 32))
    stores: int = option(
        2, "--stores", help="number of store nodes (store-n1, store-n2, ...); msm mode only", parse=as_int(1, 32)
    )
    host: str = option("127.0.0.1", "--host", help="address every member listens on")
    port: int = option(
        8000,
        "--port",
        help="the balancer's port, fixed so its URL is predictable; 0 picks a free one. The other members "
        "get free ports unless set with --set MEMBER.port=N",
        parse=as_port,
    )
    set: tuple[tuple[str, str, Any], ...] = option(
        (),
        "--set",
        help="pass a setting through to a role or one member: ROLE.KEY=VALUE where ROLE is balancer, node, "
        "store or a member name (node1, store-n1) and KEY a flag of that role without dashes, e.g. "
        "node.max-inactive=600 (repeatable). In TOML: [set.node] tables",
        parse=as_role_settings,
        kind="append",
        metavar="ROLE.KEY=VALUE",
    )
    control_socket: str = option(
        "",
        "--control-socket",
        help="path of the control socket 'sesh ctl' talks to; default $XDG_RUNTIME_DIR (else the temp dir)"
        "/sesh-up-PORT.sock",
        metavar="PATH",
    )
    log_dir: str = option(
        "",
        "--log-dir",
        help="write each member's log lines to DIR/MEMBER.log instead of this terminal",
        metavar="DIR",
    )
    startup_timeout: float = option(
        20.0, "--startup-timeout", help="seconds a member may take to start listening", parse=as_float(0.1)
    )
    stop_timeout: float = option(
        15.0,
        "--stop-timeout",
        help="seconds a member gets to stop gracefully after SIGTERM before it is killed",
        parse=as_float(0.1),
    )
    log_level: str = log_level_option()
    verbose: int = verbose_option()
    quiet: int = quiet_option()


@dataclass(frozen=True)
class DemoConfig(UpConfig):
    """``sesh demo``: ``sesh up`` and ``sesh top`` in one process, members' logs in a directory."""


@dataclass(frozen=True)
class CtlConfig:
    """``sesh ctl``: list and control the members of a running ``sesh up``."""

    action: str = option(
        "list",
        "ACTION",
        help="list (every member's name, role, pid, URL and state), stop, start, kill (SIGKILL), restart, "
        "or info (URLs and the manager token)",
        parse=as_choice("list", "info", "stop", "start", "kill", "restart"),
        kind="positional",
    )
    member: str = option(
        "", "MEMBER", help="the member to act on, e.g. node1, store-n1, balancer", kind="positional"
    )
    control_socket: str = option(
        "",
        "--control-socket",
        help="the control socket of the 'sesh up' to talk to; default: the one running (found in "
        "$XDG_RUNTIME_DIR or the temp dir)",
        metavar="PATH",
    )
    port: int = option(
        0, "--port", help="find the control socket of the 'sesh up' whose balancer has this port", parse=as_port
    )
    json: bool = option(False, "--json", help="print the answer as JSON, for scripts", kind="flag")
    timeout: float = option(10.0, "--timeout", help="seconds to wait for an answer", parse=as_float(0.1))
    log_level: str = log_level_option()
    verbose: int = verbose_option()
    quiet: int = quiet_option()


@dataclass(frozen=True)
class TopConfig:
    """``sesh top``: a live dashboard of balancers, nodes and stores."""

    up: bool = option(
        False,
        "--up",
        help="watch the running 'sesh up' (its members, through its control socket); the default when no "
        "other target is given",
        kind="flag",
    )
    control_socket: str = option(
        "", "--control-socket", help="the control socket of the 'sesh up' to watch", metavar="PATH"
    )
    balancers: tuple[str, ...] = option(
        (), "--balancer", help="a balancer URL to watch, with the members it lists (repeatable)",
        parse=as_str_list, kind="append", metavar="URL",
    )
    nodes: tuple[str, ...] = option(
        (), "--node", help="a node URL to watch (repeatable)", parse=as_str_list, kind="append", metavar="URL"
    )
    stores: tuple[str, ...] = option(
        (), "--store", help="a store host:port to watch, read with memcached 'stats' (repeatable)",
        parse=as_str_list, kind="append", metavar="HOST:PORT",
    )
    manager_path: str = option(
        "/status", "--manager-path", help="the balancer-manager path of --balancer URLs"
    )
    manager_token: str = option(
        "", "--manager-token", help="the balancer-manager token for d/e (known by 'sesh up' when watched)"
    )
    interval: float = option(1.0, "--interval", help="seconds between polls", parse=as_float(0.05))
    timeout: float = option(0.8, "--timeout", help="seconds one poll of one target may take", parse=as_float(0.01))
    once: bool = option(False, "--once", help="print one frame and exit", kind="flag")
    json: bool = option(False, "--json", help="print one snapshot as JSON and exit", kind="flag")
    log_level: str = log_level_option()
    verbose: int = verbose_option()
    quiet: int = quiet_option()


@dataclass(frozen=True)
class DrillConfig:
    """``sesh drill``: simulated browsers through the balancer while members are killed; a loss report."""

    url: str = option("http://127.0.0.1:8000/", "--url", help="the balancer URL the browsers load")
    browsers: int = option(20, "--browsers", help="simulated browsers, each with its own cookie jar",
                           parse=as_int(1, 1000))
    duration: float = option(15.0, "--duration", help="seconds of load", parse=as_float(0.1, 3600))
    kills: tuple[tuple[str, float], ...] = option(
        (), "--kill", help="SIGKILL a member of the running 'sesh up' at a time: MEMBER@SECONDS, e.g. node1@5 "
        "(repeatable)", parse=as_faults, kind="append", metavar="MEMBER@T",
    )
    restarts: tuple[tuple[str, float], ...] = option(
        (), "--restart", help="restart (stop, then start) a member at a time: MEMBER@SECONDS (repeatable)",
        parse=as_faults, kind="append", metavar="MEMBER@T",
    )
    stops: tuple[tuple[str, float], ...] = option(
        (), "--stop", help="stop a member gracefully (SIGTERM, its own shutdown path) at a time: MEMBER@SECONDS "
        "(repeatable)", parse=as_faults, kind="append", metavar="MEMBER@T",
    )
    starts: tuple[tuple[str, float], ...] = option(
        (), "--start", help="start a stopped or killed member at a time: MEMBER@SECONDS (repeatable)",
        parse=as_faults, kind="append", metavar="MEMBER@T",
    )
    kill_cmds: tuple[tuple[str, float], ...] = option(
        (), "--kill-cmd", help="run a shell command at a time: 'SHELL CMD'@SECONDS (repeatable)",
        parse=as_faults, kind="append", metavar="'CMD'@T",
    )
    hot_session: bool = option(
        False, "--hot-session",
        help="also send as many concurrent requests as --browsers on one shared session, checking every "
        "answer's hit count is distinct and the final count covers every acknowledged one",
        kind="flag",
    )
    control_socket: str = option(
        "", "--control-socket", help="the control socket of the 'sesh up' running the members; default: the "
        "one named after --url's port", metavar="PATH",
    )
    request_timeout: float = option(5.0, "--request-timeout", help="seconds one request may take",
                                    parse=as_float(0.01))
    think: float = option(0.0, "--think", help="seconds each browser waits between requests",
                          parse=as_float(0))
    json: bool = option(False, "--json", help="print the report as JSON", kind="flag")
    progress: bool = option(True, "--progress", help="show a progress bar while it runs (on a terminal)",
                            kind="flag")
    log_level: str = log_level_option()
    verbose: int = verbose_option()
    quiet: int = quiet_option()


# -- cross-field rules: one place per role and mode ------------------------------------------------
#
# A value's own check is its option's parser. A rule that needs several fields is a function of the
# whole config, registered here with @rule(RoleConfig) or @rule(NodeConfig, mode="msm"); load() runs a
# role's rules (and its mode's) once every value is parsed. Each raises ConfigError naming the flag to fix.

Rule = Callable[[Any], None]
_RULES: dict[type, list[tuple[str, Rule]]] = {}


def rule(cls: type, *, mode: str = "") -> Callable[[Rule], Rule]:
    """Register a cross-field rule of ``cls`` (only when ``cfg.mode == mode``, if given)."""

    def register(fn: Rule) -> Rule:
        _RULES.setdefault(cls, []).append((mode, fn))
        return fn

    return register


def check(cfg: object) -> None:
    """Run every rule of ``cfg``'s role (and of its mode), in the order they are written here."""
    mode = getattr(cfg, "mode", "")
    for cls in type(cfg).__mro__:
        for when, fn in _RULES.get(cls, ()):
            if not when or when == mode:
                fn(cfg)


_STORE_NODE_ID = re.compile(r"[A-Za-z0-9_~]+")


def store_node_entries(text: str) -> tuple[tuple[str, str, int], ...]:
    """``--memcached-nodes``: ``n1:host:port,n2:host:port`` (or ``host:port`` for a single node, whose
    id is then empty) as (id, host, port); ValueError saying what is wrong."""
    entries = [part.strip() for part in text.split(",") if part.strip()]
    if not entries:
        raise ValueError("msm mode needs at least one store node, e.g. n1:127.0.0.1:11211")
    nodes: list[tuple[str, str, int]] = []
    for entry in entries:
        parts = entry.split(":")
        if len(parts) == 2:
            if len(entries) > 1:
                raise ValueError(f"{entry!r} has no node id; ids are required with several nodes")
            node_id, host, port_text = "", parts[0], parts[1]
        elif len(parts) == 3:
            node_id, host, port_text = parts
            if not _STORE_NODE_ID.fullmatch(node_id):
                raise ValueError(f"node id {node_id!r} may contain only letters, digits, '_' and '~'")
        else:
            raise ValueError(f"expected id:host:port, got {entry!r}")
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"expected id:host:port with a port 1-65535, got {entry!r}")
        if any(n[0] == node_id for n in nodes):
            raise ValueError(f"node id {node_id!r} appears twice")
        nodes.append((node_id, host, int(port_text)))
    return tuple(nodes)


def failonstatus_codes(text: str) -> frozenset[int]:
    """``--failonstatus``: comma-separated HTTP statuses; ValueError if one is not a status."""
    statuses = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        if not part.isdigit() or not 100 <= int(part) <= 599:
            raise ValueError(f"expected HTTP statuses such as 500,503, got {text!r}")
        statuses.add(int(part))
    return frozenset(statuses)


def _valid(check: Callable[[str], object], text: str) -> str:
    """``text`` once ``check`` accepts it (a parser for a str field whose form is checked)."""
    check(text)
    return text


def _flagged(flag: str, check: Callable[[], object]) -> Any:
    try:
        return check()
    except ValueError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


@rule(NodeConfig, mode="msm")
def _msm_nodes_and_stickiness(cfg: NodeConfig) -> None:
    """memcached-session-manager warns about these and carries on with something the operator did not
    ask for; sesh refuses them (see sesh/node/msm/settings.py)."""
    entries = [part.strip() for part in cfg.memcached_nodes.split(",") if part.strip()]
    redis = [e for e in entries if e.startswith(("redis://", "rediss://"))]
    if redis:
        _msm_on_redis(cfg, entries, redis)
        nodes: tuple[tuple[str, str, int], ...] = (("", "", 0),)
    else:
        nodes = _flagged("--memcached-nodes", lambda: store_node_entries(cfg.memcached_nodes))
    ids = [n[0] for n in nodes]
    failover = {part.strip() for part in cfg.failover_nodes.split(",") if part.strip()}
    if failover:
        if not cfg.sticky:
            raise ConfigError("--failover-nodes: only used with --sticky (non-sticky sessions are backed up "
                              "to the next node instead); drop it")
        if len(nodes) == 1:
            raise ConfigError("--failover-nodes: with a single store node there is nothing to fail over to")
        unknown = sorted(failover - set(ids))
        if unknown:
            raise ConfigError(f"--failover-nodes: unknown node id {unknown[0]!r} (known: {', '.join(ids)})")
        if failover >= set(ids):
            raise ConfigError("--failover-nodes: every node is a failover node, so none would hold sessions "
                              "normally; leave at least one out")
    if cfg.sticky and cfg.locking_mode != "none":
        raise ConfigError("--locking-mode: only used with --no-sticky (a sticky session is used by one node "
                          "only); drop it or add --no-sticky")
    if not cfg.sticky and cfg.route:
        raise ConfigError("--route: a --no-sticky node must not have a route: the balancer would pin sessions "
                          "on it through the id; drop --route and balance without stickysession")


def _msm_on_redis(cfg: NodeConfig, entries: list[str], redis: list[str]) -> None:
    """Redis URLs name one store (a server or the seeds of one cluster), which replicates and fails over
    by itself; each URL itself is parsed with the store's settings (sesh/node/msm/settings.py)."""
    if len(redis) != len(entries):
        raise ConfigError("--memcached-nodes: redis:// URLs and memcached nodes cannot be mixed; give only "
                          "the Redis URLs (one server, or seeds of one cluster)")
    if cfg.failover_nodes.strip():
        raise ConfigError("--failover-nodes: not used with Redis (it fails over by itself); drop it")
    if any(e.startswith("redis://") for e in redis) and (cfg.redis_tls_ca_file or cfg.redis_tls_cert_file):
        raise ConfigError("--redis-tls-ca-file: TLS options need rediss:// URLs in --memcached-nodes")


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


@rule(NodeConfig, mode="cluster")
def _cluster_membership_and_secret(cfg: NodeConfig) -> None:
    if cfg.cluster_secret_file and cfg.cluster_secret:
        raise ConfigError("--cluster-secret-file: give either --cluster-secret or --cluster-secret-file")
    if cfg.membership == "static" and not cfg.members:
        raise ConfigError("--membership static: give the peers with --member host:port (repeatable)")
    if cfg.membership == "multicast" and cfg.members:
        raise ConfigError("--member: static members need --membership static")
    receiver = cfg.mcast_bind if cfg.receiver_address == "auto" else cfg.receiver_address
    exposed = [a for a in (receiver, cfg.mcast_bind) if not _is_loopback(a)]
    # A --cluster-secret-file counts as a secret here; an empty one is refused when it is read.
    if exposed and not (cfg.cluster_secret or cfg.cluster_secret_file) and not cfg.insecure_cluster:
        raise ConfigError(
            f"--cluster-secret: the cluster listens on {exposed[0]} without a secret, so anyone who reaches it "
            "could read and write sessions; give --cluster-secret(-file), or --insecure-cluster to accept that"
        )


@rule(BalancerConfig)
def _balancer_members(cfg: BalancerConfig) -> None:
    if not cfg.members:
        raise ConfigError("--member: at least one member is needed, e.g. --member 'http://127.0.0.1:8081 route=a'")
    routes = [m.route for m in cfg.members if m.route]
    if len(routes) != len(set(routes)):
        raise ConfigError("--member: two members have the same route")


# memcached's own bounds for -I (ITEM_SIZE_MAX_LOWER_LIMIT / UPPER_LIMIT).
ITEM_SIZE_MIN = 1024
ITEM_SIZE_MAX = 1024 * 1024 * 1024


@rule(StoreConfig)
def _store_item_size(cfg: StoreConfig) -> None:
    """Refuse what memcached refuses at start."""
    if not ITEM_SIZE_MIN <= cfg.max_item_size <= ITEM_SIZE_MAX:
        raise ConfigError(
            f"-I/--max-item-size: expected {ITEM_SIZE_MIN} to {ITEM_SIZE_MAX} bytes, got {cfg.max_item_size}"
        )
    if cfg.max_item_size > cfg.memory_limit * 1024 * 1024 // 2:
        raise ConfigError(
            f"-I/--max-item-size: {cfg.max_item_size} bytes is more than half of -m/--memory-limit "
            f"({cfg.memory_limit} MiB), as memcached also refuses"
        )


RoleConfig = TypeVar("RoleConfig")


def options_of(cls: type[Any]) -> list[tuple[dataclasses.Field[Any], Option]]:
    return [(f, f.metadata["option"]) for f in dataclasses.fields(cls) if "option" in f.metadata]


def load(
    cls: type[RoleConfig], flags: Mapping[str, Any], config_file: str | None = None, *, rules: bool = True
) -> RoleConfig:
    """Build a role's config: defaults < ``config_file`` (TOML) < ``flags`` (field name -> raw value), then
    check its cross-field rules (``rules=False``: values only, for a partial set such as ``sesh up --set``)."""
    known = {f.name: (f, opt) for f, opt in options_of(cls)}
    values: dict[str, Any] = {}
    if config_file:
        for key, raw in _read_toml(config_file).items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(
                    f"{config_file}: unknown key {key!r} (known: {', '.join(sorted(known))})"
                )
            opt = known[name][1]
            try:
                values[name] = _apply(opt, raw, from_file=True)
            except ValueError as exc:
                raise ConfigError(f"{config_file}: key {key!r}: {exc}") from None
    for name, raw in flags.items():
        _fld, opt = known[name]
        try:
            values[name] = _apply(opt, raw, from_file=False)
        except ValueError as exc:
            raise ConfigError(f"{opt.flags[-1]}: {exc}") from None
    cfg = cls(**values)
    if rules:
        check(cfg)
    return cfg


def _apply(opt: Option, raw: Any, *, from_file: bool) -> Any:
    if opt.kind == "append":
        items = raw if isinstance(raw, (list, tuple)) else [raw]
        if from_file and isinstance(raw, str):
            items = [raw]
        parsed: list[Any] = []
        for item in items:
            value = opt.parse(item)
            parsed.extend(value if isinstance(value, tuple) else (value,))
        return tuple(parsed)
    return opt.parse(raw)


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
