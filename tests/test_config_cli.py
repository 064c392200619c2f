"""Configuration precedence (defaults < TOML < flags), errors that name what to fix, and the CLI surface."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from sesh import __version__
from sesh.cli import ROLES, build_parser, main
from sesh.config import BalancerConfig, ConfigError, NodeConfig, Option, StoreConfig, check, load, options_of


def flags_for(argv: list[str]) -> tuple[str, dict[str, object], str | None]:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    return command, args, args.pop("config", None)  # type: ignore[return-value]


def test_defaults_then_file_then_flags(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text('name = "from-file"\nroute = "b"\nmax-inactive = 60\n')
    _, flags, config = flags_for(["node", "--config", str(toml), "--route", "c"])
    cfg = load(NodeConfig, flags, config)
    assert (cfg.name, cfg.route, cfg.max_inactive, cfg.port) == ("from-file", "c", 60, 8081)


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text("lbmethod = 'byrequests'\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown key 'lbmethod'"):
        load(NodeConfig, {}, str(toml))


def test_bad_value_in_file_names_file_and_key(tmp_path: Path) -> None:
    toml = tmp_path / "b.toml"
    toml.write_text("lbmethod = 'rr'\n")
    with pytest.raises(ConfigError, match=r"b\.toml: key 'lbmethod': expected byrequests\|bytraffic\|bybusyness"):
        load(BalancerConfig, {}, str(toml))


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--config: cannot read"):
        load(NodeConfig, {}, str(tmp_path / "missing.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ConfigError, match=r"broken\.toml: not valid TOML"):
        load(NodeConfig, {}, str(broken))


def test_bad_flag_value_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["balancer", "--lbmethod", "rr"]) == 2
    err = capsys.readouterr().err
    assert "--lbmethod: expected byrequests|bytraffic|bybusyness, got 'rr'" in err
    assert main(["node", "--port", "70000"]) == 2
    assert "--port: expected a value from 0 to 65535" in capsys.readouterr().err
    assert main(["store", "-I", "lots"]) == 2
    assert "--max-item-size: expected a size" in capsys.readouterr().err


def test_sizes_and_counts() -> None:
    _, flags, _ = flags_for(["store", "-I", "2m", "-vv", "-m", "128"])
    cfg = load(StoreConfig, flags)
    assert (cfg.max_item_size, cfg.verbose, cfg.memory_limit) == (2 * 1024 * 1024, 2, 128)


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sesh {__version__}"
    assert main([]) == 2


def help_entries(text: str) -> dict[str, str]:
    """``--help`` output (unwrapped) as {flag: its help text}: an entry is an indented invocation
    ("-v, --verbose", "--port PORT", "--via, --no-via"), then its help after two spaces or on the next,
    further indented line."""
    entries: dict[str, str] = {}
    invocation: list[str] = []
    for line in text.splitlines():
        entry = re.match(r"^  (\S.*?)(?:  +(\S.*))?$", line)
        if entry:
            invocation = [word.rstrip(",") for word in entry.group(1).split()]
            help_text = entry.group(2)
        elif line.startswith("    ") and invocation:
            help_text = line.strip()
        else:
            invocation = []
            continue
        if help_text is not None:
            for word in invocation:
                entries[word] = help_text
            invocation = []
    return entries


def shown_default(fld: dataclasses.Field[Any], opt: Option) -> str:
    """The " (default: ...)" a flag's help ends with: on/off for switches, the value for the rest
    that have one (sequences comma-separated); none for counts and positionals."""
    if opt.kind == "flag":
        return " (default: on)" if fld.default else " (default: off)"
    if opt.kind in ("count", "positional") or fld.default in ("", ()):
        return ""
    if isinstance(fld.default, tuple):
        return f" (default: {', '.join(map(str, fld.default))!r})"
    return f" (default: {fld.default!r})"


@pytest.mark.parametrize("role", list(ROLES))
def test_every_flag_is_in_the_help(
    role: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100000")  # no wrapping: each help is one line
    with pytest.raises(SystemExit) as info:
        main([role, "--help"])
    assert info.value.code == 0
    entries = help_entries(capsys.readouterr().out)
    assert "--config" in entries
    for fld, opt in options_of(ROLES[role][0]):
        for flag in opt.flags:
            assert entries.get(flag) == " ".join(opt.help.split()) + shown_default(fld, opt), flag
        if opt.kind == "value" and not isinstance(fld.default, tuple) and fld.default != "":
            assert opt.parse(str(fld.default)) == fld.default, opt.flags  # the default shown is a valid value


def test_ctl_without_a_member_says_which_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ctl", "kill"]) == 2
    assert "which member?" in capsys.readouterr().err


def test_cluster_mode_misconfiguration_names_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["node", "--mode", "cluster", "--membership", "static", "--port", "0"]) == 2
    assert "--membership static" in capsys.readouterr().err
    assert main(["node", "--mode", "cluster", "--mcast-bind", "10.9.8.7", "--port", "0"]) == 2
    assert "--cluster-secret" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        # The issue: accepted, then sent to memcached as an exptime it cannot parse.
        (["--max-inactive", "99999999999999999999"], "--max-inactive: expected a value from 1 to 31536000"),
        (["--max-inactive", "31536001"], "--max-inactive: expected a value from 1 to 31536000"),
        (["--max-inactive", "9" * 5000], "--max-inactive: expected a whole number"),
        (["--expire-interval", "inf"], "--expire-interval: expected a value from 0.01 to 3600"),
        (["--shutdown-grace", "1e300"], "--shutdown-grace: expected a value from 0 to 3600"),
        (["--operation-timeout", "inf"], "--operation-timeout: expected a value from 0.001 to 60"),
        (["--session-backup-timeout", "nan"], "--session-backup-timeout: expected a number, got NaN"),
        (["--lock-expiration", "1e30"], "--lock-expiration: expected a value from 0.1 to 3600"),
        (["--max-body", "99999g"], "--max-body: expected a size of at most 1073741824 bytes"),
        (["--cookie-name", "JSESSIONID; Path=/x"], "--cookie-name: expected a cookie name"),
        (["--cookie-name", ""], "--cookie-name: expected a cookie name"),
        (["--status-path", "sesh/status"], "--status-path: expected an absolute path"),
        (["--status-path", "/status?x=1"], "--status-path: expected an absolute path"),
        (["--status-token", "a b"], "--status-token: expected visible ASCII"),
        (["--status-token", "50%off"], "--status-token: expected visible ASCII"),
    ],
)
def test_absurd_node_numbers_and_names_are_refused_naming_the_flag(argv: list[str], message: str) -> None:
    # load() rather than main(): a value that was wrongly accepted must fail the test, not start a node.
    _, flags, _ = flags_for(["node", *argv])
    with pytest.raises(ConfigError) as info:
        load(NodeConfig, flags)
    assert message in str(info.value)


def test_absurd_values_in_a_file_name_the_key(tmp_path: Path) -> None:
    toml = tmp_path / "node.toml"
    toml.write_text("max-inactive = 99999999999999999999\n")
    with pytest.raises(ConfigError, match=r"node\.toml: key 'max-inactive'"):
        load(NodeConfig, {}, str(toml))
    toml.write_text("operation-timeout = inf\n")
    with pytest.raises(ConfigError, match=r"node\.toml: key 'operation-timeout': expected a value from"):
        load(NodeConfig, {}, str(toml))


def test_widest_node_values_are_accepted() -> None:
    _, flags, _ = flags_for(["node", "--max-inactive", "31536000", "--max-body", "1g", "--status-path", "",
                             "--status-token", "s3cr3t-T0ken", "--cookie-name", "SESSION_ID"])
    cfg = load(NodeConfig, flags)
    assert (cfg.max_inactive, cfg.max_body, cfg.status_path) == (31536000, 1024**3, "")
    assert (cfg.status_token, cfg.cookie_name) == ("s3cr3t-T0ken", "SESSION_ID")


# --- cross-field rules: sesh/config.py, one place per role and mode, run by load() ----------------------

MEMBER = "http://127.0.0.1:8081 route=a"


@pytest.mark.parametrize(
    ("cls", "flags", "message"),
    [
        (BalancerConfig, {}, "--member: at least one member is needed"),
        (BalancerConfig, {"members": [MEMBER, "http://127.0.0.1:8082 route=a"]}, "--member: two members have the same"),
        (StoreConfig, {"max_item_size": "512"}, "-I/--max-item-size: expected 1024 to 1073741824 bytes"),
        (StoreConfig, {"max_item_size": "40m", "memory_limit": "64"}, "-I/--max-item-size: 41943040 bytes is more "
         "than half of -m/--memory-limit (64 MiB)"),
        (NodeConfig, {"mode": "msm"}, "--memcached-nodes: msm mode needs at least one store node"),
        (NodeConfig, {"mode": "msm", "memcached_nodes": "n1:h:1", "sticky": "false", "route": "a"},
         "--route: a --no-sticky node must not have a route"),
        (NodeConfig, {"mode": "cluster", "cluster_secret": "x", "cluster_secret_file": "/x"},
         "--cluster-secret-file: give either --cluster-secret or --cluster-secret-file"),
        (NodeConfig, {"mode": "cluster", "members": ["127.0.0.1:4001"]}, "--member: static members need"),
        (NodeConfig, {"mode": "cluster", "receiver_address": "10.1.2.3"}, "--cluster-secret: the cluster listens on"),
    ],
)
def test_cross_field_rules_run_at_load_and_name_the_flag(cls: type, flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(cls, flags)
    assert message in str(info.value)
    unchecked = load(cls, flags, rules=False)  # each value alone is fine (sesh up --set checks keys one by one)
    with pytest.raises(ConfigError) as info:
        check(unchecked)
    assert message in str(info.value)


def test_a_modes_rules_apply_only_in_that_mode() -> None:
    # cluster and msm flags a local node does not use are not checked against each other
    cfg = load(NodeConfig, {"membership": "static", "sticky": "false", "route": "a", "failover_nodes": "n9"})
    assert cfg.mode == "local"
    with pytest.raises(ConfigError, match="--membership static"):
        load(NodeConfig, {"mode": "cluster", "membership": "static"})
    with pytest.raises(ConfigError, match="--failover-nodes: unknown node id 'n9'"):
        load(NodeConfig, {"mode": "msm", "memcached_nodes": "n1:h:1,n2:h:2", "failover_nodes": "n9"})


def test_failonstatus_is_checked_as_a_value() -> None:
    with pytest.raises(ConfigError, match="--failonstatus: expected HTTP statuses such as 500,503, got '500,abc'"):
        load(BalancerConfig, {"members": [MEMBER], "failonstatus": "500,abc"}, rules=False)
    assert load(BalancerConfig, {"members": [MEMBER], "failonstatus": "500, 503"}).failonstatus == "500, 503"

