"""The drill's progress bar and report table: the drill's only rich user (rich stays in sesh/top/ and
here, rendering only). Pure: a :class:`DrillReport` in, renderables out."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from sesh.drill.run import DrillReport


@contextlib.contextmanager
def progress_bar(show: bool) -> Iterator[Callable[[float], None] | None]:
    """A transient bar on stderr (when ``show`` and stderr is a terminal); yields its update function."""
    err = Console(stderr=True)
    if not show or not err.is_terminal:
        yield None
        return
    with Progress(TextColumn("drill"), BarColumn(), TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("drill", total=1.0)

        def update(done: float) -> None:
            bar.update(task, completed=done)

        yield update


def print_report(report: DrillReport) -> None:
    Console().print(render(report))


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
        faults = Table(title="faults (gap: longest wait for an answer; served: until every browser had one "
                       "again; req/s 3 s before and after)", title_justify="left")
        # gap: the longest any browser waited for an answer across the fault; served: seconds until every
        # browser had an answer again; before/after: requests/s in the 3 s around it.
        for column in ("at", "fault", "gap", "served", "before", "after", "error"):
            faults.add_column(column, justify="left" if column in ("fault", "error") else "right",
                              no_wrap=column != "error")
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
