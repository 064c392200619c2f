"""Fixtures shared by the loopback, end-to-end and interop suites."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

import pytest

from tests import references
from tests.procs import MemcachedProcess, SeshProcess, start_sesh


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
        proc.kill()
        for pipe in (proc.proc.stdout, proc.proc.stderr):
            if pipe:
                pipe.close()


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
