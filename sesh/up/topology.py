"""The plan of a ``sesh up`` topology: which members, on which ports, with which command lines.

Pure apart from picking free ports: :func:`plan` turns an :class:`UpConfig` into :class:`MemberSpec`
values, every port decided up front so a member restarted later comes back on the same address (the
balancer's member list and the nodes' ``--memcached-nodes`` never change). Settings passed through with
``--set ROLE.KEY=VALUE`` (or ``[set.ROLE]`` tables) are checked against that role's own config dataclass
here, so a typo is reported before anything starts, naming the setting.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import socket
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sesh.config import (
    BalancerConfig,
    ConfigError,
    MemberConfig,
    NodeConfig,
    StoreConfig,
    UpConfig,
    load,
    options_of,
)
from sesh.net.control_client import default_control_socket

SESH_PY = Path(__file__).resolve().parent.parent.parent / "sesh.py"
ROLE_CONFIGS: dict[str, type[Any]] = {"balancer": BalancerConfig, "node": NodeConfig, "store": StoreConfig}
STICKYSESSION = "JSESSIONID|jsessionid"
MANAGER_PATH = "/status"
# memcached's own flags for the store settings that have one; anything else has no memcached equivalent.
MEMCACHED_FLAGS = {"memory_limit": "-m", "max_item_size": "-I", "conn_limit": "-c"}
REDIS_NODES = 6  # --store redis: 3 primaries + 3 replicas
REDIS_SETUP = "redis-cluster"  # the member that makes the six one cluster
REDIS_NODE_TIMEOUT_MS = 1000  # a failover in about 2 s on loopback (Redis's default is 15 s)


@dataclass(frozen=True, slots=True)
class MemberSpec:
    name: str  # balancer, node1, store-n1
    role: str  # balancer | node | store
    argv: tuple[str, ...]
    host: str
    port: int
    url: str
    # "line": ready when it prints "listening on URL" (every sesh role); "port": when the port accepts
    # (Debian's memcached prints nothing).
    ready: str = "line"


@dataclass(frozen=True, slots=True)
class Plan:
    members: tuple[MemberSpec, ...]
    balancer_url: str
    manager_path: str
    manager_token: str
    control_socket: str
    mode: str
    sticky: bool
    scratch_dir: str = ""  # --store redis: the members' data directories, removed when sesh up stops

    def member(self, name: str) -> MemberSpec | None:
        return next((m for m in self.members if m.name == name), None)

    def by_role(self, role: str) -> list[MemberSpec]:
        return [m for m in self.members if m.role == role]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def _member_names(cfg: UpConfig) -> dict[str, str]:
    names = {"balancer": "balancer"}
    names.update({f"node{i}": "node" for i in range(1, cfg.nodes + 1)})
    if cfg.mode == "msm" and cfg.store == "redis":
        names.update({f"store-r{i}": "store" for i in range(1, REDIS_NODES + 1)})
        names[REDIS_SETUP] = "store"
    elif cfg.mode == "msm":
        names.update({f"store-n{i}": "store" for i in range(1, cfg.stores + 1)})
    return names


def _redis_port(host: str) -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    for _ in range(100):
        port = free_port(host)
        if port < 55535:
            with socket.socket() as s:
                try:
                    s.bind((host, port + 10000))
                except OSError:
                    continue
            return port
    raise ConfigError("--store redis: no free port pair (port, port + 10000) for a Redis Cluster node")


def _redis_cluster(settings: Mapping[str, Mapping[str, Any]], names: Mapping[str, str], host: str,
                   run_dir: Path) -> list[MemberSpec]:
    """Six redis-server members in cluster mode and the member that joins them into one cluster (with
    ``redis-cli --cluster create --cluster-replicas 1``) and then stays up, so that the nodes start once
    the cluster serves every slot. Each member's files live in a directory of this ``sesh up`` run, so
    a member restarted with ``sesh ctl`` rejoins the cluster with its identity (``nodes.conf``)."""
    server = shutil.which("redis-server")
    cli = shutil.which("redis-cli")
    if server is None or cli is None:
        raise ConfigError("--store: redis is not installed (apt-get install redis-server redis-tools), "
                          "use --store sesh")
    members: list[MemberSpec] = []
    for name in (n for n in names if n.startswith("store-r")):
        raw = settings.get(name, {}).get("port")
        port = int(raw) if raw else _redis_port(host)
        directory = run_dir / str(port)
        command = (f"mkdir -p {shlex.quote(str(directory))} && exec {shlex.quote(server)} --bind {host} "
                   f"--port {port} --cluster-enabled yes --cluster-config-file nodes.conf "
                   f"--cluster-node-timeout {REDIS_NODE_TIMEOUT_MS} --save '' --appendonly no "
                   f"--dir {shlex.quote(str(directory))} --loglevel warning --repl-diskless-sync-delay 0")
        members.append(MemberSpec(name, "store", ("/bin/sh", "-c", command), host, port,
                                  f"redis://{host}:{port}", "port"))
    ports = [m.port for m in members]
    each = " ".join(str(p) for p in ports)
    addresses = " ".join(f"{host}:{p}" for p in ports)
    first = f"{shlex.quote(cli)} -h {host} -p {ports[0]}"
    script = (
        f"for p in {each}; do until {shlex.quote(cli)} -h {host} -p $p ping >/dev/null 2>&1; do sleep 0.1; done; done; "
        f"if ! {first} cluster info | grep -q cluster_state:ok; then "
        f"{shlex.quote(cli)} --cluster create {addresses} --cluster-replicas 1 --cluster-yes || exit 1; fi; "
        f"until {first} cluster info | grep -q cluster_state:ok; do sleep 0.1; done; "
        # Ready once every replica holds its primary's data: a replica that never synced cannot take over.
        f"for p in {each}; do until {shlex.quote(cli)} -h {host} -p $p info replication "
        f"| grep -Eq 'role:master|master_link_status:up'; do sleep 0.1; done; done; "
        f"echo 'redis cluster of {len(ports)} nodes listening on redis://{host}:{ports[0]}'; exec sleep infinity"
    )
    members.append(MemberSpec(REDIS_SETUP, "store", ("/bin/sh", "-c", script), host, ports[0],
                              f"redis://{host}:{ports[0]}"))
    return members


def _check_settings(cfg: UpConfig, names: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """``{target: {field name: raw value}}``, each value checked by the role's own parser."""
    out: dict[str, dict[str, Any]] = {}
    for target, key, raw in cfg.set:
        role = target if target in ROLE_CONFIGS else names.get(target)
        if role is None:
            known = ", ".join([*ROLE_CONFIGS, *names])
            raise ConfigError(f"--set {target}.{key}: no role or member {target!r} (known: {known})")
        cls = ROLE_CONFIGS[role]
        fields = {f.name: opt for f, opt in options_of(cls)}
        name = key.replace("-", "_")
        if name not in fields or fields[name].kind == "positional":
            raise ConfigError(f"--set {target}.{key}: 'sesh {role}' has no setting {key!r} "
                              f"(known: {', '.join(sorted(fields))})")
        try:
            load(cls, {name: raw}, rules=False)  # the member's own start checks the whole config
        except ConfigError as exc:
            raise ConfigError(f"--set {target}.{key}: {exc}") from None
        if role == "store" and cfg.store == "redis" and name != "port":
            raise ConfigError(f"--set {target}.{key}: with --store redis only a store's port can be set")
        if role == "store" and cfg.store == "memcached" and name not in (*MEMCACHED_FLAGS, "port"):
            raise ConfigError(f"--set {target}.{key}: memcached has no such setting (with --store memcached "
                              f"only port, {', '.join(sorted(MEMCACHED_FLAGS))})")
        out.setdefault(target, {})[name] = raw
    return out


