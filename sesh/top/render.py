"""A :class:`Snapshot` (plus the selection and a status message) as rich renderables. Pure: no I/O."""

from __future__ import annotations

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from sesh.top.snapshot import Snapshot

KEYS = "q quit  ↑/↓ select  s stop  k kill  r restart  d drain  e enable"
_STATE_STYLE = {"running": "green", "starting": "yellow", "stopping": "yellow", "stopped": "red", "killed": "red",
                "exited": "red", "failed": "red"}


def size(count: int) -> str:
    value = float(count)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(count)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _state(up: bool, state: str, error: str) -> Text:
    """The member's state as sesh up knows it (if supervised), else up/down from the poll."""
    if state and state != "running":
        return Text(state, style=_STATE_STYLE.get(state, "red"))
    if not up:
        return Text("down", style="bold red")
    return Text(state or "up", style="green")


def short(url: str) -> str:
    """``http://127.0.0.1:8081/`` -> ``:8081`` (everything sesh up runs is on one host)."""
    rest = url.split("://", 1)[-1].rstrip("/")
    host, _, port = rest.rpartition(":")
    return f":{port}" if host in ("127.0.0.1", "localhost") else rest


def _table(title: str) -> Table:
    return Table(title=title, title_justify="left", title_style="bold cyan", box=box.SIMPLE_HEAD,
                 show_edge=False, pad_edge=False, padding=(0, 1))


def _errors(table: Table, errors: list[str]) -> None:
    if errors:
        table.caption = "; ".join(errors)
        table.caption_justify = "left"
        table.caption_style = "dim red"


def render(snap: Snapshot, selected: str = "", message: str = "", live: bool = False,
           banner: str = "") -> RenderableType:
    parts: list[RenderableType] = []
    header = Text(f"sesh top — {snap.source}", style="bold")
    if snap.up_error:
        header.append(f"  (down: {snap.up_error})", style="bold red")
    parts.append(header)
    if banner:
        parts.append(Text(banner, style="cyan"))

    node_names = {n.url.rstrip("/"): n.name for n in snap.nodes if n.url}
    for bal in snap.balancers:
        name = "" if bal.name in ("balancer", bal.url) else f"{bal.name} "
        title = f"balancer {name}{bal.url}"
        if bal.up:
            title += f"  {bal.lbmethod}  sticky {'-' if bal.sticky == '(None)' else bal.sticky}"
        table = _table(title)
        for column in ("", "member", "route", "status", "elected", "busy", "load", "to", "from"):
            table.add_column(column, justify="right" if column in ("elected", "busy", "load", "to", "from") else "left")
        if not bal.up:
            table.add_row(_mark(bal.name, selected), "-", "", _state(bal.up, bal.state, bal.error), "", "", "", "", "")
            _errors(table, [f"{bal.name}: {bal.error}"])
        for m in bal.members:
            style = "green" if m.usable and "Ok" in m.status else "red"
            if "Drn" in m.status or "N" in m.flags:
                style = "yellow"
            member = node_names.get(m.url.rstrip("/"), short(m.url))
            table.add_row(_mark(member, selected) if member in node_names.values() else _mark(bal.name, selected),
                          member, m.route or "-", Text(m.status, style=style),
                          str(m.elected), str(m.busy), str(m.load), size(m.bytes_to), size(m.bytes_from))
        parts.append(table)

    if snap.nodes:
        show_p99 = any(n.p99 is not None for n in snap.nodes)
        table = _table("nodes")
        columns = ["", "node", "state", "mode", "sess", "req/s"] + (["p99"] if show_p99 else [])
        columns += ["peers" if any(n.mode == "cluster" for n in snap.nodes) else "stores", "bk fail", "confl", "url"]
        width = max(len(n.name) for n in snap.nodes)
        for column in columns:
            table.add_column(column, justify="right" if column in ("sess", "req/s", "p99", "bk fail",
                                                                   "confl") else "left",
                             min_width=width if column == "node" else None, no_wrap=column in ("node", "state"))
        errors = []
        for n in snap.nodes:
            mode = n.mode + (" sticky" if n.sticky else "") if n.up else ""
            if not n.up:
                errors.append(f"{n.name}: {n.error}")
            stores = Text()
            for sn in n.store_nodes:
                stores.append(f"{sn.node_id} ", style="green" if sn.available else "bold red")
            row: list[str | Text] = [_mark(n.name, selected), n.name, _state(n.up, n.state, n.error), mode,
                                     str(n.sessions) if n.up else "", _rate(n.rps) if n.up else ""]
            if show_p99:
                row.append("-" if n.p99 is None else f"{n.p99 * 1000:.1f}ms")
            row += [stores, _bad(n.backup_failures) if n.up else "", _bad(n.conflicts) if n.up else "",
                    short(n.url)]
            table.add_row(*row)
        _errors(table, errors)
        parts.append(table)

    if snap.stores:
        table = _table("stores")
        width = max(len(st.name) for st in snap.stores)
        for column in ("", "store", "state", "items", "bytes", "hits", "evict", "conns", "ops/s", "addr"):
            table.add_column(column, justify="left" if column in ("", "store", "state", "addr") else "right",
                             min_width=width if column == "store" else None, no_wrap=column in ("store", "state"))
        errors = []
        for s in snap.stores:
            if s.up:
                hit = "-" if s.hit_rate is None else f"{s.hit_rate * 100:.0f}%"
                state = _state(s.up, s.state, s.error)
                if s.role:
                    state.append(f" {s.role}", style="bold red" if "down" in s.role else "cyan")
                table.add_row(_mark(s.name, selected), s.name, state, str(s.items),
                              size(s.bytes), hit, str(s.evictions), str(s.connections), _rate(s.ops_per_s),
                              short(s.address))
            else:
                errors.append(f"{s.name}: {s.error}")
                table.add_row(_mark(s.name, selected), s.name, _state(s.up, s.state, s.error), "", "", "", "", "",
                              "", short(s.address))
        _errors(table, errors)
        parts.append(table)

    if live:
        line = Text(KEYS, style="dim")
        if selected:
            line = Text(f"[{selected}]  ", style="bold") + line
        parts.append(line)
        if message:
            parts.append(Text(message, style="bold yellow"))
    return Group(*parts)


def _mark(name: str, selected: str) -> Text:
    return Text("▶", style="bold magenta") if name and name == selected else Text(" ")


def _bad(count: int) -> Text:
    return Text(str(count), style="bold red" if count else "")
