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
    from sesh.drill.report import print_report, progress_bar

    try:
        with progress_bar(cfg.progress and not cfg.json) as update:
            report = _run(cfg, update)
    except ControlError as exc:
        print(f"sesh drill: {exc}", file=sys.stderr)
        return 2
    if cfg.json:
        print(json.dumps(report.as_dict(), indent=1))
    else:
        print_report(report)
    if report.fault_errors:
        print("sesh drill: a fault could not be applied (see the faults table)", file=sys.stderr)
    return 1 if report.lost or report.fault_errors else 0


def _run(cfg: DrillConfig, progress: Callable[[float], None] | None) -> DrillReport:
    return trio.run(drill, cfg, progress)
