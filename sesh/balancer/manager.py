"""The balancer-manager page: httpd's tables as HTML, the same data as JSON, and guarded live edits.

GET shows the balancer (StickySession, DisableFailover, Timeout, FailoverAttempts, Method, Path) and
each member (Worker URL, Route, RouteRedir, Factor, Set, Status, Elected, Busy, Load, To, From, and the
health-check columns); ``Accept: application/json`` gets :class:`BalancerStatistics` as JSON.

POST edits with httpd's form names (``w`` the member URL, ``w_lf`` loadfactor, ``w_ls`` lbset, ``w_wr``
route, ``w_rr`` redirect, ``w_status_I/N/D/H/R/S`` 1 or 0, ``b_lbm`` lbmethod, ``b_ss`` stickysession).
Unlike httpd, an edit needs the manager token (form field ``token`` or ``Authorization: Bearer``) as
well as the page's ``nonce``: without both it is refused with 403 and nothing changes. Every field is
checked before any is applied, so a bad value changes nothing either. Every edit is logged.

Values are checked as ASCII, whatever Python would accept: ``float()`` takes ``inf`` and ``1e400``,
``str.isdigit()`` and ``isalnum()`` take Unicode digits and letters (``²``, ``٣``, ``é``), none of
which httpd's balancer-manager (or a route in a session id) knows what to do with. A token holder
cannot forge log lines either: text values are printable ASCII, and the log escapes what it writes.
"""

from __future__ import annotations

import dataclasses
import html
import json
import re
import secrets
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qsl, quote

from sesh import __version__
from sesh.balancer.balancer import NAME, Balancer, BalancerStatistics
from sesh.balancer.members import LBMETHODS, TEXT_BYTES, Member, apply_status
from sesh.config import BalancerConfig
from sesh.log import get_logger
from sesh.net.http_client import ConnectionPool
from sesh.net.http_server import HTTPExchange

# An edit form is a few short fields; anything larger is not one.
MAX_FORM_BYTES = 16 * 1024
EDITABLE_FLAGS = ("I", "N", "D", "H", "R", "S")

log = get_logger("manager")

# ASCII only (re.ASCII, and explicit classes rather than \d or \w, which match Unicode digits).
# A load factor as httpd shows it (1 to 100, two decimals at most), an lbset 0-99, a route.
_LOADFACTOR = re.compile(r"[0-9]{1,3}(\.[0-9]{0,2})?", re.ASCII)
_LBSET = re.compile(r"[0-9]{1,2}", re.ASCII)
_ROUTE = re.compile(r"[A-Za-z0-9_-]*", re.ASCII)
# A stickysession: cookie / parameter names (RFC 6265 tokens) separated by "|", printable ASCII.
_STICKYSESSION = re.compile(r"[!#$%&'*+\-.^_`~0-9A-Za-z|]*", re.ASCII)


class EditError(Exception):
    """A bad edit: the message says which field and why (answered with 400)."""


def _size(count: int) -> str:
    """apr_strfsize's style: 512, 1.5K, 20M."""
    value = float(count)
    for unit in ("", "K", "M", "G", "T"):
        if value < 973 or unit == "T":
            if unit == "":
                return f"{int(value)}"
            return f"{value:.1f}{unit}" if value < 9.95 else f"{value:.0f}{unit}"
        value /= 1024
    return str(count)


