"""Run sesh from a checkout: ``python sesh.py <role> ...``."""

from sesh.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
