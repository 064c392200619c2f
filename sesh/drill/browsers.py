"""Simulated browsers: each with its own cookie jar and keep-alive connection, one request at a time.

A browser counts the answers it was given (acknowledged updates: each 200 means "your hit was
recorded") and checks each one: the session id's base must never change (the msm store-node suffix
``-n1`` and the route ``.a`` may), and the hit count must go up. At the end one final request reads the
session's hit count, which must cover every acknowledged hit. A request that failed may or may not
have been applied, so a count higher than expected is fine; a lower one is a lost update.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import trio

from sesh.net.simple_http import Connection, HTTPFailure, Reply

ACCEPT_JSON = ("Accept", "application/json")
FINAL_ATTEMPTS = 20  # the final read is retried (a member may still be coming back), at most this often
FAILURE_PAUSE = 0.05  # after a failed request, so a dead balancer is not hammered in a busy loop


def session_base(session_id: str) -> str:
    """The id without the route (``.a``) and the msm store-node suffix (``-n1``)."""
    return session_id.split(".", 1)[0].split("-", 1)[0]


def session_route(session_id: str) -> str:
    return session_id.partition(".")[2]


@dataclass
class Outcome:
    """What one browser saw; the report folds these together."""

    requests: int = 0
    acked: int = 0  # 200 answers with a hit count, over every session it had
    sessions_lost: int = 0
    updates_lost: int = 0
    backwards: int = 0  # answers whose count was not above the previous one
    route_changes: int = 0
    final_hits: int | None = None
    failures: Counter[str] = field(default_factory=Counter)
    done: list[float] = field(default_factory=list)  # completion time of every success (drill clock)
    latencies: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # the first few, for the report


class Browser:
    def __init__(self, host: str, port: int, path: str, request_timeout: float) -> None:
        self.conn = Connection(host, port)
        self.path = path
        self.request_timeout = request_timeout
        self.jar: dict[str, str] = {}
        self.base: str | None = None
        self.route = ""
        self.session_acked = 0  # acknowledged hits of the current session
        self.last_hits = 0
        self.out = Outcome()

    def headers(self) -> list[tuple[str, str]]:
        headers = [ACCEPT_JSON]
        if self.jar:
            headers.append(("Cookie", "; ".join(f"{k}={v}" for k, v in self.jar.items())))
        return headers

    def _note(self, problem: str) -> None:
        if len(self.out.problems) < 5:
            self.out.problems.append(problem)

    async def fetch(self) -> dict[str, object] | None:
        """One request; the demo page's JSON, or None after counting the failure."""
        self.out.requests += 1
        started = trio.current_time()
        try:
            with trio.fail_after(self.request_timeout):
                reply = await self.conn.request("GET", self.path, self.headers())
        except trio.TooSlowError:
            await self.conn.close()
            self.out.failures["timeout"] += 1
            return None
        except HTTPFailure as exc:
            self.out.failures[exc.kind] += 1
            return None
        data = self._parse(reply)
        if data is None:
            return None
        self.out.latencies.append(trio.current_time() - started)
        return data

    def _parse(self, reply: Reply) -> dict[str, object] | None:
        if reply.status != 200:
            self.out.failures[f"http {reply.status}"] += 1
            return None
        try:
            data = json.loads(reply.body)
            if not isinstance(data, dict) or not isinstance(data.get("hits"), int):
                raise ValueError("no hits")
            str(data["session_id"])
        except (ValueError, KeyError):
            self.out.failures["bad answer"] += 1
            return None
        for value in reply.headers_named(b"set-cookie"):
            name, eq, rest = value.decode("latin-1").partition("=")
            if eq:
                self.jar[name.strip()] = rest.split(";", 1)[0].strip()
        return data

    def record(self, data: dict[str, object], now: float) -> None:
        """Check an acknowledged answer against what this browser knows of its session."""
        sid = str(data["session_id"])
        hits = int(data["hits"])  # type: ignore[call-overload]
        base, route = session_base(sid), session_route(sid)
        if self.base is not None and base != self.base:
            self.out.sessions_lost += 1
            self.out.updates_lost += self.session_acked
            self._note(f"session {self.base} became {base} after {self.session_acked} hits")
            self.session_acked = 0
            self.last_hits = 0
        elif self.base is not None and hits <= self.last_hits:
            self.out.backwards += 1
            self._note(f"hits went from {self.last_hits} to {hits}")
        if self.base is not None and route != self.route:
            self.out.route_changes += 1
        self.base, self.route = base, route
        self.session_acked += 1
        self.out.acked += 1
        self.last_hits = max(self.last_hits, hits)
        self.out.done.append(now)

    async def run(self, clock0: float, until: float, think: float) -> None:
        while trio.current_time() < until:
            data = await self.fetch()
            if data is None:
                await trio.sleep(FAILURE_PAUSE)
                continue
            self.record(data, trio.current_time() - clock0)
            if think:
                await trio.sleep(think)

    async def final(self) -> None:
        """Read the session's hit count once more: it must cover every acknowledged hit."""
        if self.base is None:
            return
        for _ in range(FINAL_ATTEMPTS):
            data = await self.fetch()
            if data is None:
                await trio.sleep(0.25)
                continue
            sid = str(data["session_id"])
            hits = int(data["hits"])  # type: ignore[call-overload]
            if session_base(sid) != self.base:
                self.out.sessions_lost += 1
                self.out.updates_lost += self.session_acked
                self._note(f"session {self.base} gone at the final read ({self.session_acked} hits)")
            elif hits < self.session_acked + 1:
                lost = self.session_acked + 1 - hits
                self.out.updates_lost += lost
                self._note(f"final count {hits} misses {lost} of {self.session_acked} acknowledged hits")
            self.out.final_hits = hits
            break
        else:
            self.out.failures["final read"] += 1
            self._note("the final read got no answer")
        await self.conn.close()


