"""The import layers of ../shared/DESIGN.md, checked on the source: core and protocol import no other
sesh package, net imports only protocol (and core-free helpers), role packages never import each other,
and rich is imported only by the dashboard."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SESH = Path(__file__).resolve().parent.parent / "sesh"
ROLES = {"balancer", "node", "store", "top", "up", "drill"}
# package -> the sesh packages it may import (besides itself); "log" and "config" are top-level modules
ALLOWED = {
    "core": set(),
    "protocol": set(),
    "net": {"protocol", "log"},
    **{role: {"core", "protocol", "net", "log", "config"} for role in ROLES},
}
RICH_ALLOWED = {"top"}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(SESH.rglob("*.py")):
        parts = path.relative_to(SESH).parts
        if len(parts) > 1 and parts[0] in ALLOWED:
            found.append((parts[0], path))
    return found


def violations(package: str, path: Path) -> list[str]:
    found = []
    for name in _imports(path):
        top = name.split(".")
        if top[0] == "rich" and package not in RICH_ALLOWED:
            found.append(f"{path}: rich is imported only by the dashboard (sesh/top/)")
        if top[0] != "sesh" or len(top) < 2 or top[1] == package:
            continue
        if top[1] not in ALLOWED[package]:
            found.append(f"{path} imports {name}: {package} may import {sorted(ALLOWED[package]) or 'nothing'}")
    return found


@pytest.mark.parametrize(("package", "path"), _modules(), ids=lambda v: str(v).rsplit("sesh/", 1)[-1])
def test_imports_follow_the_layers(package: str, path: Path) -> None:
    assert violations(package, path) == []


def test_the_check_sees_every_layer_and_catches_a_violation(tmp_path: Path) -> None:
    packages = {package for package, _ in _modules()}
    assert {"core", "protocol", "net", "balancer", "node", "store"} <= packages
    bad = tmp_path / "bad.py"
    bad.write_text("import rich\nfrom sesh.net.server import serve\nfrom sesh.balancer import proxy\n")
    assert len(violations("protocol", bad)) == 3
    assert len(violations("node", bad)) == 2  # rich, and another role


def test_only_the_serializer_imports_cbor2() -> None:
    """README's decision: wire codecs (protocol/cluster.py and any later one) carry CBOR payloads as
    opaque bytes made by core/serializer.py, which stays cbor2's only user."""
    users = [
        str(path.relative_to(SESH))
        for path in sorted(SESH.rglob("*.py"))
        if any(name.split(".")[0] == "cbor2" for name in _imports(path))
    ]
    assert users == ["core/serializer.py"]
