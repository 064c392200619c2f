"""Entry point of `sesh store` (not landed yet)."""

import sys
from typing import Any


def run_store(cfg: Any) -> int:
    print("sesh: 'sesh store' is not available in this version yet", file=sys.stderr)
    return 2
