"""Fixtures shared by the loopback, end-to-end and interop suites."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

import pytest

from tests import references
from tests.msm_helpers import StoreProc
from tests.procs import MemcachedProcess, SeshProcess, start_sesh

# Every test module's tier: pure (no sockets, fake or injected time), loopback (in-process servers on
# real loopback sockets), e2e (real `python sesh.py` processes), interop (a Debian reference program).
# A test is also marked e2e when it starts processes and interop when it needs a reference, whatever
# its module says; `make test-fast` runs what is pure or loopback and neither of those.
TIERS = {
    "test_balancer_e2e": "e2e",
    "test_balancer_hardening": "loopback",
    "test_balancer_httpd": "interop",
    "test_balancer_lbmethods": "pure",
    "test_balancer_proxy": "loopback",
    "test_balancer_rewrite": "pure",
    "test_balancer_sticky": "pure",
    "test_cluster_codec": "pure",
    "test_cluster_e2e": "e2e",
    "test_cluster_failover_e2e": "e2e",
    "test_cluster_netns": "e2e",
    "test_cluster_settings": "pure",
    "test_cluster_transport": "loopback",
    "test_config_cli": "pure",
    "test_core_ids": "pure",
    "test_core_manager": "pure",
    "test_core_mapping": "pure",
    "test_core_samples": "pure",
    "test_core_serializer": "pure",
    "test_demo": "e2e",
    "test_drill_e2e": "e2e",
    "test_drill_pure": "pure",
    "test_layers": "pure",
    "test_memcache_client_codec": "pure",
    "test_memcache_client_loopback": "loopback",
    "test_msm_backup": "loopback",
    "test_msm_concurrency": "e2e",
    "test_msm_hardening": "e2e",
    "test_msm_nonsticky": "e2e",
    "test_msm_pure": "pure",
    "test_msm_sticky": "e2e",
    "test_net_fdstream": "loopback",
    "test_net_http_hardening": "e2e",
    "test_net_http_httpd": "interop",
    "test_net_readiness": "loopback",
    "test_net_server": "loopback",
    "test_node_acknowledge": "pure",
    "test_node_turns": "pure",
    "test_node_asgi": "loopback",
    "test_node_demo": "pure",
    "test_node_expiry": "pure",
    "test_node_loopback": "loopback",
    "test_node_process": "e2e",
    "test_node_statistics": "pure",
    "test_node_status": "e2e",
    "test_node_workers": "e2e",
    "test_protocol_http": "pure",
    "test_protocol_session_ref": "pure",
    "test_redis_e2e": "interop",
    "test_store_clients": "interop",
    "test_store_codec": "pure",
    "test_store_differential": "interop",
    "test_store_hostile": "e2e",
    "test_store_loopback": "loopback",
    "test_store_process": "e2e",
    "test_store_storage": "pure",
    "test_top_e2e": "e2e",
    "test_top_render": "pure",
    "test_topology": "e2e",
    "test_up_browser": "interop",
    "test_up_e2e": "e2e",
    "test_up_topology": "pure",
}
_PROCESS_FIXTURES = {"sesh", "store_proc"}
_REFERENCE_FIXTURES = {"memcached"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if isinstance(item, pytest.Function) else ""
        tier = TIERS.get(module)
        if tier is None:
            raise pytest.UsageError(f"{module}.py has no tier: add it to TIERS in tests/conftest.py")
        fixtures = set(getattr(item, "fixturenames", ()))
        params = getattr(getattr(item, "callspec", None), "params", {})
        marks = {tier}
        if fixtures & _PROCESS_FIXTURES:
            marks.add("e2e")
        if fixtures & _REFERENCE_FIXTURES or "memcached" in params.values():
            marks.add("interop")
        for mark in sorted(marks):
            item.add_marker(getattr(pytest.mark, mark))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, object, object]:
    """Keep the reason of a missing-reference skip that pytest-trio drops (see tests/references.py)."""
    if call.when == "setup":
        references.last_skip_reason = None
    report = yield
    reason = references.last_skip_reason
    if reason and isinstance(report, pytest.TestReport) and report.skipped and isinstance(report.longrepr, tuple):
        path, line, _ = report.longrepr
        report.longrepr = (path, line, f"Skipped: {reason}")
    return report


@pytest.fixture
def sesh() -> Iterator[Callable[..., SeshProcess]]:
    """Start ``python sesh.py ARGS...`` processes; every one still running is killed at teardown."""
    started: list[SeshProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> SeshProcess:
        proc = start_sesh(*args, env=env)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def memcached() -> Iterator[Callable[..., MemcachedProcess]]:
    """Start Debian's memcached (the reference) on free loopback ports; killed at teardown."""
    started: list[MemcachedProcess] = []

    def start(*extra: str) -> MemcachedProcess:
        proc = MemcachedProcess(*extra)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@pytest.fixture
def store_proc(sesh: Callable[..., SeshProcess]) -> Iterator[Callable[[str], StoreProc]]:
    """Start store nodes of a kind (killed at teardown): ``store_proc("memcached")``."""
    started: list[StoreProc] = []

    def start(kind: str) -> StoreProc:
        proc = StoreProc(kind, sesh)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.kind == "memcached" and proc._mc is not None:
            proc.resume()
        proc.kill()
