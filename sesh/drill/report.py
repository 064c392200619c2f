"""The drill's progress bar and report table: the drill's only rich user (rich stays in sesh/top/ and
here, rendering only). Pure: a :class:`DrillReport` in, renderables out."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from sesh.drill.run import DrillReport


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def render(report: DrillReport) -> RenderableType:
    verdict = Text("LOST", style="bold red") if report.lost else Text("nothing lost", style="bold green")
    summary = Table(title=f"sesh drill: {report.browsers} browsers, {report.duration:g} s, {report.url}",
                    show_header=False, title_justify="left")
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("verdict", verdict)
    summary.add_row("sessions lost", _bad(report.sessions_lost))
    summary.add_row("acknowledged updates lost", _bad(report.updates_lost))
    summary.add_row("answers whose count went backwards", _bad(report.backwards))
    summary.add_row("requests / acknowledged", f"{report.requests} / {report.acked}")
    failed = ", ".join(f"{kind} {n}" for kind, n in sorted(report.failures.items())) or "none"
    summary.add_row("requests failed", failed)
    summary.add_row("latency p50 / p99", f"{_ms(report.p50)} / {_ms(report.p99)}")
    summary.add_row("requests/s (whole run)", f"{report.rps:.1f}")
    summary.add_row("sessions whose route changed", str(report.route_changes))
    parts: list[RenderableType] = [summary]
    if report.faults:
        faults = Table(title="faults", title_justify="left")
        for column in ("at", "fault", "longest gap", "all served after", "req/s before", "req/s after", "error"):
            faults.add_column(column, justify="left" if column in ("fault", "error") else "right")
        for f in report.faults:
            faults.add_row(f"{f.at:.2f} s", f"{f.action} {f.target}", _s(f.longest_gap), _s(f.all_served_after),
                           f"{f.rps_before:.1f}", f"{f.rps_after:.1f}", Text(f.error, style="red"))
        parts.append(faults)
    if report.hot is not None:
        hot = report.hot
        table = Table(title=f"hot session: {hot.connections} concurrent connections on one session",
                      show_header=False, title_justify="left")
        table.add_column("what")
        table.add_column("value", justify="right")
        table.add_row("acknowledged", str(hot.acked))
        table.add_row("hit counts answered twice", _bad(hot.duplicates))
        table.add_row("acknowledged updates lost", _bad(hot.updates_lost))
        table.add_row("session lost", _bad(int(hot.session_lost)))
        table.add_row("final hit count", str(hot.final_hits))
        table.add_row("requests failed", ", ".join(f"{k} {n}" for k, n in sorted(hot.failures.items())) or "none")
        parts.append(table)
    problems = [*report.problems, *(report.hot.problems if report.hot else ())]
    if problems:
        parts.append(Text("first problems seen:\n" + "\n".join(f"  {p}" for p in problems[:10]), style="yellow"))
    return Group(*parts)


def _bad(count: int) -> Text:
    return Text(str(count), style="bold red" if count else "green")
