"""Entry point of `sesh balancer` (not landed yet)."""

import sys
from typing import Any


def run_balancer(cfg: Any) -> int:
    print("sesh: 'sesh balancer' is not available in this version yet", file=sys.stderr)
    return 2