class Manager:
    def __init__(
        self,
        cfg: BalancerConfig,
        balancer: Balancer,
        *,
        token: str,
        nonce: str,
        pools: Sequence[ConnectionPool] = (),
    ) -> None:
        self.cfg = cfg
        self.balancer = balancer
        self.token = token
        self.nonce = nonce
        self.pools = pools
        self.edits = 0
        self.refused = 0

    async def handle(self, exchange: HTTPExchange) -> None:
        request = exchange.request
        if request.method in (b"GET", b"HEAD"):
            await self._show(exchange)
        elif request.method == b"POST":
            await self._edit(exchange)
        else:
            await exchange.respond(405, [(b"allow", b"GET, HEAD, POST")], b"")

    # -- reading --
    def document(self) -> dict[str, Any]:
        stats = self.balancer.statistics()
        doc: dict[str, Any] = {"nonce": self.nonce, "balancer": dataclasses.asdict(stats)}
        doc["pools"] = [dataclasses.asdict(p.statistics()) for p in self.pools]
        # The pools and these counters are the answering worker process's own; the members' are summed.
        doc["manager"] = {"edits": self.edits, "refused": self.refused, "worker": self.balancer.worker,
                          "workers": self.balancer.board.workers}
        return doc

    async def _show(self, exchange: HTTPExchange, status: int = 200) -> None:
        accept = exchange.request.header(b"accept") or b""
        if b"application/json" in accept:
            body = json.dumps(self.document(), indent=1).encode() + b"\n"
            ctype = b"application/json"
        else:
            body = self.render_html(exchange.request.target.partition(b"?")[0].decode("latin-1")).encode()
            ctype = b"text/html; charset=utf-8"
        await exchange.respond(status, [(b"content-type", ctype), (b"cache-control", b"no-store")], body)

    def render_html(self, page: str) -> str:
        stats = self.balancer.statistics()
        esc = html.escape
        out = [
            "<!DOCTYPE html>\n<html><head><title>Balancer Manager</title>",
            "<style>table{border-collapse:collapse}th,td{border:1px dotted gray;padding:2px 6px;"
            "text-align:center}th{background:lightgray}</style></head>",
            f"<body><h1>Load Balancer Manager for {esc(self.cfg.host)}</h1>",
            f"<dl><dt>Server Version: sesh/{__version__}</dt>",
            "<dt>Balancer changes will NOT be persisted on restart.</dt></dl>",
            f"<hr />\n<h3>LoadBalancer Status for {esc(NAME)}</h3>",
            "<table><tr><th>StickySession</th><th>DisableFailover</th><th>Timeout</th>"
            "<th>FailoverAttempts</th><th>Method</th><th>Path</th></tr>",
            f"<tr><td>{esc(stats.stickysession)}</td><td>{'On' if stats.nofailover else 'Off'}</td>"
            f"<td>{stats.timeout:g}</td><td>{stats.maxattempts}</td><td>{esc(stats.lbmethod)}</td>"
            f"<td>{esc(stats.path)}</td></tr></table>\n<br />",
            "<table><tr><th>Worker URL</th><th>Route</th><th>RouteRedir</th><th>Factor</th><th>Set</th>"
            "<th>Status</th><th>Elected</th><th>Busy</th><th>Load</th><th>To</th><th>From</th>"
            "<th>HC Method</th><th>HC Interval</th><th>Passes</th><th>Fails</th><th>HC uri</th></tr>",
        ]
        for m in stats.members:
            link = f"{page}?b={quote(NAME.removeprefix('balancer://'))}&w={quote(m.url, safe='')}&nonce={self.nonce}"
            out.append(
                f"<tr><td><a href=\"{esc(link)}\">{esc(m.url)}</a></td><td>{esc(m.route)}</td>"
                f"<td>{esc(m.redirect)}</td><td>{m.loadfactor:.2f}</td><td>{m.lbset}</td>"
                f"<td>{esc(m.status)}</td><td>{m.elected}</td><td>{m.busy}</td><td>{m.lbstatus}</td>"
                f"<td>{_size(m.bytes_to)}</td><td>{_size(m.bytes_from)}</td><td>{esc(m.hcmethod)}</td>"
                f"<td>{m.hcinterval * 1000:.0f}ms</td><td>{m.hcpasses} ({m.hc_passes_seen})</td>"
                f"<td>{m.hcfails} ({m.hc_fails_seen})</td><td>{esc(m.hcuri)}</td></tr>"
            )
        out.append("</table>\n<hr />\n<h3>Edit</h3>")
        out.append(self._form(page, stats))
        out.append("</body></html>\n")
        return "\n".join(out)

    def _form(self, page: str, stats: BalancerStatistics) -> str:
        esc = html.escape
        options = "".join(
            f"<option{' selected' if name == stats.lbmethod else ''}>{name}</option>" for name in LBMETHODS
        )
        members = "".join(f"<option>{esc(m.url)}</option>" for m in stats.members)
        flags = "".join(
            f"<label>{f} <select name='w_status_{f}'><option value=''>-</option><option>1</option>"
            f"<option>0</option></select></label> " for f in EDITABLE_FLAGS
        )
        return (
            f"<form method='POST' action='{esc(page)}'><input type=hidden name=nonce value='{self.nonce}'>"
            "<p>Token: <input type=password name=token></p>"
            f"<p>Balancer: LB Method <select name=b_lbm>{options}</select> "
            f"StickySession <input name=b_ss value='{esc(self.balancer.stickysession)}'></p>"
            f"<p>Member <select name=w><option value=''>(none)</option>{members}</select> "
            "Load factor <input name=w_lf size=4> LB Set <input name=w_ls size=3> "
            "Route <input name=w_wr size=8> Route Redirect <input name=w_rr size=8></p>"
            f"<p>Status: {flags}</p><p><input type=submit value=Submit></p></form>"
        )

    # -- editing --
    async def _edit(self, exchange: HTTPExchange) -> None:
        request = exchange.request
        raw = b""
        while piece := await exchange.receive_data():
            raw += piece
            if len(raw) > MAX_FORM_BYTES:
                await _text(exchange, 413, "an edit form is at most 16 KiB")
                exchange.keep_alive = False
                return
        form = dict(parse_qsl(raw.decode("latin-1"), keep_blank_values=True))
        who = f"{exchange.client[0]}:{exchange.client[1]}"
        token = form.pop("token", "")
        auth = request.header(b"authorization") or b""
        if auth[:7].lower() == b"bearer ":
            token = auth[7:].decode("latin-1").strip()
        if not secrets.compare_digest(token.encode(), self.token.encode()):
            self.refused += 1
            log.warning("edit refused: bad or missing token", client=who)
            await _text(exchange, 403, "a valid manager token is required to edit (--manager-token)")
            return
        if not secrets.compare_digest(form.pop("nonce", "").encode(), self.nonce.encode()):
            self.refused += 1
            log.warning("edit refused: bad nonce", client=who)
            await _text(exchange, 403, "the nonce does not match this balancer-manager page; reload it")
            return
        try:
            changes = self.apply(form)
        except EditError as exc:
            log.warning("edit refused: bad value", client=who, reason=str(exc))
            await _text(exchange, 400, str(exc))
            return
        self.edits += 1
        log.info("edit", client=who, changes=", ".join(changes) or "nothing changed")
        await self._show(exchange)

    def apply(self, form: dict[str, str]) -> list[str]:
        """Check every field, then apply them all; returns what changed, for the log."""
        balancer = self.balancer
        member: Member | None = None
        url = form.get("w", "")
        if url:
            member = balancer.member_by_url(url)
            if member is None:
                raise EditError(f"w: no member {url!r}")
        pending: list[tuple[str, Any]] = []
        lbm = form.get("b_lbm", "")
        if lbm:
            if lbm not in LBMETHODS:
                raise EditError(f"b_lbm: expected {'|'.join(LBMETHODS)}, got {lbm!r}")
            pending.append(("b_lbm", lbm))
        if "b_ss" in form:
            value = form["b_ss"].strip(" ")
            if len(value) >= TEXT_BYTES or not _STICKYSESSION.fullmatch(value):
                raise EditError(f"b_ss: expected cookie names such as JSESSIONID|jsessionid, got {value!r}")
            pending.append(("b_ss", value))
        worker_fields = [k for k in form if k.startswith("w_") and form[k] != ""]
        if worker_fields and member is None:
            raise EditError("w: member edits need the member's URL in w")
        for key in worker_fields:
            value = form[key]
            if key == "w_lf":
                factor = round(float(value) * 100) if _LOADFACTOR.fullmatch(value) else 0
                if not 100 <= factor <= 10000:
                    raise EditError(f"w_lf: expected a load factor from 1 to 100, got {value!r}")
                pending.append((key, factor))
            elif key == "w_ls":
                if not _LBSET.fullmatch(value):
                    raise EditError(f"w_ls: expected an lbset from 0 to 99, got {value!r}")
                pending.append((key, int(value)))
            elif key in ("w_wr", "w_rr"):
                if len(value) >= TEXT_BYTES or not _ROUTE.fullmatch(value):
                    raise EditError(f"{key}: expected a route of ASCII letters, digits, - and _, got {value!r}")
                pending.append((key, value))
            elif key.startswith("w_status_") and key[-1] in EDITABLE_FLAGS and len(key) == 10:
                if value not in ("0", "1"):
                    raise EditError(f"{key}: expected 1 or 0, got {value!r}")
                pending.append((key, value == "1"))
            else:
                raise EditError(f"{key}: not an editable field")
        return [self._apply_one(key, value, member) for key, value in pending]

    def _apply_one(self, key: str, value: Any, member: Member | None) -> str:
        balancer = self.balancer
        if key == "b_lbm":
            balancer.lbmethod = value
            return f"lbmethod={value}"
        if key == "b_ss":
            balancer.stickysession = value
            return f"stickysession={value or '(None)'}"
        assert member is not None
        if key == "w_lf":
            member.lbfactor = value
            balancer.recalc_factors()
            return f"{member.url} loadfactor={value / 100:g}"
        if key == "w_ls":
            member.lbset = value
            return f"{member.url} lbset={value}"
        if key == "w_wr":
            member.route = value
            return f"{member.url} route={value}"
        if key == "w_rr":
            member.redirect = value
            return f"{member.url} redirect={value}"
        flag = key[-1]
        member.status = apply_status(member.status, ("+" if value else "-") + flag)
        return f"{member.url} status {'+' if value else '-'}{flag}"


async def _text(exchange: HTTPExchange, status: int, message: str) -> None:
    body = f"{status} {message}\n".encode()
    await exchange.respond(status, [(b"content-type", b"text/plain; charset=utf-8")], body)

