"""Differential tests: Debian's apache2 (mod_proxy_balancer) and sesh balancer get the same members and
the same request sequence; the members must be hit in the same order.

apache2 runs as a test-owned process with its own config in a temporary directory on a random loopback
port (never the system service). `make test` installs apache2 when it runs as root; without it these tests
are skipped with a reason that names the package (tests/references.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from sesh.net.http_server import HTTPExchange
from tests.http_client import HTTPTestClient
from tests.procs import SeshProcess, free_port
from tests.references import reference
from tests.test_balancer_proxy import Backend, start_backend, start_balancer

MODULES = "/usr/lib/apache2/modules"

# (route, extra member parameters); the same words are valid for httpd and for sesh.
Members = list[tuple[str, str]]
# (target, cookie or "")
Script = list[tuple[str, str]]


def apache_config(directory: Path, port: int, members: list[str], proxyset: str) -> str:
    user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
    modules = ("proxy", "proxy_http", "proxy_balancer", "slotmem_shm", "lbmethod_byrequests",
               "lbmethod_bybusyness", "lbmethod_bytraffic", "authz_core", "mpm_event")
    return (
        f"ServerRoot {directory}\nPidFile {directory}/httpd.pid\nErrorLog {directory}/error.log\n"
        f"DefaultRuntimeDir {directory}\nMutex file:{directory} default\nServerName 127.0.0.1\n{user}"
        + "".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so\n" for m in modules)
        # One child process: elections are serialised exactly as in one sesh worker.
        + "StartServers 1\nServerLimit 1\nThreadsPerChild 4\nMaxRequestWorkers 4\n"
        + f"Listen 127.0.0.1:{port}\n<Proxy balancer://lbcluster>\n"
        + "".join(f"BalancerMember {m}\n" for m in members)
        + f"ProxySet {proxyset}\n</Proxy>\nProxyPass / balancer://lbcluster/\n"
    )


async def run_script(port: int, script: Script, *, connection_per_request: bool = False) -> None:
    client = await HTTPTestClient.connect(port)
    try:
        for target, cookie in script:
            if connection_per_request:
                await client.aclose()
                client = await HTTPTestClient.connect(port)
            reply = await client.request("GET", target, [("Cookie", cookie)] if cookie else [])
            assert reply.status == 200, (target, reply.status, reply.body[:200])
    finally:
        await client.aclose()


@asynccontextmanager
async def running_apache(apache: str, conf: Path, port: int) -> AsyncIterator[None]:
    """A test-owned apache2 on ``port`` with ``conf``, ready to answer; stopped (and reaped) at the end."""
    proc = await trio.lowlevel.open_process([apache, "-f", str(conf), "-DFOREGROUND"])
    try:
        for _ in range(200):
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.aclose()
                break
            except OSError:
                await trio.sleep(0.05)
        else:
            raise AssertionError(f"apache2 did not start: {(conf.parent / 'error.log').read_text()}")
        yield
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def hits_through_apache(
    tmp_path: Path, backends: list[Backend], members: Members, proxyset: str, script: Script
) -> str:
    apache = reference("apache2")
    os.chmod(tmp_path, 0o755)
    port = free_port()
    lines = [f"{b.url} route={route} {extra}".strip() for b, (route, extra) in zip(backends, members, strict=True)]
    conf = tmp_path / "httpd.conf"
    conf.write_text(apache_config(tmp_path, port, lines, proxyset))
    async with running_apache(apache, conf, port):
        await run_script(port, script)
    return collect(backends)


async def hits_through_sesh(
    nursery: trio.Nursery, backends: list[Backend], members: Members, settings: dict[str, object], script: Script
) -> str:
    lines = [f"{b.url} route={route} {extra}".strip() for b, (route, extra) in zip(backends, members, strict=True)]
    port = await start_balancer(nursery, *lines, **settings)
    await run_script(port, script)
    return collect(backends)


ORDER: list[str] = []


def collect(backends: list[Backend]) -> str:
    hits = "".join(ORDER)
    ORDER.clear()
    return hits


async def record(backend: Backend, exchange: HTTPExchange) -> None:
    ORDER.append(backend.name)
    await exchange.respond(200, [], backend.name.encode())


CASES = {
    "byrequests 3:1:2": (
        [("a", "loadfactor=3"), ("b", "loadfactor=1"), ("c", "loadfactor=2"), ("d", "status=+H")],
        "lbmethod=byrequests",
        {"lbmethod": "byrequests"},
        [("/", "")] * 14,
    ),
    "bybusyness sequential": (
        [("a", "loadfactor=2"), ("b", "loadfactor=1"), ("c", "loadfactor=1"), ("d", "")],
        "lbmethod=bybusyness",
        {"lbmethod": "bybusyness"},
        [("/", "")] * 11,
    ),
    "sticky cookie, path parameter, unknown route": (
        [("a", ""), ("b", "loadfactor=2"), ("c", ""), ("d", "status=+D redirect=a")],
        "lbmethod=byrequests stickysession=JSESSIONID|jsessionid",
        {"lbmethod": "byrequests", "stickysession": "JSESSIONID|jsessionid"},
        [
            ("/", ""), ("/", "JSESSIONID=S1.c"), ("/", "JSESSIONID=S1.c"), ("/", ""), ("/x;jsessionid=S2.a", ""),
            ("/", "JSESSIONID=S3.zz"), ("/", "JSESSIONID=S4.d"), ("/", ""), ("/?jsessionid=S5.b", ""),
            ("/", "foo=1; JSESSIONID=S6-n1.c"), ("/", ""), ("/", ""), ("/", "JSESSIONID=noroute"), ("/", ""),
        ],
    ),
    "lbsets and standby": (
        [("a", "lbset=1"), ("b", "lbset=0 status=+D"), ("c", "lbset=0 status=+H"), ("d", "lbset=1")],
        "lbmethod=byrequests",
        {"lbmethod": "byrequests"},
        [("/", "")] * 6,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_same_elections_as_apache_httpd(nursery: trio.Nursery, tmp_path: Path, case: str) -> None:
    members, proxyset, settings, script = CASES[case]
    backends = [await start_backend(nursery, name, record) for name in "abcd"]
    expected = await hits_through_apache(tmp_path, backends, members, proxyset, script)
    assert len(expected) == len(script)
    got = await hits_through_sesh(nursery, backends, members, settings, script)
    assert got == expected


# bybusyness is left out: a member's busy count drops just after its response is written, so a request
# that another worker process elects in that moment may still see it busy (as on another httpd child).
PROCESS_CASES = [case for case in CASES if not case.startswith("bybusyness")]


@pytest.mark.parametrize("case", PROCESS_CASES)
async def test_same_elections_through_the_default_worker_processes(
    nursery: trio.Nursery, tmp_path: Path, sesh: Callable[..., SeshProcess], case: str
) -> None:
    """A real ``sesh balancer`` with its default --workers (one per CPU) and a new connection per request,
    so the kernel spreads the requests over the workers: their shared scoreboard elects as httpd does."""
    members, proxyset, settings, script = CASES[case]
    backends = [await start_backend(nursery, name, record) for name in "abcd"]
    expected = await hits_through_apache(tmp_path, backends, members, proxyset, script)
    flags = [f"--{key}={value}" for key, value in settings.items()]
    flags += [f"--member={b.url} route={route} {extra}".strip()
              for b, (route, extra) in zip(backends, members, strict=True)]
    balancer = await trio.to_thread.run_sync(lambda: sesh("balancer", "--port", "0", "--manager-token", "t", *flags))
    await run_script(balancer.port, script, connection_per_request=True)
    assert collect(backends) == expected


# -- paths: dot-segments and escapes are resolved before the mount is matched ----------------------------

PATH_TARGETS = [
    "/pub/x", "/pub/x/../y", "/pub/a/./b", "/pub/a/.%2e/b", "/pub//a", "/pub/%41%7e", "/pub/x/..",
    "/pub/../admin", "/pub/%2e%2e/admin", "/pub/%2E%2E/admin", "/pub/.%2e/admin", "/pub/./../admin",
    "/pub//../admin", "/pub/x/../../admin", "/pub/..;/admin", "/pub/..%2fadmin", "/pub/a%2fb", "/pub/a%00",
    "/../x", "/pub/../../x", "/pub/%zz", "/pub/x?q=/../../", "/pub/%20",
]


async def path_answers(port: int, backend: Backend) -> list[tuple[int, str | None]]:
    """For each target: the status, and the target the member saw (None when it saw nothing)."""
    out: list[tuple[int, str | None]] = []
    for target in PATH_TARGETS:
        before = len(backend.requests)
        client = await HTTPTestClient.connect(port)
        try:
            reply = await client.request("GET", target)
        finally:
            await client.aclose()
        seen = backend.requests[before:]
        out.append((reply.status, seen[0].target.decode() if seen else None))
    return out


async def test_dot_segments_answered_as_apache_httpd_does(nursery: trio.Nursery, tmp_path: Path) -> None:
    apache = reference("apache2")
    backend = await start_backend(nursery, "a")
    os.chmod(tmp_path, 0o755)
    docroot = Path(tempfile.mkdtemp(prefix="sesh-httpd-docroot-"))  # pytest's tmp_path's parents are 0700
    os.chmod(docroot, 0o755)
    port = free_port()
    # An empty DocumentRoot apache2's children can reach: what is not proxied is a plain 404.
    conf = apache_config(tmp_path, port, [f"{backend.url}/public"], "lbmethod=byrequests").replace(
        "ProxyPass / balancer://lbcluster/\n", f"ProxyPass /pub balancer://lbcluster\nDocumentRoot {docroot}\n"
    )
    (tmp_path / "httpd.conf").write_text(conf)
    try:
        async with running_apache(apache, tmp_path / "httpd.conf", port):
            expected = await path_answers(port, backend)
    finally:
        os.rmdir(docroot)
    sesh_port = await start_balancer(nursery, f"{backend.url}/public", path="/pub")
    got = await path_answers(sesh_port, backend)
    assert dict(zip(PATH_TARGETS, got, strict=True)) == dict(zip(PATH_TARGETS, expected, strict=True))
