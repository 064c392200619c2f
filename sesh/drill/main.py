"""``sesh drill``: run the drill, show a progress bar on a terminal, print the report, exit 1 on loss."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any

import trio

from sesh.config import ConfigError, DrillConfig
from sesh.drill.run import DrillReport, drill
from sesh.net.control_client import ControlError
from sesh.net.simple_http import split_url

Progress = Callable[[bool], contextlib.AbstractContextManager[Callable[[float], None] | None]]


def run_drill(cfg: DrillConfig, *, progress_bar: Progress | None = None,
              print_report: Callable[[dict[str, Any]], None] | None = None) -> int:
    """Run the drill; ``progress_bar`` and ``print_report`` draw it (cli.py passes sesh/top's)."""
    try:
        split_url(cfg.url)
    except ValueError as exc:
        raise ConfigError(f"--url: {exc}") from None
    try:
        if progress_bar is None:
            report = _run(cfg, None)
        else:
            with progress_bar(cfg.progress and not cfg.json) as update:
                report = _run(cfg, update)
    except ControlError as exc:
        print(f"sesh drill: {exc}", file=sys.stderr)
        return 2
    if cfg.json or print_report is None:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print_report(report.as_dict())
    if report.fault_errors:
        print("sesh drill: a fault could not be applied (see the faults table)", file=sys.stderr)
    return 1 if report.lost or report.fault_errors else 0


def _run(cfg: DrillConfig, progress: Callable[[float], None] | None) -> DrillReport:
    return trio.run(drill, cfg, progress)
