"""The built-in demo page: the classic cluster-test index.jsp, plus a hit counter.

It sets a session attribute and shows the node's name in a colour of its own, the Session_ID and the
creation time. The hit counter goes up by one per request, so a lost update shows as a count that
went backwards or skipped when requests alternate between nodes.
"""

from __future__ import annotations

import functools
import hashlib
import html
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii

from sesh.core.manager import SessionTransaction


@functools.cache
def node_colour(name: str) -> str:
    """A stable, readable colour per node name, so alternating nodes are visible at a glance."""
    hue = int.from_bytes(hashlib.sha256(name.encode()).digest()[:2], "big") % 360
    return f"hsl({hue}, 70%, 38%)"


# The counter starts again beyond this: a session's attributes may come from a planted store value, and
# the page must render (and the next count be storable) whatever number it finds.
MAX_HITS = 2**53


def record_hit(tx: SessionTransaction, node: str) -> int:
    """What index.jsp does (set an attribute), plus counting this request."""
    hits = tx.get("hits", 0)
    # type() rather than isinstance(): True is an int to Python, but not a count.
    hits = (hits if type(hits) is int and 0 <= hits < MAX_HITS else 0) + 1
    tx.set("hits", hits)
    tx.set("last_node", node)
    return hits


@dataclass(slots=True)  # not frozen: one per request, and a frozen init costs three times a plain one
class DemoView:
    node: str
    route: str
    session_id: str
    created: float
    hits: int


@functools.cache
def _json_head(node: str, route: str) -> str:
    return f'{{"node": {encode_basestring_ascii(node)}, "route": {encode_basestring_ascii(route)}, "session_id": '


def demo_json(view: DemoView) -> bytes:
    """``json.dumps`` of the view's fields, byte for byte, built without it: the page is rendered on every
    request, and the generic encoder (with ``dataclasses.asdict``) was an eighth of a node's time."""
    created, hits = view.created, view.hits
    if type(created) is not float or not math.isfinite(created) or type(hits) is not int:
        return json.dumps({"node": view.node, "route": view.route, "session_id": view.session_id,
                           "created": created, "hits": hits}).encode()
    return (f"{_json_head(view.node, view.route)}{encode_basestring_ascii(view.session_id)}, "
            f'"created": {float.__repr__(created)}, "hits": {int.__repr__(hits)}}}').encode()


@functools.lru_cache(maxsize=1024)
def _created_text(created: float) -> str:
    # A session's creation time is shown on every request it makes: format it once (the cache is
    # bounded, so many sessions only cost recomputation, never memory).
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def demo_html(view: DemoView, reload_href: str) -> bytes:
    node, route, session_id, hits = view.node, view.route, view.session_id, view.hits
    created_text = _created_text(view.created)
    esc = html.escape
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sesh demo: {esc(node)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 3em; }}
h1 {{ color: {node_colour(node)}; }}
table {{ border-collapse: collapse; }} td {{ padding: .3em 1em .3em 0; }}
td:first-child {{ color: #666; }} code {{ font-size: 1.1em; }}
</style></head>
<body>
<h1>{esc(node)}</h1>
<table>
<tr><td>Node</td><td><b style="color: {node_colour(node)}">{esc(node)}</b>
  (route <code>{esc(route or "-")}</code>)</td></tr>
<tr><td>Session_ID</td><td><code id="session-id">{esc(session_id)}</code></td></tr>
<tr><td>Created</td><td>{esc(created_text)}</td></tr>
<tr><td>Hits</td><td><b id="hits">{hits}</b></td></tr>
</table>
<p><a href="{esc(reload_href)}">Reload</a> — the Session_ID stays the same and the hit count goes up by one,
whichever node answers.</p>
</body></html>
"""
    return page.encode()
