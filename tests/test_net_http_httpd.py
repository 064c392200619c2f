"""Differential: the request line and Host checks (issue 8, item 10) against Debian's apache2.

The same raw requests go to a test-owned apache2 (its own config in a temporary directory, a random
loopback port) and to a sesh node and a sesh balancer; whether each is refused with 400 must agree.
An absolute-form target's authority must win over Host in both (apache2 picks the name-based virtual
host by it; sesh hands it on as Host).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from sesh.net.http_server import HTTPExchange
from tests.procs import free_port
from tests.references import reference
from tests.test_balancer_proxy import Backend, start_backend, start_balancer
from tests.test_node_loopback import start_node

MODULES = "/usr/lib/apache2/modules"

CASES = {
    "plain": b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n",
    "HTTP/1.1 without Host": b"GET /x HTTP/1.1\r\n\r\n",
    "HTTP/1.0 without Host": b"GET /x HTTP/1.0\r\n\r\n",
    "empty Host": b"GET /x HTTP/1.1\r\nHost:\r\n\r\n",
    "two Host headers": b"GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "two equal Host headers": b"GET /x HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
    "Host with a space": b"GET /x HTTP/1.1\r\nHost: a b\r\n\r\n",
    "Host with a slash": b"GET /x HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "Host with a port": b"GET /x HTTP/1.1\r\nHost: a:80\r\n\r\n",
    "fragment": b"GET /x#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    "fragment after a query": b"GET /x?a=b#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    "double space before the target": b"GET  /x HTTP/1.1\r\nHost: a\r\n\r\n",
    "double space after the target": b"GET /x  HTTP/1.1\r\nHost: a\r\n\r\n",
    "tab as separator": b"GET\t/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "space at the end of the line": b"GET /x HTTP/1.1 \r\nHost: a\r\n\r\n",
    "absolute-form": b"GET http://example.com/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute-form with a port": b"GET http://example.com:80/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute-form without Host": b"GET http://example.com/x HTTP/1.1\r\n\r\n",
    "absolute-form with userinfo": b"GET http://u@example.com/x HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute-form with a fragment": b"GET http://example.com/x#f HTTP/1.1\r\nHost: a\r\n\r\n",
    "asterisk for GET": b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",
    "bare LF": b"GET /x HTTP/1.1\nHost: a\n\n",
    "space before the colon": b"GET /x HTTP/1.1\r\nHost : a\r\n\r\n",
    "space in the target": b"GET /x y HTTP/1.1\r\nHost: a\r\n\r\n",
}


async def answer_status(port: int, raw: bytes) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    data = b""
    async with stream:
        await stream.send_all(raw)
        with trio.move_on_after(5):
            while b"\r\n" not in data:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
    parts = data.split(b" ", 2)
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


@pytest.fixture
async def apache() -> AsyncIterator[int]:
    apache = reference("apache2")
    # Not pytest's tmp_path: apache2's children (www-data when started as root) must reach the files,
    # and pytest's base directory is private.
    tmp_path = Path(tempfile.mkdtemp(prefix="sesh-httpd-"))
    os.chmod(tmp_path, 0o755)
    port = free_port()
    roots = {}
    for name in ("default", "example"):
        root = tmp_path / name
        root.mkdir(mode=0o755)
        (root / "x").write_text(name)
        os.chmod(root / "x", 0o644)
        roots[name] = root
    user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
    conf = tmp_path / "httpd.conf"
    conf.write_text(
        f"ServerRoot {tmp_path}\nPidFile {tmp_path}/httpd.pid\nErrorLog {tmp_path}/error.log\n"
        f"DefaultRuntimeDir {tmp_path}\nMutex file:{tmp_path} default\nServerName 127.0.0.1\n{user}"
        + "".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so\n" for m in ("mpm_event", "authz_core"))
        + f"Listen 127.0.0.1:{port}\n<Directory {tmp_path}>\nRequire all granted\n</Directory>\n"
        # The first virtual host answers any other name; example.com has its own.
        + f"<VirtualHost *:{port}>\nServerName default.test\nDocumentRoot {roots['default']}\n</VirtualHost>\n"
        + f"<VirtualHost *:{port}>\nServerName example.com\nDocumentRoot {roots['example']}\n</VirtualHost>\n"
    )
    proc = await trio.lowlevel.open_process([apache, "-f", str(conf), "-DFOREGROUND"])
    try:
        for _ in range(200):
            try:
                await (await trio.open_tcp_stream("127.0.0.1", port)).aclose()
                break
            except OSError:
                await trio.sleep(0.05)
        else:
            raise AssertionError(f"apache2 did not start: {(tmp_path / 'error.log').read_text()}")
        yield port
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        shutil.rmtree(tmp_path, ignore_errors=True)


async def record_host(backend: Backend, exchange: HTTPExchange) -> None:
    await exchange.respond(200, [], exchange.request.header(b"host") or b"")


async def test_400_for_exactly_what_httpd_refuses(apache: int, nursery: trio.Nursery) -> None:
    node = await start_node(nursery)
    backend = await start_backend(nursery, "a", record_host)
    balancer = await start_balancer(nursery, backend.url)
    differences = []
    for name, raw in CASES.items():
        httpd = await answer_status(apache, raw)
        for role, port in (("node", node.port), ("balancer", balancer)):
            ours = await answer_status(port, raw)
            if (httpd == 400) != (ours == 400):
                differences.append(f"{name}: httpd {httpd}, {role} {ours}")
    assert not differences, "\n".join(differences)
    node.shutdown.request()


async def test_absolute_form_authority_wins_over_host_as_in_httpd(apache: int, nursery: trio.Nursery) -> None:
    async def body(port: int, raw: bytes) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(raw)
            data = b""
            with trio.fail_after(10):
                while chunk := await stream.receive_some(4096):
                    data += chunk
        return data.partition(b"\r\n\r\n")[2]

    raw = b"GET http://example.com/x HTTP/1.1\r\nHost: default.test\r\nConnection: close\r\n\r\n"
    assert await body(apache, raw) == b"example"  # httpd chose the virtual host by the authority
    backend = await start_backend(nursery, "a", record_host)
    balancer = await start_balancer(nursery, backend.url, preserve_host=True)
    assert await body(balancer, raw) == b"example.com"  # the member was handed the authority as Host
    assert backend.requests[-1].target == b"/x"
    node = await start_node(nursery)
    status = await body(node.port, raw.replace(b"/x ", b"/sesh/status "))
    assert b'"requests"' in status  # the node routed by the target's path
    node.shutdown.request()
