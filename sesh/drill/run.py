"""The drill: browsers and faults on one clock, then a :class:`DrillReport` (a frozen snapshot).

Faults run from one task on the drill's clock: ``kill``/``restart``/``start`` go to the running ``sesh
up`` over its control socket, ``cmd`` runs a shell command. Each fault's time is when its command was
issued; the report measures around it from the browsers' completion times.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import trio

from sesh.config import DrillConfig
from sesh.core.samples import percentile
from sesh.drill.browsers import Browser, HotOutcome, Outcome, hot_session
from sesh.net import control_client as control
from sesh.net.simple_http import split_url

RATE_WINDOW = 3.0  # seconds before and after a fault over which requests/s are measured
CONTROL_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class Fault:
    action: str  # kill | stop | restart | start | cmd
    target: str  # member name or shell command
    at: float  # when it should happen (seconds after the start)


@dataclass(frozen=True, slots=True)
class FaultReport:
    action: str
    target: str
    at: float  # when it was issued
    error: str  # empty when it worked
    longest_gap: float | None  # the longest wait of any browser for an answer across the fault
    all_served_after: float | None  # seconds after the fault until every browser had an answer again
    rps_before: float
    rps_after: float


@dataclass(frozen=True, slots=True)
class HotReport:
    connections: int
    acked: int
    duplicates: int
    updates_lost: int
    session_lost: bool
    final_hits: int | None
    failures: dict[str, int]
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DrillReport:
    url: str
    browsers: int
    duration: float
    requests: int
    acked: int
    sessions_lost: int
    updates_lost: int
    backwards: int
    route_changes: int  # sessions whose route changed
    failures: dict[str, int]
    p50: float | None
    p99: float | None
    rps: float
    faults: tuple[FaultReport, ...]
    hot: HotReport | None
    problems: tuple[str, ...]

    @property
    def lost(self) -> bool:
        hot = self.hot
        hot_lost = hot is not None and (hot.duplicates or hot.updates_lost or hot.session_lost or hot.acked == 0)
        return bool(self.sessions_lost or self.updates_lost or self.backwards or hot_lost or self.acked == 0)

    @property
    def fault_errors(self) -> bool:
        return any(f.error for f in self.faults)

    def as_dict(self) -> dict[str, object]:
        doc = dataclasses.asdict(self)
        doc["lost"] = self.lost
        return doc


def faults_of(cfg: DrillConfig) -> list[Fault]:
    faults = [Fault("kill", t, at) for t, at in cfg.kills]
    faults += [Fault("restart", t, at) for t, at in cfg.restarts]
    faults += [Fault("stop", t, at) for t, at in cfg.stops]
    faults += [Fault("start", t, at) for t, at in cfg.starts]
    faults += [Fault("cmd", t, at) for t, at in cfg.kill_cmds]
    return sorted(faults, key=lambda f: f.at)


async def _apply(fault: Fault, socket_path: str) -> str:
    """Carry out one fault; the error, or "" when it worked."""
    if fault.action == "cmd":
        result = await trio.run_process(fault.target, shell=True, check=False, capture_stdout=True,
                                        capture_stderr=True)
        if result.returncode != 0:
            err = result.stderr.decode("utf-8", "replace").strip()[-200:]
            return f"exit {result.returncode}: {err}"
        return ""
    try:
        answer = await control.request(socket_path, {"cmd": fault.action, "member": fault.target}, CONTROL_TIMEOUT)
    except control.ControlError as exc:
        return str(exc)
    return "" if answer.get("ok") else str(answer.get("error", "failed"))


def _around(outcomes: list[Outcome], at: float, duration: float) -> tuple[float | None, float | None]:
    longest: float | None = 0.0
    served: float | None = 0.0
    for out in outcomes:
        before = max((t for t in out.done if t <= at), default=0.0)
        after = min((t for t in out.done if t > at), default=None)
        if after is None:
            return None, None
        assert longest is not None and served is not None
        longest = max(longest, after - before)
        served = max(served, after - at)
    return longest, served


def _rate(times: list[float], lo: float, hi: float) -> float:
    span = hi - lo
    if span <= 0:
        return 0.0
    return sum(1 for t in times if lo <= t < hi) / span


async def drill(cfg: DrillConfig, progress: Callable[[float], None] | None = None) -> DrillReport:
    host, port, path = split_url(cfg.url)
    faults = faults_of(cfg)
    socket_path = ""
    if any(f.action != "cmd" for f in faults):
        socket_path = control.resolve_socket(cfg.control_socket, port)
    browsers = [Browser(host, port, path, cfg.request_timeout) for _ in range(cfg.browsers)]
    clock0 = trio.current_time()
    until = clock0 + cfg.duration
    issued: list[tuple[Fault, float, str]] = []
    hot: list[HotOutcome] = []

    async def run_faults() -> None:
        for fault in faults:
            await trio.sleep_until(clock0 + fault.at)
            at = trio.current_time() - clock0
            issued.append((fault, at, await _apply(fault, socket_path)))

    async def tick() -> None:
        while trio.current_time() < until:
            if progress is not None:
                progress(min(1.0, (trio.current_time() - clock0) / cfg.duration))
            await trio.sleep(0.2)

    async def run_hot() -> None:
        hot.append(await hot_session(host, port, path, cfg.browsers, until, cfg.request_timeout))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run_faults)
        nursery.start_soon(tick)
        if cfg.hot_session:
            nursery.start_soon(run_hot)
        for b in browsers:
            nursery.start_soon(b.run, clock0, until, cfg.think)
    if progress is not None:
        progress(1.0)
    async with trio.open_nursery() as nursery:
        for b in browsers:
            nursery.start_soon(b.final)
    return _report(cfg, [b.out for b in browsers], issued, hot[0] if hot else None)


def _report(cfg: DrillConfig, outcomes: list[Outcome], issued: list[tuple[Fault, float, str]],
            hot: HotOutcome | None) -> DrillReport:
    failures: Counter[str] = Counter()
    for out in outcomes:
        failures.update(out.failures)
    done = sorted(t for out in outcomes for t in out.done)
    latencies = [lat for out in outcomes for lat in out.latencies]
    fault_reports = []
    for fault, at, error in issued:
        gap, served = _around(outcomes, at, cfg.duration)
        lo, hi = max(0.0, at - RATE_WINDOW), min(cfg.duration, at + RATE_WINDOW)
        fault_reports.append(FaultReport(
            fault.action, fault.target, round(at, 3),
            error, _round(gap), _round(served), round(_rate(done, lo, at), 1), round(_rate(done, at, hi), 1),
        ))
    hot_report = None
    if hot is not None:
        hot_report = HotReport(hot.connections, hot.acked, hot.duplicates, hot.updates_lost, hot.session_lost,
                               hot.final_hits, dict(hot.failures), tuple(hot.problems))
    problems = tuple(p for out in outcomes for p in out.problems)[:20]
    return DrillReport(
        url=cfg.url,
        browsers=cfg.browsers,
        duration=cfg.duration,
        requests=sum(out.requests for out in outcomes),
        acked=sum(out.acked for out in outcomes),
        sessions_lost=sum(out.sessions_lost for out in outcomes),
        updates_lost=sum(out.updates_lost for out in outcomes),
        backwards=sum(out.backwards for out in outcomes),
        route_changes=sum(1 for out in outcomes if out.route_changes),
        failures=dict(failures),
        p50=_round(percentile(latencies, 0.5), 5),
        p99=_round(percentile(latencies, 0.99), 5),
        rps=round(len(done) / cfg.duration, 1),
        faults=tuple(fault_reports),
        hot=hot_report,
        problems=problems,
    )


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
