"""``sesh top``."""

from __future__ import annotations

import sys

from sesh.config import TopConfig


def run_top(cfg: TopConfig) -> int:
    print("sesh top: not yet", file=sys.stderr)
    return 2
