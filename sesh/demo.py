"""``sesh demo``: a thin preset of ``sesh up``."""

from __future__ import annotations

from sesh.config import DemoConfig


def run_demo(cfg: DemoConfig) -> int:
    from sesh.up.main import run_up

    return run_up(cfg)
