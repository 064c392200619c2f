"""``make bench-topology``: the whole seed topology side by side with the classic stack it replaces, under
browser-like loads, in the same run.

sesh:       ``sesh balancer`` (bytraffic, no stickysession) -> 2 ``sesh node --mode msm --no-sticky`` ->
            2 ``sesh store`` (``--memcached-nodes n1:...,n2:...``): every request loads its session from
            the store and writes it back to both store nodes before it is answered.
reference:  Debian's apache2 (mod_proxy_balancer, ``lbmethod=bytraffic``, no stickysession,
            ``ProxyPreserveHost On``, mpm_event) -> 2 Debian tomcat10 instances in one
            ``SimpleTcpCluster`` + ``DeltaManager`` (bench/tomcat/server.xml), serving
            bench/tomcat/index.jsp, the demo page as a JSP, in a ``<distributable/>`` webapp; with ack'd
            sends (``channelSendOptions="6"``) and, to show what async replication loses, with async sends
            (``channelSendOptions="8"``). Runs only when tomcat10 is installed (``make bench-deps`` installs
            it when root); otherwise sesh alone is measured and the script says so.

Loads, each for --seconds per round, --rounds rounds alternating the stacks (the tables show medians):
  browsers  --browsers sequential browsers (one trio task each, in this process), each with its own cookie
            jar and keep-alive connection, sending GET / with ``Accept: application/json`` back to back. Every
            answer is checked: the session id (ignoring msm's ``-n1`` and any ``.route`` suffix) must stay
            the same and the hit count must go up by exactly one; after the run one more request per
            browser reads the session's final count, which must be its successes + 1.
  wrk       wrk -t2 -c50 over a pool of --pool sessions created beforehand through the front; a Lua
            script sends each request with one pool cookie (two threads on disjoint halves, so no two
            requests in flight share a session) and counts the 200 answers per session; afterwards every
            pool session is read once and its hit count must be 1 + its answers + 1.
Losses: "sessions lost" = a session that came back under a new id (its every update lost); "acked
updates lost" = hits that a 200 answer acknowledged but a later answer did not show.

Placement (taskset; --placement none pins nothing): every server process of both stacks runs on CPU 0,
so each stack gets exactly one core; the load generators (this process with the browsers, and wrk) run on
CPU 1. CPU per request is utime + stime of each process (its whole tree for apache2) from /proc over the
measured interval, divided by the successful requests. Tomcat JVMs (and sesh, the same way) are warmed
up before anything is measured: 5 s bursts of both loads, for at least --warmup seconds and until the
server CPU per request of each load moved less than 15% between two bursts (at most --warmup-max
seconds: a JVM on one core keeps compiling long after its first requests). While one stack is warmed up
or measured, the others are paused (SIGSTOP, then SIGCONT and 1.5 s to settle before their own turn;
--idle-stacks run leaves them running): an idle Tomcat's JIT and GC used up to 0.6 CPU seconds in the
8 s after its round, on the core the next stack is measured on. Every process is started here on
random loopback ports in temporary directories and stopped at the end, on Ctrl-C or on failure too (and
the kernel kills them should this script die: PR_SET_PDEATHSIG).

    python bench/topology.py [--seconds 10] [--rounds 3] [--warmup 30] [--browsers 20] [--pool 1000]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CpuMeter,
    Server,
    median,
    parse_wrk,
    percentile,
    pin_self,
    placement_note,
    run_measured,
    sigterm_as_interrupt,
    start_server,
    start_sesh_role,
    us_per_request,
)

HERE = Path(__file__).resolve().parent
TOMCAT_DIR = HERE / "tomcat"
APACHE = "/usr/sbin/apache2"
MODULES = "/usr/lib/apache2/modules"
CATALINA_HOME = Path("/usr/share/tomcat10")
INSTANCE_CREATE = "/usr/bin/tomcat10-instance-create"
SERVER_CPU = "0"
LOAD_CPU = "1"
WRK_THREADS = 2
WRK_CONNECTIONS = 50
REQUEST_TIMEOUT = 10.0  # a browser gives up on one answer after this long (counted as an error)
MAX_REQUESTS = 1_000_000  # per browser per run: the load loop is bounded in count as well as in time
CLIENTS = 20  # connections used to create and to read the wrk pool


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float, server: Server) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.label} exited with {server.proc.returncode}:\n{server.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{server.label}: nothing listens on 127.0.0.1:{port} after {timeout}s:\n{server.output()}")


def base_of(session_id: str) -> str:
    """The id without msm's ``-<storeNode>`` and any ``.<route>`` suffix."""
    return session_id.split(".", 1)[0].split("-", 1)[0]


