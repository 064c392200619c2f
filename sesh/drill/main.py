"""``sesh drill``: run the drill, show a progress bar on a terminal, print the report, exit 1 on loss."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import trio

from sesh.config import ConfigError, DrillConfig
from sesh.drill.http import split_url
from sesh.drill.run import DrillReport, drill
from sesh.up.control import ControlError


def run_drill(cfg: DrillConfig) -> int:
    try:
        split_url(cfg.url)
    except ValueError as exc:
        raise ConfigError(f"--url: {exc}") from None
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from sesh.drill.report import render

    err = Console(stderr=True)
    show = cfg.progress and err.is_terminal and not cfg.json
    try:
        if show:
            with Progress(TextColumn("drill"), BarColumn(), TimeRemainingColumn(), console=err,
                          transient=True) as bar:
                task = bar.add_task("drill", total=1.0)

                def update(done: float) -> None:
                    bar.update(task, completed=done)

                report = _run(cfg, update)
        else:
            report = _run(cfg, None)
    except ControlError as exc:
        print(f"sesh drill: {exc}", file=sys.stderr)
        return 2
    if cfg.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        Console().print(render(report))
    if report.fault_errors:
        print("sesh drill: a fault could not be applied (see the faults table)", file=sys.stderr)
    return 1 if report.lost or report.fault_errors else 0


def _run(cfg: DrillConfig, progress: Callable[[float], None] | None) -> DrillReport:
    return trio.run(drill, cfg, progress)