def _merged(settings: Mapping[str, Mapping[str, Any]], role: str, name: str, base: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    merged.update(settings.get(role, {}))
    merged.update(settings.get(name, {}))
    return merged


def _port_of(settings: Mapping[str, Mapping[str, Any]], name: str, host: str) -> int:
    raw = settings.get(name, {}).get("port")
    if raw is None or int(raw) == 0:
        return free_port(host)
    return int(raw)


def _argv(role: str, values: Mapping[str, Any]) -> list[str]:
    """``values`` (field name -> value) as ``sesh ROLE`` flags."""
    opts = {f.name: opt for f, opt in options_of(ROLE_CONFIGS[role])}
    argv: list[str] = []
    for name, value in values.items():
        opt = opts[name]
        flag = next((f for f in opt.flags if f.startswith("--")), opt.flags[0])
        if opt.kind == "flag":
            argv.append(flag if _truthy(value) else "--no-" + flag[2:])
        elif opt.kind == "count":
            argv.extend([flag] * int(value))
        elif opt.kind == "append":
            items = value if isinstance(value, (list, tuple)) else [value]
            argv.extend(f"{flag}={_text(item)}" for item in items)
        else:
            argv.append(f"{flag}={_text(value)}")
    return argv


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    return bool(value)


def _text(value: Any) -> str:
    if isinstance(value, MemberConfig):
        return value.url + (f" route={value.route}" if value.route else "")
    if isinstance(value, Mapping):
        return " ".join([str(value.get("url", ""))] + [f"{k}={v}" for k, v in value.items() if k != "url"])
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def plan(cfg: UpConfig) -> Plan:
    """Every member of the topology ``cfg`` describes, in start order (stores, nodes, balancer)."""
    if cfg.store == "memcached" and shutil.which("memcached") is None:
        raise ConfigError("--store: memcached is not installed (apt-get install memcached), use --store sesh")
    names = _member_names(cfg)
    settings = _check_settings(cfg, names)
    host = cfg.host
    sesh = (sys.executable, str(SESH_PY))
    members: list[MemberSpec] = []

    redis = "store-r1" in names
    run_dir = Path(tempfile.gettempdir()) / f"sesh-up-redis-{secrets.token_hex(4)}" if redis else None
    stores: list[MemberSpec] = _redis_cluster(settings, names, host, run_dir) if run_dir else []
    for name in (n for n, r in names.items() if r == "store" and not redis):
        port = _port_of(settings, name, host)
        values = _merged(settings, "store", name, {})
        values.pop("port", None)
        if cfg.store == "memcached":
            binary = shutil.which("memcached") or "memcached"
            user = ["-u", "root"] if os.geteuid() == 0 else []
            extra = [x for key, value in values.items() for x in (MEMCACHED_FLAGS[key], str(value))]
            argv: list[str] = [binary, "-l", host, "-p", str(port), "-U", "0", *user, *extra]
            stores.append(MemberSpec(name, "store", tuple(argv), host, port, f"memcached://{host}:{port}", "port"))
        else:
            values = {"listen": host, "port": port, **values}
            argv = [*sesh, "store", *_argv("store", values)]
            stores.append(MemberSpec(name, "store", tuple(argv), host, port, f"memcached://{host}:{port}"))
    members.extend(stores)
    memcached_nodes = ",".join(f"{s.name.removeprefix('store-')}:{host}:{s.port}" for s in stores)
    if cfg.store == "redis":
        memcached_nodes = ",".join(s.url for s in stores if s.name != REDIS_SETUP)

    nodes: list[MemberSpec] = []
    node_names = [n for n, r in names.items() if r == "node"]
    cluster = _cluster_settings(cfg, node_names, host) if cfg.mode == "cluster" else {}
    for index, name in enumerate(node_names):
        port = _port_of(settings, name, host)
        base: dict[str, Any] = {"mode": cfg.mode, "name": name, "host": host, "port": port, **cluster.get(name, {})}
        if cfg.sticky:
            base["route"] = _route(index)
        if cfg.mode == "msm":
            base["memcached_nodes"] = memcached_nodes
            base["sticky"] = cfg.sticky
            if cfg.sticky and len(stores) > 1 and cfg.store != "redis":
                # The seed: each Tomcat's own memcached is its failover node, used only when the others fail.
                base["failover_nodes"] = stores[index % len(stores)].name.removeprefix("store-")
        values = _merged(settings, "node", name, base)
        values["port"] = port
        argv = [*sesh, "node", *_argv("node", values)]
        nodes.append(MemberSpec(name, "node", tuple(argv), host, port, f"http://{host}:{port}/"))
    members.extend(nodes)

    port = cfg.port or free_port(host)
    override = settings.get("balancer", {})
    token = str(override.get("manager_token", "")) or secrets.token_urlsafe(18)
    manager_path = str(override.get("manager_path", MANAGER_PATH))
    balancer_members = [f"http://{host}:{n.port}" + (f" route={_route(i)}" if cfg.sticky else "")
                        for i, n in enumerate(nodes)]
    base = {
        "host": host,
        "port": port,
        "lbmethod": "bytraffic",
        "manager_path": manager_path,
        "manager_token": token,
        "members": balancer_members,
        # One process, not the balancer's default of one per CPU: here every member shares this machine
        # and the nodes cost several times the balancer per request, so more balancer processes would
        # only take cores from them (--set balancer.workers=auto opts in).
        "workers": 1,
    }
    if cfg.sticky:
        base["stickysession"] = STICKYSESSION
    values = _merged(settings, "balancer", "balancer", base)
    values["port"] = port
    values["manager_token"] = token
    argv = [*sesh, "balancer", *_argv("balancer", values)]
    members.append(MemberSpec("balancer", "balancer", tuple(argv), host, port, f"http://{host}:{port}/"))
    return Plan(
        members=tuple(members),
        balancer_url=f"http://{host}:{port}/",
        manager_path=manager_path,
        manager_token=token,
        control_socket=cfg.control_socket or default_control_socket(port),
        mode=cfg.mode,
        sticky=cfg.sticky,
        scratch_dir=str(run_dir or ""),
    )


def _cluster_settings(cfg: UpConfig, names: list[str], host: str) -> dict[str, dict[str, Any]]:
    """Cluster peers that find each other without multicast (so two `sesh up` never mix): a receiver port
    each and the others as a static member list."""
    receivers = {name: free_port(host) for name in names}
    return {
        name: {
            "membership": "static",
            "receiver_port": receivers[name],
            "members": [f"{host}:{port}" for peer, port in receivers.items() if peer != name],
        }
        for name in names
    }


def _route(index: int) -> str:
    """a, b, ..., z, then a1 ...: Tomcat's jvmRoute of node index+1."""
    letter = chr(ord("a") + index % 26)
    return letter if index < 26 else f"{letter}{index // 26}"