# --- the stacks ---------------------------------------------------------------------------------------

@dataclass
class Stack:
    name: str
    port: int = 0
    servers: list[Server] = field(default_factory=list)
    directories: list[Path] = field(default_factory=list)

    def add(self, server: Server) -> Server:
        self.servers.append(server)
        return server

    def pids(self) -> dict[str, int]:
        return {s.label: s.proc.pid for s in self.servers}

    def check_alive(self) -> None:
        for server in self.servers:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: {server.label} exited with {server.proc.returncode}:\n"
                                   f"{server.output()}")

    def dump_logs(self) -> None:
        """What each process said last, and apache2's and Tomcat's log files: to see why a run failed."""
        for server in self.servers:
            print(f"--- {self.name}: {server.label} (exit {server.proc.poll()}):\n{server.output()}", file=sys.stderr)
        for directory in self.directories:
            for log in sorted(directory.glob("error.log")) + sorted(directory.glob("tomcat*/logs/catalina.*.log")):
                print(f"--- {log}:\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)

    def pause(self) -> None:
        for server in self.servers:
            server.signal_tree(signal.SIGSTOP)

    def resume(self) -> None:
        for server in self.servers:
            server.signal_tree(signal.SIGCONT)

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.stop()
        for directory in self.directories:
            shutil.rmtree(directory, ignore_errors=True)


def start_sesh(stack: Stack, cpu: str | None) -> None:
    """The seed's topology (what ``sesh demo`` starts)."""
    stores = [stack.add(start_sesh_role(f"store n{i}", "store", "--port", "0", cpu=cpu)) for i in (1, 2)]
    memcached_nodes = ",".join(f"n{i}:127.0.0.1:{store.port}" for i, store in enumerate(stores, 1))
    nodes = [
        stack.add(start_sesh_role(name, "node", "--mode", "msm", "--name", name, "--port", "0",
                                  "--memcached-nodes", memcached_nodes, "--no-sticky", cpu=cpu))
        for name in ("node1", "node2")
    ]
    members = [f"--member=http://127.0.0.1:{node.port}" for node in nodes]
    # One worker, as sesh up starts it (the nodes share the machine; --placement none would fork one per CPU).
    balancer = stack.add(start_sesh_role("balancer", "balancer", "--port", "0", *members, "--lbmethod", "bytraffic",
                                         "--preserve-host", "--workers", "1", cpu=cpu))
    stack.port = balancer.port


def tomcat_available() -> str | None:
    """None when the reference can run, else what is missing."""
    missing = [p for p in (APACHE, INSTANCE_CREATE, str(CATALINA_HOME / "bin" / "catalina.sh")) if not Path(p).exists()]
    return f"missing {', '.join(missing)} (Debian: apt-get install apache2 tomcat10 tomcat10-user)" if missing else None


def start_tomcat(stack: Stack, send_options: int, cpu: str | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="sesh-bench-tomcat-"))
    os.chmod(root, 0o755)
    stack.directories.append(root)
    mcast_port = free_udp_port()  # a random multicast port per run: no other run joins this cluster
    template = string.Template((TOMCAT_DIR / "server.xml").read_text())
    # The second one asks the first for every session before it serves: started one after the other.
    ports = [
        tomcat_instance(stack, root, f"tomcat{i}", lambda http_port: template.substitute(
            http_port=http_port, send_options=send_options, mcast_port=mcast_port, receiver_port=free_port()), cpu)
        for i in (1, 2)
    ]
    _wait_replicating(ports)
    stack.port = start_httpd(stack, ports, cpu)