@dataclass
class HotOutcome:
    connections: int = 0
    acked: int = 0
    duplicates: int = 0  # 200 answers carrying a hit count another answer already carried
    updates_lost: int = 0
    session_lost: bool = False
    final_hits: int | None = None
    failures: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)


async def hot_session(host: str, port: int, path: str, connections: int, until: float,
                      request_timeout: float) -> HotOutcome:
    """``connections`` connections sending requests concurrently on one shared session."""
    out = HotOutcome(connections=connections)
    first = Browser(host, port, path, request_timeout)
    data = None
    for _ in range(FINAL_ATTEMPTS):
        data = await first.fetch()
        if data is not None:
            break
        await trio.sleep(0.25)
    if data is None:
        out.failures["start"] += 1
        out.problems.append("could not open the shared session")
        return out
    first.record(data, 0.0)
    base = first.base
    seen: set[int] = {int(data["hits"])}  # type: ignore[call-overload]
    jar = dict(first.jar)

    async def worker() -> None:
        b = Browser(host, port, path, request_timeout)
        b.jar = dict(jar)
        while trio.current_time() < until:
            got = await b.fetch()
            if got is None:
                await trio.sleep(FAILURE_PAUSE)
                continue
            hits = int(got["hits"])  # type: ignore[call-overload]
            if session_base(str(got["session_id"])) != base:
                out.session_lost = True
                if len(out.problems) < 5:
                    out.problems.append(f"shared session {base} became {got['session_id']}")
                continue
            out.acked += 1
            if hits in seen:
                out.duplicates += 1
                problem = f"hit count {hits} answered more than once"
                if len(out.problems) < 5 and problem not in out.problems:
                    out.problems.append(problem)
            seen.add(hits)
        out.failures.update(b.out.failures)
        await b.conn.close()

    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(worker)
    first.session_acked = out.acked + 1
    await first.final()
    out.final_hits = first.out.final_hits
    out.failures.update(first.out.failures)
    if first.out.sessions_lost:
        out.session_lost = True
    out.updates_lost = first.out.updates_lost
    out.problems.extend(first.out.problems[: 5 - len(out.problems)])
    return out

