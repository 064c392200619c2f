"""Polling every target concurrently, each within ``--timeout``, into a :class:`Snapshot`.

Sources: a ``sesh up`` (its control socket lists every member with its state), balancer URLs (the
balancer-manager JSON, whose members are then polled as nodes), node URLs (``/sesh/status``) and store
addresses (memcached's ``stats``, so a real memcached shows too). Rates come from the previous poll's
counters, kept in :class:`Collector` (the only state between polls).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from sesh.config import TopConfig
from sesh.net import control_client as control
from sesh.net import simple_http as http
from sesh.top.snapshot import (
    BalancerMemberView,
    BalancerView,
    MemberView,
    NodeView,
    Snapshot,
    StoreNodeView,
    StoreView,
)

# A stats answer is ~100 lines of ~40 bytes; a store that sends more than this is not answering stats.
MAX_STATS = 64 * 1024
JSON = [("Accept", "application/json")]


@dataclass(frozen=True, slots=True)
class Target:
    kind: str  # balancer | node | store
    name: str
    address: str  # URL, or host:port for a store
    state: str = ""


@dataclass
class Collector:
    cfg: TopConfig
    socket: str = ""
    counters: dict[str, tuple[float, int]] = field(default_factory=dict)  # target -> (time, count)

    def _rate(self, key: str, now: float, count: int) -> float | None:
        previous = self.counters.get(key)
        self.counters[key] = (now, count)
        if previous is None or now <= previous[0] or count < previous[1]:
            return None
        return (count - previous[1]) / (now - previous[0])

    async def targets(self) -> tuple[list[Target], list[MemberView], str, str, str]:
        """(targets, sesh up members, source, up error, manager token)."""
        cfg = self.cfg
        targets = [Target("balancer", url, url) for url in cfg.balancers]
        targets += [Target("node", url, url) for url in cfg.nodes]
        targets += [Target("store", addr, addr) for addr in cfg.stores]
        if not self.socket:
            return targets, [], "targets", "", cfg.manager_token
        try:
            answer = await control.request(self.socket, {"cmd": "list"}, cfg.timeout)
        except control.ControlError as exc:
            return targets, [], f"sesh up ({self.socket})", str(exc), cfg.manager_token
        members = [MemberView(m["name"], m["role"], m["pid"], m["url"], m["state"]) for m in answer["members"]]
        stores: set[str] = set()
        for m in members:
            address = m.url.removeprefix("memcached://") if m.role == "store" else m.url
            if m.role == "store":
                if address in stores:  # another member for the same server (sesh up's redis-cluster)
                    continue
                stores.add(address)
            targets.append(Target(m.role, m.name, address, m.state))
        return targets, members, f"sesh up ({self.socket})", "", answer.get("manager_token", "")

    async def poll(self) -> Snapshot:
        targets, members, source, up_error, token = await self.targets()
        results: dict[int, Any] = {}
        extra_nodes: list[Target] = []

        async def one(index: int, target: Target) -> None:
            if target.kind == "balancer":
                view = await self.balancer(target)
                results[index] = view
                if not self.socket:  # --balancer URL: watch the members it lists too
                    extra_nodes.extend(Target("node", m.url + "/", m.url + "/") for m in view.members)
            elif target.kind == "node":
                results[index] = await self.node(target)
            else:
                results[index] = await self.store(target)

        async with trio.open_nursery() as nursery:
            for index, target in enumerate(targets):
                nursery.start_soon(one, index, target)
        known = {t.address.rstrip("/") for t in targets}
        extra = [t for t in dict.fromkeys(extra_nodes) if t.address.rstrip("/") not in known]
        async with trio.open_nursery() as nursery:
            for index, target in enumerate(extra, len(targets)):
                nursery.start_soon(one, index, target)
        views = [results[i] for i in sorted(results)]
        return Snapshot(
            time=round(time.time(), 3),  # wall clock, for a reader of --json; rates use trio's clock
            source=source,
            up_error=up_error,
            manager_token=token,
            balancers=tuple(v for v in views if isinstance(v, BalancerView)),
            nodes=tuple(v for v in views if isinstance(v, NodeView)),
            stores=tuple(v for v in views if isinstance(v, StoreView)),
            members=tuple(members),
        )

    async def _json(self, url: str) -> Any:
        reply = await http.get(url, self.cfg.timeout, JSON)
        if reply.status != 200:
            raise ValueError(f"HTTP {reply.status}")
        return json.loads(reply.body)

    async def balancer(self, t: Target) -> BalancerView:
        url = t.address.rstrip("/") + self.cfg.manager_path
        try:
            doc = (await self._json(url))["balancer"]
            members = tuple(
                BalancerMemberView(m["url"], m["route"], m["status"], m["flags"], m["usable"], m["elected"],
                                   m["busy"], m["lbstatus"], m["bytes_to"], m["bytes_from"])
                for m in doc["members"]
            )
            return BalancerView(t.name, t.address, True, "", t.state, doc["lbmethod"], doc["stickysession"], members)
        except (http.HTTPFailure, trio.TooSlowError, ValueError, KeyError, TypeError) as exc:
            return BalancerView(t.name, t.address, False, _why(exc), t.state, "", "", ())

    async def node(self, t: Target) -> NodeView:
        url = t.address.rstrip("/") + "/sesh/status"
        now = trio.current_time()
        try:
            doc = await self._json(url)
            backend = doc.get("backend") or {}
            sessions = backend.get("sessions") or {}
            stores = tuple(
                StoreNodeView(s["node_id"] or ("redis" if "shards" in s else ""), s["address"], s["available"],
                              s.get("failures", 0))
                for s in backend.get("store_nodes", ())
            ) + tuple(  # cluster mode: the peers this node replicates to, connected or not
                StoreNodeView(s["name"], s.get("address", ""), bool(s.get("connected")), s.get("dropped", 0))
                for s in backend.get("peers", ())
            )
            latency = doc.get("latency") or {}
            p99 = latency.get("p99") if isinstance(latency, dict) else None
            requests = int(doc.get("requests", 0))
            # The rate is the application's: top's own polls (and other status reads) are left out.
            app_requests = requests - int(doc.get("status_requests", 0))
            return NodeView(
                t.name if t.name != t.address else doc.get("name", t.name), t.address, True, "", t.state,
                str(doc.get("mode", "")), backend.get("sticky"), int(sessions.get("active", 0)), requests,
                self._rate("node " + t.address, now, app_requests), p99 if isinstance(p99, (int, float)) else None,
                int(backend.get("backup_failures", 0)) + int(backend.get("write_failures", 0)),
                int(backend.get("conflicts", 0)), stores,
            )
        except (http.HTTPFailure, trio.TooSlowError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.counters.pop("node " + t.address, None)
            name = t.name if t.name != t.address else t.address.split("://", 1)[-1].rstrip("/")
            return NodeView(name, t.address, False, _why(exc), t.state, "", None, 0, 0, None, None, 0, 0, ())

    async def store(self, t: Target) -> StoreView:
        if t.address.startswith(("redis://", "rediss://")):
            return await self.redis_store(t)
        now = trio.current_time()
        try:
            stats = await self._stats(t.address)
            hits, misses = int(stats.get("get_hits", 0)), int(stats.get("get_misses", 0))
            ops = sum(int(v) for k, v in stats.items() if k.startswith("cmd_") and v.isdigit())
            return StoreView(
                t.name, t.address, True, "", t.state, int(stats.get("curr_items", 0)), int(stats.get("bytes", 0)),
                hits / (hits + misses) if hits + misses else None, int(stats.get("evictions", 0)),
                int(stats.get("curr_connections", 0)), ops, self._rate("store " + t.address, now, ops),
            )
        except (OSError, trio.TooSlowError, ValueError, trio.BrokenResourceError) as exc:
            self.counters.pop("store " + t.address, None)
            return StoreView(t.name, t.address, False, _why(exc), t.state, 0, 0, None, 0, 0, 0, None)

    async def redis_store(self, t: Target) -> StoreView:
        """A Redis store from INFO: keys, memory, hit rate, evictions, clients, commands, role and link."""
        now = trio.current_time()
        try:
            info = await self._redis_info(t.address)
            hits, misses = int(info.get("keyspace_hits", 0)), int(info.get("keyspace_misses", 0))
            keys = sum(int(part.partition("=")[2]) for k, v in info.items() if k.startswith("db")
                       for part in v.split(",") if part.startswith("keys="))
            ops = int(info.get("total_commands_processed", 0))
            role = info.get("role", "")
            if role == "slave":
                role = f"replica, link {info.get('master_link_status', '?')}"
            return StoreView(
                t.name, t.address, True, "", t.state, keys, int(info.get("used_memory", 0)),
                hits / (hits + misses) if hits + misses else None, int(info.get("evicted_keys", 0)),
                int(info.get("connected_clients", 0)), ops, self._rate("store " + t.address, now, ops), role,
            )
        except (OSError, trio.TooSlowError, ValueError, trio.BrokenResourceError) as exc:
            self.counters.pop("store " + t.address, None)
            return StoreView(t.name, t.address, False, _why(exc), t.state, 0, 0, None, 0, 0, 0, None)

    async def _redis_info(self, url: str) -> dict[str, str]:
        """``INFO`` as an inline command; the answer is one RESP bulk string (``$<length>``, then the text).
        A server that wants a password answers an error, shown as the store's error."""
        host, _, port = url.split("://", 1)[1].rsplit("@", 1)[-1].rstrip("/").rpartition(":")
        with trio.fail_after(self.cfg.timeout):
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(b"INFO\r\n")
                data = b""
                while True:
                    head, sep, rest = data.partition(b"\r\n")
                    if sep:
                        if not head.startswith(b"$"):
                            raise ValueError(head.decode("utf-8", "replace")[:80] or "not a Redis answer")
                        if len(rest) >= int(head[1:]):
                            break
                    piece = await stream.receive_some(65536)
                    if not piece:
                        raise ValueError("connection closed before the INFO answer")
                    data += piece
                    if len(data) > MAX_STATS:
                        raise ValueError("INFO answer too long")
        info = {}
        for line in rest.decode("utf-8", "replace").split("\r\n"):
            key, colon, value = line.partition(":")
            if colon and not key.startswith("#"):
                info[key] = value
        return info

    async def _stats(self, address: str) -> dict[str, str]:
        host, _, port = address.rpartition(":")
        with trio.fail_after(self.cfg.timeout):
            stream = await trio.open_tcp_stream(host, int(port))
            async with stream:
                await stream.send_all(b"stats\r\n")
                data = b""
                while not data.endswith(b"END\r\n"):
                    piece = await stream.receive_some(65536)
                    if not piece:
                        raise ValueError("connection closed before END")
                    data += piece
                    if len(data) > MAX_STATS:
                        raise ValueError("stats answer too long")
        stats = {}
        for line in data.decode("ascii", "replace").split("\r\n"):
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[0] == "STAT":
                stats[parts[1]] = parts[2]
        return stats


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "no answer in time"
    if isinstance(exc, OSError):
        return f"connect: {http.reason(exc)}"
    if isinstance(exc, http.HTTPFailure):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"[:120]