def tomcat_instance(stack: Stack, root: Path, name: str, server_xml: Callable[[int], str], cpu: str | None) -> int:
    """One tomcat10 instance (tomcat10-instance-create) under ``root`` serving bench/tomcat's demo JSP, with
    the conf/server.xml ``server_xml(http_port)`` returns; its HTTP port, once the JSP is compiled."""
    base = root / name
    http_port = free_port()
    subprocess.run([INSTANCE_CREATE, "-p", str(http_port), "-c", str(free_port()), str(base)], check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (base / "conf" / "server.xml").write_text(server_xml(http_port))
    webapp = base / "webapps" / "ROOT"
    (webapp / "WEB-INF").mkdir(parents=True)
    shutil.copy(TOMCAT_DIR / "index.jsp", webapp / "index.jsp")
    shutil.copy(TOMCAT_DIR / "web.xml", webapp / "WEB-INF" / "web.xml")
    env = {
        "CATALINA_BASE": str(base), "CATALINA_HOME": str(CATALINA_HOME), "CATALINA_TMPDIR": str(base / "temp"),
        "JAVA_OPTS": f"-Djava.awt.headless=true -Djava.net.preferIPv4Stack=true -Dsesh.node={name} -Xms256m -Xmx256m",
    }
    # catalina.sh run execs java in the foreground: the process is the JVM itself.
    server = stack.add(start_server(name, [str(CATALINA_HOME / "bin" / "catalina.sh"), "run"], cpu=cpu, env=env))
    wait_for_port(http_port, 120, server)
    demo_get(http_port, "/", None, timeout=120)  # compiles the JSP
    return http_port


def demo_get(port: int, path: str, cookie: str | None, timeout: float = 10) -> tuple[str, int, str]:
    """(cookie value to send next, hits, session id) of one demo-page request."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Accept": "application/json"}
        if cookie:
            headers["Cookie"] = f"JSESSIONID={cookie}"
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} on {port}: {response.status} {body[:200]!r}")
        data = json.loads(body)
        set_cookie = response.getheader("set-cookie") or ""
        value = set_cookie.split(";", 1)[0].partition("=")[2] if set_cookie.startswith("JSESSIONID=") else cookie
        return value or data["session_id"], int(data["hits"]), str(data["session_id"])
    finally:
        conn.close()


def _wait_replicating(ports: list[int]) -> None:
    """The cluster is formed when a session made on one node is seen, updated, on the other."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cookie, _, _ = demo_get(ports[0], "/", None)
        _, hits, _ = demo_get(ports[1], "/", cookie)
        if hits == 2:
            return
        time.sleep(1)
    raise RuntimeError("the two Tomcat instances do not replicate sessions (multicast on 127.0.0.1?)")


def apache_config(directory: Path, port: int, members: list[int]) -> str:
    user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
    modules = ("mpm_event", "authz_core", "proxy", "proxy_http", "proxy_balancer", "slotmem_shm", "lbmethod_bytraffic")
    return (
        f"ServerRoot {directory}\nPidFile {directory}/httpd.pid\nErrorLog {directory}/error.log\nLogLevel warn\n"
        f"DefaultRuntimeDir {directory}\nMutex file:{directory} default\nServerName 127.0.0.1\n{user}"
        + "".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so\n" for m in modules)
        # Debian's mods-available/mpm_event.conf; unlimited keep-alive requests, as sesh's balancer.
        + "StartServers 2\nMinSpareThreads 25\nMaxSpareThreads 75\nThreadLimit 64\nThreadsPerChild 25\n"
        "MaxRequestWorkers 150\nMaxConnectionsPerChild 0\nKeepAlive On\nMaxKeepAliveRequests 0\n"
        f"Listen 127.0.0.1:{port}\nProxyPreserveHost On\n<Proxy balancer://lbcluster>\n"
        + "".join(f"BalancerMember http://127.0.0.1:{p}\n" for p in members)
        + "ProxySet lbmethod=bytraffic\n</Proxy>\n"
        "ProxyPass / balancer://lbcluster/\nProxyPassReverse / balancer://lbcluster/\n"
    )


def start_httpd(stack: Stack, members: list[int], cpu: str | None) -> int:
    directory = Path(tempfile.mkdtemp(prefix="sesh-bench-httpd-"))
    os.chmod(directory, 0o755)  # apache2's children run as www-data when started as root
    stack.directories.append(directory)
    port = free_port()
    conf = directory / "httpd.conf"
    conf.write_text(apache_config(directory, port, members))
    server = stack.add(start_server("httpd", [APACHE, "-f", str(conf), "-DFOREGROUND"], cpu=cpu,
                                    parent_death_signal=signal.SIGTERM))
    wait_for_port(port, 20, server)
    return port


# --- a minimal HTTP/1.1 client on trio sockets ------------------------------------------------------------

class HTTPError(Exception):
    pass


class _ClosedEarly(HTTPError):
    """The server closed a kept-alive connection before answering: resend on a new one, as browsers do."""


@dataclass
class Reply:
    status: int
    set_cookie: str | None
    body: bytes


class Connection:
    """One keep-alive connection. Parses only what the load needs (status, Content-Length or chunked,
    Set-Cookie, Connection: close), so the client stays cheap next to the servers it measures."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock: trio.socket.SocketType | None = None
        self.buffer = bytearray()
        self.reconnects = 0

    async def _connect(self) -> trio.socket.SocketType:
        sock = trio.socket.socket()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await sock.connect(("127.0.0.1", self.port))
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.buffer.clear()
        return sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def exchange(self, request: bytes) -> Reply:
        reused = self.sock is not None
        try:
            return await self._exchange(request)
        except _ClosedEarly:
            self.close()
            if not reused:
                raise
            self.reconnects += 1
            return await self._exchange(request)
        except BaseException:
            self.close()
            raise

    async def _exchange(self, request: bytes) -> Reply:
        sock = self.sock or await self._connect()
        view = memoryview(request)
        while view:
            sent = await sock.send(view)
            view = view[sent:]
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if not await self._fill(sock):
                raise _ClosedEarly("closed before the answer") if not buffer else HTTPError("truncated head")
        lines = bytes(buffer[:end]).split(b"\r\n")
        del buffer[: end + 4]
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked, close, set_cookie = -1, False, False, None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
            elif name == b"set-cookie" and value.strip().startswith(b"JSESSIONID="):
                set_cookie = value.strip().split(b";", 1)[0][len(b"JSESSIONID="):].decode()
        if chunked:
            body = await self._chunked(sock)
        elif length >= 0:
            while len(buffer) < length:
                if not await self._fill(sock):
                    raise HTTPError("truncated body")
            body = bytes(buffer[:length])
            del buffer[:length]
        else:
            while await self._fill(sock):
                pass
            body, close = bytes(buffer), True
            buffer.clear()
        if close:
            self.close()
        return Reply(status, set_cookie, body)

    async def _fill(self, sock: trio.socket.SocketType) -> bool:
        data = await sock.recv(65536)
        self.buffer += data
        return bool(data)

    async def _chunked(self, sock: trio.socket.SocketType) -> bytes:
        buffer, body = self.buffer, bytearray()
        while True:
            while (end := buffer.find(b"\r\n")) < 0:
                if not await self._fill(sock):
                    raise HTTPError("truncated chunk")
            size = int(bytes(buffer[:end]).split(b";", 1)[0], 16)
            while len(buffer) < end + 2 + size + 2:
                if not await self._fill(sock):
                    raise HTTPError("truncated chunk")
            body += buffer[end + 2 : end + 2 + size]
            del buffer[: end + 2 + size + 2]
            if size == 0:  # no trailers are sent by the servers measured here
                return bytes(body)


def demo_request(port: int, cookie: str | None) -> bytes:
    return (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: sesh-bench\r\nAccept: application/json\r\n"
            + (f"Cookie: JSESSIONID={cookie}\r\n" if cookie else "") + "\r\n").encode()


# --- load 1: sequential browsers ---------------------------------------------------------------------------

@dataclass
class Browser:
    port: int
    cookie: str | None = None
    base: str | None = None
    hits: int = 0
    successes: int = 0
    errors: int = 0
    sessions_lost: int = 0
    lost_updates: int = 0
    extra_hits: int = 0
    finished: float = 0.0  # trio time when the timed requests ended (before the final read)
    latencies: list[float] = field(default_factory=list)

    def check(self, reply: Reply) -> None:
        """One 200 answer: same session, one hit more than the last answer acknowledged."""
        data = json.loads(reply.body)
        session_id, hits = str(data["session_id"]), int(data["hits"])
        self.cookie = reply.set_cookie or self.cookie or session_id
        base = base_of(session_id)
        if self.base is None:
            self.base = base
        elif base != self.base:
            self.sessions_lost += 1
            self.lost_updates += self.hits  # every hit the old session acknowledged is gone
            self.base = base
        elif hits < self.hits + 1:
            self.lost_updates += self.hits + 1 - hits
        elif hits > self.hits + 1:
            self.extra_hits += hits - self.hits - 1  # a request that failed here was applied anyway
        self.hits = hits

    async def run(self, end: float) -> None:
        connection = Connection(self.port)
        try:
            for _ in range(MAX_REQUESTS):
                if trio.current_time() >= end:
                    break
                await self.request(connection, timed=True)
            self.finished = trio.current_time()
            await self.request(connection, timed=False)  # reads the final count, checked like any other
        finally:
            connection.close()

    async def request(self, connection: Connection, *, timed: bool) -> None:
        started = time.perf_counter()
        try:
            with trio.fail_after(REQUEST_TIMEOUT):
                reply = await connection.exchange(demo_request(self.port, self.cookie))
        except (OSError, HTTPError, trio.TooSlowError, ValueError):
            self.errors += 1
            connection.close()
            return
        elapsed = time.perf_counter() - started
        if reply.status != 200:
            self.errors += 1
            return
        try:
            self.check(reply)
        except (ValueError, KeyError, TypeError):  # not the demo page's JSON
            self.errors += 1
            return
        if timed:
            self.successes += 1
            self.latencies.append(elapsed)


@dataclass
class LoadResult:
    successes: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int
    sessions_lost: int
    lost_updates: int
    cpu: dict[str, float]  # seconds per process over the measured interval
    load_cpu: float  # seconds of the load generator

    @property
    def rps(self) -> float:
        return self.successes / self.seconds if self.seconds else 0.0


def run_browsers(stack: Stack, count: int, seconds: float) -> LoadResult:
    browsers = [Browser(stack.port) for _ in range(count)]
    meter = CpuMeter(stack.pids())
    measured: dict[str, float] = {}

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            meter.start()
            started = trio.current_time()
            end = started + seconds
            for browser in browsers:
                nursery.start_soon(browser.run, end)
        measured["elapsed"] = max(b.finished for b in browsers) - started

    trio.run(main)
    cpu, own = meter.stop()
    latencies = sorted(x for b in browsers for x in b.latencies)
    return LoadResult(
        successes=sum(b.successes for b in browsers), seconds=measured["elapsed"],
        p50_ms=percentile(latencies, 0.50) * 1000, p99_ms=percentile(latencies, 0.99) * 1000,
        errors=sum(b.errors for b in browsers), sessions_lost=sum(b.sessions_lost for b in browsers),
        lost_updates=sum(b.lost_updates for b in browsers), cpu=cpu, load_cpu=own,
    )


# --- load 2: wrk over a pool of sessions ---------------------------------------------------------------------

WRK_SCRIPT = """-- generated by bench/topology.py: one pool cookie per request, 200 answers counted per session
local ids = {%(ids)s}
local step = %(threads)d
local created = 0
threads = {}
function setup(thread)
  thread:set("offset", created)
  created = created + 1
  table.insert(threads, thread)
end
function init(args)
  i = offset
  counts = {}
end
function request()
  local id = ids[(i %% #ids) + 1]
  i = i + step
  return wrk.format("GET", "/", {["Accept"] = "application/json", ["Cookie"] = "JSESSIONID=" .. id})
end
function response(status, headers, body)
  if status == 200 then
    local base = string.match(body, '"session_id": *"(%%x+)')
    if base then counts[base] = (counts[base] or 0) + 1 end
  end
end
function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for base, n in pairs(thread:get("counts")) do
      io.write("COUNT ", base, " ", n, "\\n")
    end
  end
end
"""


async def _demo_requests(port: int, cookies: list[str | None]) -> list[tuple[str, int, str] | None]:
    """One demo-page request per cookie (None: a new session), CLIENTS at a time: (cookie to send next,
    hits, session id) each, or None where the request failed (timed out, refused, not a 200)."""
    results: list[tuple[str, int, str] | None] = [None] * len(cookies)
    queue = iter(range(len(cookies)))

    async def worker() -> None:
        connection = Connection(port)
        try:
            for index in queue:
                cookie = cookies[index]
                try:
                    with trio.fail_after(REQUEST_TIMEOUT):
                        reply = await connection.exchange(demo_request(port, cookie))
                    if reply.status != 200:
                        raise HTTPError(f"status {reply.status}: {reply.body[:200]!r}")
                    data = json.loads(reply.body)
                except (OSError, HTTPError, trio.TooSlowError, ValueError) as exc:
                    print(f"bench-topology: a setup/check request failed: {exc!r}", file=sys.stderr)
                    connection.close()
                    continue
                sid = str(data["session_id"])
                results[index] = (reply.set_cookie or cookie or sid, int(data["hits"]), sid)
        finally:
            connection.close()

    async with trio.open_nursery() as nursery:
        for _ in range(CLIENTS):
            nursery.start_soon(worker)
    return results


def run_wrk(stack: Stack, pool: int, seconds: float, cpu: str | None) -> LoadResult:
    fresh: list[str | None] = [None] * pool
    created = [c for c in trio.run(_demo_requests, stack.port, fresh) if c is not None]
    if len(created) < pool / 2:
        raise RuntimeError(f"{stack.name}: only {len(created)} of {pool} sessions could be created")
    cookies = [cookie for cookie, _, _ in created]
    initial = {base_of(sid): hits for _, hits, sid in created}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="sesh-bench-", delete=False) as script:
        script.write(WRK_SCRIPT % {"ids": ", ".join(f'"{c}"' for c in cookies), "threads": WRK_THREADS})
    try:
        meter = CpuMeter(stack.pids())
        meter.start()
        out, load_cpu = run_measured(
            ["wrk", f"-t{WRK_THREADS}", f"-c{WRK_CONNECTIONS}", f"-d{max(1, round(seconds))}s", "--latency",
             "-s", script.name, f"http://127.0.0.1:{stack.port}/"], timeout=seconds + 60, cpu=cpu)
        cpu_used, _ = meter.stop()
    finally:
        os.unlink(script.name)
    wrk = parse_wrk(out)
    counts: dict[str, int] = {}
    for line in out.splitlines():
        if line.startswith("COUNT "):
            _, base, n = line.split()
            counts[base] = counts.get(base, 0) + int(n)
    pool_cookies: list[str | None] = list(cookies)
    finals = trio.run(_demo_requests, stack.port, pool_cookies)
    sessions_lost = lost_updates = unverified = 0
    for (_, _, sid), final in zip(created, finals, strict=True):
        if final is None:
            unverified += 1  # its final read failed: counted as an error, neither kept nor lost
            continue
        _, final_hits, final_sid = final
        base = base_of(sid)
        acknowledged = initial[base] + counts.get(base, 0)
        if base_of(final_sid) != base:
            sessions_lost += 1
            lost_updates += acknowledged
        else:
            lost_updates += max(0, acknowledged + 1 - final_hits)
    successes = sum(counts.values())  # 200 answers, on pool sessions or (when one was lost) on new ones
    elapsed = wrk.requests / wrk.rps if wrk.rps else float(seconds)
    # Answers that were not a counted 200, requests without an answer (wrk's socket errors, timeouts) and
    # sessions whose final read failed.
    errors = wrk.requests - successes + wrk.socket_errors + unverified
    return LoadResult(successes, elapsed, wrk.p50_ms, wrk.p99_ms, errors, sessions_lost, lost_updates, cpu_used,
                      load_cpu)


# --- the run ----------------------------------------------------------------------------------------------

WARMUP_BURST = 5.0  # seconds per warm-up burst of each load
WARMUP_STABLE = 0.15  # warm when CPU per request moved less than this between two bursts of each load


def warm_up(stack: Stack, args: argparse.Namespace, load_cpu: str | None) -> None:
    """Alternate short bursts of both loads until the stack's CPU per request has settled."""
    def burst() -> dict[str, float]:
        now: dict[str, float] = {}
        for load in LOADS:
            if load == "browsers":
                result = run_browsers(stack, args.browsers, WARMUP_BURST)
            else:
                result = run_wrk(stack, min(args.pool, 200), WARMUP_BURST, load_cpu)
            now[load] = us_per_request(sum(result.cpu.values()), result.successes)
        return now

    settle(f"bench-topology: warming up {stack.name}", burst, args.warmup, args.warmup_max)


def settle(what: str, burst: Callable[[], dict[str, float]], least: float, most: float) -> None:
    """Run ``burst`` (CPU per request of each load it runs) until every figure moved less than
    WARMUP_STABLE between two bursts, for at least ``least`` seconds and at most ``most``: a JVM keeps
    compiling well after its first thousands of requests, and that CPU would be charged to the first
    round. Each burst's figures are shown, prefixed by ``what``."""
    started = time.monotonic()
    previous: dict[str, float] = {}
    while True:
        now = burst()
        elapsed = time.monotonic() - started
        print(f"{what} ({elapsed:.0f} s): server CPU per request "
              + ", ".join(f"{load} {us:.0f} us" for load, us in now.items()), file=sys.stderr, flush=True)
        settled = bool(previous) and all(abs(now[k] - previous[k]) <= WARMUP_STABLE * previous[k] for k in now)
        if (settled and elapsed >= least) or elapsed >= most:
            return
        previous = now


LOADS = ("browsers", "wrk")


SESH_MSM = "sesh:  sesh balancer (bytraffic, no stickysession) -> 2 sesh node --mode msm --no-sticky -> 2 sesh store"
TOMCAT = ("httpd + Tomcat:  apache2 mod_proxy_balancer (bytraffic, no stickysession, mpm_event) -> 2 tomcat10, "
          "SimpleTcpCluster + DeltaManager, channelSendOptions 6 (ack) / 8 (async)")


def report(stacks: list[Stack], results: dict[str, dict[str, list[LoadResult]]], args: argparse.Namespace,
           reference_note: str | None, described: Sequence[str] = (SESH_MSM, TOMCAT),
           title: str = "sesh topology benchmark") -> None:
    """The tables: per load, every stack's medians, its CPU per request per process, and the first stack's
    ratio to the Tomcat ack stack."""
    print()
    print(f"{title}: {args.rounds} rounds x {args.seconds} s per load and stack, stacks alternating;"
          f" medians of rounds (losses and errors: sums); each stack warmed up (>= {args.warmup} s, until its CPU per "
          "request settles)")
    for line in described:
        print(f"  {line}")
    if reference_note:
        print(f"  reference not run: {reference_note}")
    pinned = args.placement == "pinned"
    print("  " + placement_note([("every server process", SERVER_CPU if pinned else None),
                                 ("the load generators (browsers: this Python process; wrk -t2)",
                                  LOAD_CPU if pinned else None)]))
    idle = ("the stacks not under load are paused (SIGSTOP) meanwhile" if args.idle_stacks == "pause"
            else "the stacks not under load keep running meanwhile (--idle-stacks run)")
    print(f"  every stack stays up for the whole run; {idle}; CPU per request = utime +"
          " stime over the measured interval / successful requests")
    titles = {
        "browsers": f"load 1: {args.browsers} sequential browsers, keep-alive, own cookie jar, GET / (JSON)",
        "wrk": f"load 2: wrk -t{WRK_THREADS} -c{WRK_CONNECTIONS} over {args.pool} sessions, GET / (JSON)",
    }
    for load in LOADS:
        print()
        print(titles[load])
        print(f"  {'stack':<22}{'ok req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'sess lost':>11}"
              f"{'acked upd lost':>16}{'srv us/req':>12}{'gen us/req':>12}")
        for stack in stacks:
            rounds = results[stack.name][load]
            if not rounds:
                continue
            server_cpu = median([us_per_request(sum(r.cpu.values()), r.successes) for r in rounds])
            load_cpu = median([us_per_request(r.load_cpu, r.successes) for r in rounds])
            print(f"  {stack.name:<22}{median([r.rps for r in rounds]):>10,.0f}"
                  f"{median([r.p50_ms for r in rounds]):>9.2f}{median([r.p99_ms for r in rounds]):>9.2f}"
                  f"{sum(r.errors for r in rounds):>8}{sum(r.sessions_lost for r in rounds):>11}"
                  f"{sum(r.lost_updates for r in rounds):>16}{server_cpu:>12.0f}{load_cpu:>12.0f}")
        print("  CPU per request, us (median of rounds), per process:")
        for stack in stacks:
            rounds = results[stack.name][load]
            if not rounds:
                continue
            parts = [f"{label} {median([us_per_request(r.cpu[label], r.successes) for r in rounds]):.0f}"
                     for label in stack.pids()]
            parts.append(f"load generator {median([us_per_request(r.load_cpu, r.successes) for r in rounds]):.0f}")
            print(f"    {stack.name:<22}" + ", ".join(parts))
        sesh_rounds = results[stacks[0].name][load]
        ref = next((s for s in stacks if s.name.endswith("ack")), None)
        if ref and results[ref.name][load]:
            ref_rounds = results[ref.name][load]
            ratios = [s.rps / r.rps for s, r in zip(sesh_rounds, ref_rounds, strict=True) if r.rps]
            cpu_ratio = median([us_per_request(sum(s.cpu.values()), s.successes) for s in sesh_rounds]) / median(
                [us_per_request(sum(r.cpu.values()), r.successes) for r in ref_rounds])
            p99_ratio = median([s.p99_ms for s in sesh_rounds]) / median([r.p99_ms for r in ref_rounds])
            print(f"  sesh / {ref.name}: req/s {median(ratios):.2f}x (rounds: {' '.join(f'{x:.2f}' for x in ratios)}),"
                  f" server CPU per request {cpu_ratio:.2f}x, p99 {p99_ratio:.2f}x")


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the measured loads (shared with bench/cluster.py)."""
    parser.add_argument("--seconds", type=int, default=10, help="measured duration of each load, per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every stack in turn")
    parser.add_argument("--warmup", type=int, default=30,
                        help="least seconds of load per stack before measuring (more until CPU per request settles)")
    parser.add_argument("--warmup-max", type=int, default=150, help="most seconds of warm-up per stack")
    parser.add_argument("--browsers", type=int, default=20)
    parser.add_argument("--pool", type=int, default=1000, help="sessions wrk cycles through")
    parser.add_argument("--no-async", action="store_true", help="skip Tomcat with async sends")
    parser.add_argument("--no-reference", action="store_true", help="measure sesh alone")
    parser.add_argument("--placement", choices=("pinned", "none"), default="pinned")
    parser.add_argument("--idle-stacks", choices=("pause", "run"), default="pause",
                        help="what the stacks not under load do during another stack's warm-up and rounds: "
                        "paused with SIGSTOP (default: each stack has the server CPU to itself), or left running")


# A stack to measure: its name and how to start it (on the server CPU, or anywhere when None).
Plan = list[tuple[str, Callable[[Stack, str | None], None]]]


def reference_plan(args: argparse.Namespace) -> tuple[Plan, str | None]:
    """httpd + Tomcat ack (and async unless --no-async), or why they are not run."""
    note = "--no-reference" if args.no_reference else tomcat_available()
    if note is not None:
        return [], note
    plan: Plan = [("httpd + Tomcat ack", lambda stack, cpu: start_tomcat(stack, 6, cpu))]
    if not args.no_async:
        plan.append(("httpd + Tomcat async", lambda stack, cpu: start_tomcat(stack, 8, cpu)))
    return plan, None


RESUME_SETTLE = 1.5  # seconds a resumed stack gets before its load (heartbeats, membership checks)


@contextlib.contextmanager
def alone(stack: Stack, stacks: Sequence[Stack], pause: bool) -> Iterator[None]:
    """While the body loads ``stack``, the other stacks are paused (SIGSTOP), so that their background
    work (a JVM's JIT compiler and GC finishing after its own round: measured here at up to 0.6 CPU
    seconds in the 8 s after a Tomcat round) does not share the server CPU with the stack measured."""
    others = [other for other in stacks if other is not stack] if pause else []
    for other in others:
        other.pause()
    try:
        if pause:
            time.sleep(RESUME_SETTLE)
        yield
    finally:
        for other in others:
            other.resume()


def run_stacks(plan: Plan, args: argparse.Namespace, label: str = "bench-topology"
               ) -> tuple[list[Stack], dict[str, dict[str, list[LoadResult]]]]:
    """Start every stack, warm each up, then --rounds rounds of both loads on each stack in turn; every
    process is stopped at the end, on failure (after printing the stacks' logs) or on Ctrl-C too."""
    server_cpu = SERVER_CPU if args.placement == "pinned" else None
    load_cpu = LOAD_CPU if args.placement == "pinned" else None
    pin_self(load_cpu)
    stacks: list[Stack] = []
    results: dict[str, dict[str, list[LoadResult]]] = {name: {load: [] for load in LOADS} for name, _ in plan}
    try:
        for name, start in plan:
            print(f"{label}: starting {name}", file=sys.stderr, flush=True)
            stack = Stack(name)
            stacks.append(stack)
            start(stack, server_cpu)
        for stack in stacks:
            with alone(stack, stacks, args.idle_stacks == "pause"):
                warm_up(stack, args, load_cpu)
        for round_number in range(1, args.rounds + 1):
            for stack in stacks:
                stack.check_alive()
                with alone(stack, stacks, args.idle_stacks == "pause"):
                    browsers = run_browsers(stack, args.browsers, args.seconds)
                    wrk = run_wrk(stack, args.pool, args.seconds, load_cpu)
                results[stack.name]["browsers"].append(browsers)
                results[stack.name]["wrk"].append(wrk)
                for load, result in (("browsers", browsers), ("wrk", wrk)):
                    cpu = " ".join(f"{k}={v:.2f}" for k, v in {**result.cpu, "gen": result.load_cpu}.items())
                    print(f"{label}: round {round_number}/{args.rounds} {stack.name} {load}: "
                          f"{result.successes} ok in {result.seconds:.1f} s = {result.rps:,.0f} req/s; "
                          f"CPU s: {cpu}", file=sys.stderr, flush=True)
    except Exception:
        for stack in stacks:
            stack.dump_logs()
        raise
    finally:
        for stack in reversed(stacks):
            stack.stop()
    return stacks, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    add_load_arguments(parser)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench-topology: wrk is missing (apt-get install wrk)", file=sys.stderr)
        return 2
    sigterm_as_interrupt()
    reference, reference_note = reference_plan(args)
    stacks, results = run_stacks([("sesh", start_sesh), *reference], args)
    report(stacks, results, args, reference_note)
    return 0


def interrupted(exc: BaseException) -> bool:
    if isinstance(exc, KeyboardInterrupt):
        return True
    return isinstance(exc, BaseExceptionGroup) and exc.subgroup(KeyboardInterrupt) is not None


def run_main(main: Callable[[], int], name: str) -> NoReturn:
    """Exit with main()'s code; Ctrl-C exits 130 with one line (main's finally blocks stop every process)."""
    try:
        sys.exit(main())
    except BaseException as exc:
        if not interrupted(exc):
            raise
        print(f"{name}: interrupted; every process it started is stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_main(main, "bench-topology")
