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
    CtlConfig,
    DemoConfig,
    DrillConfig,
    NodeConfig,
    StoreConfig,
    TopConfig,
    UpConfig,
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


def _run_up(cfg: Any) -> int:
    from sesh.up.main import run_up

    return run_up(cfg)


def _run_ctl(cfg: Any) -> int:
    from sesh.up.main import run_ctl

    return run_ctl(cfg)


def _run_top(cfg: Any) -> int:
    from sesh.top.main import run_top

    return run_top(cfg)


def _run_drill(cfg: Any) -> int:
    from sesh.drill.main import run_drill
    from sesh.top.drill_view import print_report, progress_bar  # rich lives in sesh/top/ only

    return run_drill(cfg, progress_bar=progress_bar, print_report=print_report)


def _run_demo(cfg: Any) -> int:
    from sesh.demo import run_demo

    return run_demo(cfg)


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
        "Poll every balancer, node and store and show them live, refreshed every --interval seconds. "
        "Keys: q quits; up/down select a member; s, k, r stop, kill or restart it through 'sesh up'; d, e "
        "drain or enable it in the balancer. An unreachable target shows as down. --once prints one "
        "frame, --json one snapshot.",
        _run_top,
    ),
    "up": (
        UpConfig,
        "the whole topology on localhost: balancer, nodes and stores as supervised children",
        "Start the seed's topology (one balancer on --port with its manager at /status, --nodes app nodes, "
        "--stores store nodes) as child processes, print every URL and the manager token, prefix each "
        "child's log lines with its name, and listen on a control socket for 'sesh ctl'. Ctrl-C or "
        "SIGTERM stops every member through its own graceful path; children die with sesh up even when "
        "it is killed. Nothing is restarted unless asked.",
        _run_up,
    ),
    "ctl": (
        CtlConfig,
        "list, stop, start, kill or restart the members of a running 'sesh up'",
        "Talk to a running 'sesh up' over its control socket: 'sesh ctl list', 'sesh ctl kill node1', "
        "'sesh ctl --json list'. Member names: balancer, node1, node2, ..., store-n1, store-n2, ...",
        _run_ctl,
    ),
    "drill": (
        DrillConfig,
        "drive simulated browsers through the balancer, inject faults, report every loss",
        "Run --browsers simulated browsers (own cookie jar, keep-alive, one request at a time) through --url "
        "for --duration seconds while members of the running 'sesh up' are killed or restarted, then report "
        "sessions lost, acknowledged updates lost, failed requests, gaps and latency. Exits 1 when anything "
        "was lost.",
        _run_drill,
    ),
    "demo": (
        DemoConfig,
        "'sesh up' and 'sesh top' in one terminal (what 'make demo' starts)",
        "Start the topology as 'sesh up' does, members' logs written to a log directory it names, and show "
        "the live dashboard; q or Ctrl-C stops everything.",
        _run_demo,
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
    return parser


# The --help sections of option groups (Option.group); a role's own flags come first, ungrouped.
GROUP_TITLES = {
    "msm": ("msm mode (--mode msm)", "memcached-session-manager's settings, with its names"),
    "redis": ("msm mode on Redis / Valkey (redis:// URLs in --memcached-nodes)", None),
    "cluster": ("cluster mode (--mode cluster)", "Tomcat SimpleTcpCluster + DeltaManager's settings"),
}


def _add_role_options(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    groups: dict[str, argparse._ArgumentGroup] = {}
    for fld, opt in options_of(cls):
        target: argparse.ArgumentParser | argparse._ArgumentGroup = parser
        if opt.group:
            if opt.group not in groups:
                title, description = GROUP_TITLES.get(opt.group, (opt.group, None))
                groups[opt.group] = parser.add_argument_group(title, description)
            target = groups[opt.group]
        _add_option(target, fld, opt)


def _add_option(target: argparse.ArgumentParser | argparse._ArgumentGroup, fld: Any, opt: Any) -> None:
    common: dict[str, Any] = {"dest": fld.name, "help": opt.help}
    if opt.kind == "flag":
        common["help"] = f"{opt.help} (default: {'on' if fld.default else 'off'})"
        target.add_argument(*opt.flags, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, **common)
        return
    if opt.kind == "positional":
        target.add_argument(fld.name, nargs="?", default=argparse.SUPPRESS, metavar=opt.flags[0], help=opt.help)
        return
    if opt.kind == "count":
        target.add_argument(*opt.flags, action="count", default=argparse.SUPPRESS, **common)
        return
    default = fld.default
    shown = ", ".join(str(v) for v in default) if isinstance(default, tuple) else default
    common["help"] = f"{opt.help} (default: {shown!r})" if shown not in ("", ()) else opt.help
    action = "append" if opt.kind == "append" else "store"
    target.add_argument(*opt.flags, action=action, default=argparse.SUPPRESS, metavar=opt.metavar, **common)


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
