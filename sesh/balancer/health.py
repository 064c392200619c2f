"""Active health checks (httpd's mod_proxy_hcheck): probe each member every ``hcinterval`` and mark it
down (+C) after ``hcfails`` failures in a row, up again after ``hcpasses`` passes in a row.

``hcmethod`` TCP only connects; GET, HEAD and OPTIONS send a request to ``hcuri`` (default ``/``) and
pass on a 2xx or 3xx answer. Each probe is bounded by the member's ``connectiontimeout`` and
``timeout``. Results live in the scoreboard, so one worker process checks for all.
"""

from __future__ import annotations

import math

import trio

from sesh.balancer.balancer import Balancer
from sesh.balancer.members import HC_FAIL, Member
from sesh.log import get_logger
from sesh.net.http_client import UpstreamConnection
from sesh.net.server import set_nodelay
from sesh.net.shutdown import Shutdown
from sesh.protocol.http import InformationalResponse, Response, encode_request_head

log = get_logger("health")


def record_probe(member: Member, passed: bool) -> bool | None:
    """Count one probe result; return the new up/down state when it changed, else None."""
    cfg = member.cfg
    if passed:
        member.hc_fails_seen = 0
        member.hc_passes_seen += 1
        if member.status & HC_FAIL and member.hc_passes_seen >= cfg.hcpasses:
            member.status &= ~HC_FAIL
            return True
        return None
    member.hc_passes_seen = 0
    member.hc_fails_seen += 1
    if not member.status & HC_FAIL and member.hc_fails_seen >= cfg.hcfails:
        member.status |= HC_FAIL
        return False
    return None


async def probe(member: Member) -> bool:
    cfg = member.cfg
    try:
        with trio.fail_after(cfg.connectiontimeout):
            stream = await trio.open_tcp_stream(member.host, member.port)
    except (OSError, trio.TooSlowError):
        return False
    set_nodelay(stream)
    conn = UpstreamConnection(stream)
    try:
        if cfg.hcmethod == "TCP":
            return True
        method = cfg.hcmethod.encode()
        target = member.base_path + (cfg.hcuri.encode() or b"/")
        if not target.startswith(b"/"):
            target = b"/" + target
        head = encode_request_head(
            method, target, [(b"host", member.host_header), (b"connection", b"close"),
                             (b"user-agent", b"sesh-hcheck")]
        )
        conn.codec.expect_response(to_head=cfg.hcmethod == "HEAD")
        with trio.fail_after(cfg.timeout):
            await conn.send_all(head)
            while True:
                event, _ = await conn.next_event(math.inf)  # timed by the fail_after above
                if isinstance(event, Response):
                    return 200 <= event.status < 400
                if not isinstance(event, InformationalResponse) or event.status == 101:
                    return False  # (a 1xx is followed by the final answer; a 101 is none)
    except Exception:  # any failure to get a good answer is a failed probe
        return False
    finally:
        conn.close()


async def check_member(member: Member, shutdown: Shutdown) -> None:
    while not shutdown.requested:
        changed = record_probe(member, await probe(member))
        if changed is not None:
            state = "up again" if changed else "down"
            log.warning(f"health check marks the member {state}", member=member.url, hcmethod=member.cfg.hcmethod)
        await trio.sleep(member.cfg.hcinterval)


async def run_health_checks(balancer: Balancer, shutdown: Shutdown) -> None:
    async with trio.open_nursery() as nursery:
        for member in balancer.members:
            if member.cfg.hcmethod:
                nursery.start_soon(check_member, member, shutdown)
