"""Entry point of ``sesh node``."""

from __future__ import annotations

import sys

import trio

from sesh.config import NodeConfig
from sesh.net.shutdown import Shutdown, run_role
from sesh.node.server import serve_node


def run_node(cfg: NodeConfig) -> int:
    async def main(shutdown: Shutdown) -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_node, cfg, shutdown)
            print(
                f"sesh node {cfg.name} ({cfg.mode}, route {cfg.route or '-'}) listening on "
                f"http://{cfg.host}:{port}/",
                flush=True,
            )

    try:
        return run_role(main, grace=cfg.shutdown_grace, name=f"sesh node {cfg.name}")
    except OSError as exc:
        print(f"sesh node: {exc} (see --host/--port)", file=sys.stderr)
        return 1
