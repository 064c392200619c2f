"""Argument parsing for every subcommand; the only module that imports every role.

Each subcommand's flags are generated from its config dataclass (``sesh/config.py``), so a flag, its
TOML key and its help text are one declaration. Roles are imported only when they run, so ``--help``
stays fast and a role's import cost is paid only by that role.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from sesh import __version__
from sesh.config import (
    BalancerConfig,
    ConfigError,
    NodeConfig,
    StoreConfig,
    TopConfig,
    load,
    options_of,
)

EXIT_USAGE = 2


def _run_node(cfg: Any) -> int:
    from sesh.node.main import run_node

    return run_node(cfg)


def _run_store(cfg: Any) -> int:
    from sesh.store.main import run_store

    return run_store(cfg)


def _run_balancer(cfg: Any) -> int:
    from sesh.balancer.main import run_balancer

    return run_balancer(cfg)


def _not_landed(what: str) -> Callable[[Any], int]:
    def run(cfg: Any) -> int:
        print(f"sesh: {what} is not available in this version yet", file=sys.stderr)
        return EXIT_USAGE

    return run


# subcommand -> (config class, one-line summary, description, runner)
ROLES: dict[str, tuple[type[Any], str, str, Callable[[Any], int]]] = {
    "balancer": (
        BalancerConfig,
        "HTTP/1.1 reverse proxy and load balancer (httpd mod_proxy_balancer semantics)",
        "Spread requests over members by lbmethod, keep sessions sticky on their route, fail over, "
        "and serve a balancer-manager page.",
        _run_balancer,
    ),
    "node": (
        NodeConfig,
        "app node: demo page or an ASGI app, with local, cluster or msm sessions",
        "Serve the demo page (or --app) and keep its sessions in this process (local), replicated to "
        "every peer (cluster) or backed up to memcached-protocol store nodes (msm).",
        _run_node,
    ),
    "store": (
        StoreConfig,
        "memcached-protocol session store (text and meta protocol)",
        "A memcached-compatible server: the embedded default session store. Real memcached works in its "
        "place.",
        _run_store,
    ),
    "top": (
        TopConfig,
        "live terminal dashboard of balancers, nodes and stores",
        "Poll every role's status and show it live; --once prints one frame.",
        _not_landed("'sesh top'"),
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sesh",
        description="sesh makes a web application's HTTP sessions survive load balancing: a balancer, "
        "app nodes with replicated or store-backed sessions, a memcached-protocol store and a dashboard.",
    )
    parser.add_argument("--version", action="version", version=f"sesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (cls, summary, description, _) in ROLES.items():
        role = sub.add_parser(
            name,
            help=summary,
            description=f"{description} Configuration: defaults < --config FILE.toml < flags.",
        )
        role.add_argument(
            "--config",
            metavar="FILE.toml",
            default=argparse.SUPPRESS,
            help="read settings from this TOML file (keys are the long flag names without the leading "
            "dashes); flags win",
        )
        _add_role_options(role, cls)
    sub.add_parser(
        "demo",
        help="run the demo topology on localhost (what 'make demo' starts)",
        description="Start the demo on localhost and print the URL to open. Stop it with Ctrl-C.",
    )
    return parser


def _add_role_options(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    for fld, opt in options_of(cls):
        common: dict[str, Any] = {"dest": fld.name, "help": opt.help}
        if opt.kind == "flag":
            common["help"] = f"{opt.help} (default: {'on' if fld.default else 'off'})"
            parser.add_argument(
                *opt.flags, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, **common
            )
            continue
        if opt.kind == "count":
            parser.add_argument(*opt.flags, action="count", default=argparse.SUPPRESS, **common)
            continue
        default = fld.default
        shown = ", ".join(str(v) for v in default) if isinstance(default, tuple) else default
        common["help"] = f"{opt.help} (default: {shown!r})" if shown not in ("", ()) else opt.help
        action = "append" if opt.kind == "append" else "store"
        parser.add_argument(
            *opt.flags, action=action, default=argparse.SUPPRESS, metavar=opt.metavar, **common
        )


def _configure_logging(command: str, cfg: Any) -> None:
    from sesh import log

    name = getattr(cfg, "name", "") or str(getattr(cfg, "port", ""))
    level = log.level_from(cfg.log_level, cfg.verbose, cfg.quiet)
    log.configure(command, name, level)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = vars(parser.parse_args(argv))
    command = args.pop("command", None)
    if command is None:
        parser.print_help()
        return EXIT_USAGE
    if command == "demo":
        from sesh.demo import run_demo

        return run_demo()
    cls, _, _, runner = ROLES[command]
    config_file = args.pop("config", None)
    try:
        cfg = load(cls, args, config_file)
    except ConfigError as exc:
        print(f"sesh {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _configure_logging(command, cfg)
    try:
        return runner(cfg)
    except ConfigError as exc:
        print(f"sesh {command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"sesh {command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
