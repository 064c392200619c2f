"""``sesh drill``'s progress bar and report tables. rich is imported only in sesh/top/, so the drill's
rendering lives here: the report arrives as its JSON document (``DrillReport.as_dict()``), the drill
package stays free of rich and of this package, and cli.py hands these functions to ``run_drill``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text


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


def print_report(report: dict[str, Any]) -> None:
    Console().print(render(report))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms"


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f} s"


def render(report: dict[str, Any]) -> RenderableType:
    r = report
    verdict = Text("LOST", style="bold red") if r["lost"] else Text("nothing lost", style="bold green")
    title = "sesh drill: {} browsers, {:g} s, {}".format(r["browsers"], r["duration"], r["url"])
    summary = Table(title=title, show_header=False, title_justify="left")
    summary.add_column("what")
    summary.add_column("value", justify="right")
    summary.add_row("verdict", verdict)
    summary.add_row("sessions lost", _bad(r["sessions_lost"]))
    summary.add_row("acknowledged updates lost", _bad(r["updates_lost"]))
    summary.add_row("answers whose count went backwards", _bad(r["backwards"]))
    summary.add_row("requests / acknowledged", "{} / {}".format(r["requests"], r["acked"]))
    summary.add_row("requests failed", _kinds(r["failures"]))
    summary.add_row("latency p50 / p99", "{} / {}".format(_ms(r["p50"]), _ms(r["p99"])))
    summary.add_row("requests/s (whole run)", "{:.1f}".format(r["rps"]))
    summary.add_row("sessions whose route changed", str(r["route_changes"]))
    parts: list[RenderableType] = [summary]
    if r["faults"]:
        faults = Table(title="faults (gap: longest wait for an answer; served: until every browser had one "
                       "again; req/s 3 s before and after)", title_justify="left")
        for column in ("at", "fault", "gap", "served", "before", "after", "error"):
            faults.add_column(column, justify="left" if column in ("fault", "error") else "right",
                              no_wrap=column != "error")
        for f in r["faults"]:
            faults.add_row("{:.2f} s".format(f["at"]), "{} {}".format(f["action"], f["target"]),
                           _s(f["longest_gap"]), _s(f["all_served_after"]), "{:.1f}".format(f["rps_before"]),
                           "{:.1f}".format(f["rps_after"]), Text(f["error"], style="red"))
        parts.append(faults)
    hot = r["hot"]
    if hot is not None:
        table = Table(title="hot session: {} concurrent connections on one session".format(hot["connections"]),
                      show_header=False, title_justify="left")
        table.add_column("what")
        table.add_column("value", justify="right")
        table.add_row("acknowledged", str(hot["acked"]))
        table.add_row("hit counts answered twice", _bad(hot["duplicates"]))
        table.add_row("acknowledged updates lost", _bad(hot["updates_lost"]))
        table.add_row("session lost", _bad(int(hot["session_lost"])))
        table.add_row("final hit count", str(hot["final_hits"]))
        table.add_row("requests failed", _kinds(hot["failures"]))
        parts.append(table)
    problems = [*r["problems"], *(hot["problems"] if hot else ())]
    if problems:
        parts.append(Text("first problems seen:\n" + "\n".join("  " + p for p in problems[:10]), style="yellow"))
    return Group(*parts)


def _kinds(failures: dict[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in sorted(failures.items())) or "none"


def _bad(count: int) -> Text:
    return Text(str(count), style="bold red" if count else "green")
