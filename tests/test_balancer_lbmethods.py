"""Pure tests of httpd's election algorithms: exact sequences, lbsets, standbys, spares, drain, retry."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from sesh.balancer import lbmethods
from sesh.balancer.balancer import Balancer
from sesh.balancer.members import (
    DISABLED,
    DRAIN,
    HOT_SPARE,
    HOT_STANDBY,
    IGNORE_ERRORS,
    IN_ERROR,
    INITIALIZED,
    STOPPED,
    Member,
    Scoreboard,
    apply_status,
    status_words,
)
from sesh.config import BalancerConfig, as_member


@dataclass
class FakeMember:
    name: str
    lbfactor: int = 100
    status: int = INITIALIZED
    lbstatus: int = 0
    lbset: int = 0
    retries: int = 0
    error_time: float = 0.0
    retry: float = 60.0
    busy: int = 0
    transferred: int = 0
    read: int = 0
    route: str = ""
    redirect: str = ""


def sequence(method: str, members: list[FakeMember], count: int, now: float = 1000.0) -> str:
    out = []
    for _ in range(count):
        chosen = lbmethods.elect(method, members, now)
        out.append(chosen.name if chosen else "-")
    return "".join(out)


def test_byrequests_3_to_1_is_smooth_weighted_round_robin() -> None:
    members = [FakeMember("a", 300), FakeMember("b", 100)]
    assert sequence("byrequests", members, 12) == "aaba" * 3


def test_byrequests_equal_factors_alternate_first_member_first() -> None:
    members = [FakeMember("a"), FakeMember("b"), FakeMember("c")]
    assert sequence("byrequests", members, 7) == "abcabca"


def test_byrequests_5_2_1_matches_hand_computed_lbstatus() -> None:
    # lbstatus after each election, computed by hand from httpd's is_best_byrequests.
    members = [FakeMember("a", 500), FakeMember("b", 200), FakeMember("c", 100)]
    assert sequence("byrequests", members, 8) == "abaacaba"
    assert [m.lbstatus for m in members] == [0, 0, 0]


def test_bytraffic_picks_lowest_weighted_traffic_first_on_ties() -> None:
    a, b = FakeMember("a", 100), FakeMember("b", 200)
    assert lbmethods.bytraffic([a, b], 0.0) is a
    a.transferred, a.read = 100, 50  # 150 per factor-100
    b.transferred, b.read = 200, 200  # 400 / 2 per factor unit
    assert lbmethods.bytraffic([a, b], 0.0) is a
    a.read = 500
    assert lbmethods.bytraffic([a, b], 0.0) is b


def test_bytraffic_uses_integer_division_per_direction_like_c() -> None:
    a, b = FakeMember("a", 300), FakeMember("b", 300)
    a.transferred, a.read = 299, 299  # 0 + 0 in integer division
    b.transferred, b.read = 300, 0  # 1 + 0
    assert lbmethods.bytraffic([b, a], 0.0) is a


def test_bybusyness_prefers_fewest_busy_then_byrequests() -> None:
    a, b, c = FakeMember("a"), FakeMember("b"), FakeMember("c")
    a.busy = 2
    assert sequence("bybusyness", [a, b, c], 4) == "bcbc"
    a.busy = 0
    b.busy = c.busy = 1
    assert sequence("bybusyness", [a, b, c], 2) == "aa"


def test_hot_standby_only_when_nothing_else_in_the_set_is_usable() -> None:
    a, b, s = FakeMember("a"), FakeMember("b"), FakeMember("s", status=INITIALIZED | HOT_STANDBY)
    assert sequence("byrequests", [a, s, b], 4) == "abab"
    a.status |= DISABLED
    b.status |= STOPPED
    assert sequence("byrequests", [a, s, b], 2) == "ss"


def test_lbsets_are_tried_in_order() -> None:
    a = FakeMember("a", lbset=1)
    b = FakeMember("b", lbset=0)
    c = FakeMember("c", lbset=2)
    assert sequence("byrequests", [a, b, c], 2) == "bb"
    b.status |= DISABLED
    assert sequence("byrequests", [a, b, c], 2) == "aa"
    a.status |= DISABLED
    assert sequence("byrequests", [a, b, c], 1) == "c"
    c.status |= DISABLED
    assert sequence("byrequests", [a, b, c], 1) == "-"


def test_standby_of_a_lower_set_beats_members_of_a_higher_set() -> None:
    a = FakeMember("a", status=INITIALIZED | DISABLED)
    s = FakeMember("s", status=INITIALIZED | HOT_STANDBY)
    c = FakeMember("c", lbset=1)
    assert sequence("byrequests", [a, s, c], 1) == "s"


def test_drain_gets_no_new_sessions_and_a_spare_replaces_it() -> None:
    a, b = FakeMember("a", status=INITIALIZED | DRAIN), FakeMember("b")
    r = FakeMember("r", status=INITIALIZED | HOT_SPARE)
    assert sequence("byrequests", [a, b, r], 4) == "brbr"
    a.status = INITIALIZED
    assert "r" not in sequence("byrequests", [a, b, r], 4)


def test_member_in_error_is_retried_after_retry_seconds() -> None:
    a, b = FakeMember("a", retry=10.0), FakeMember("b")
    a.status |= IN_ERROR
    a.error_time = 100.0
    assert sequence("byrequests", [a, b], 2, now=105.0) == "bb"
    assert a.status & IN_ERROR
    assert sequence("byrequests", [a, b], 2, now=110.5) == "ab"
    assert not a.status & IN_ERROR and a.retries == 1


def test_stopped_member_in_error_is_never_retried() -> None:
    a = FakeMember("a", status=INITIALIZED | STOPPED | IN_ERROR)
    assert not lbmethods.retry(a, 1e9)


def test_ignore_errors_member_is_retried_at_once() -> None:
    a = FakeMember("a", status=INITIALIZED | IN_ERROR | IGNORE_ERRORS, error_time=100.0)
    assert lbmethods.retry(a, 100.0)


def test_force_recovery_clears_errors_only_when_all_are_in_error() -> None:
    a = FakeMember("a", status=INITIALIZED | IN_ERROR, error_time=100.0)
    b = FakeMember("b", status=INITIALIZED | IN_ERROR, error_time=100.0)
    lbmethods.force_recovery([a, b], 101.0, enabled=False)
    assert a.status & IN_ERROR and b.status & IN_ERROR
    lbmethods.force_recovery([a, b], 101.0, enabled=True)
    assert not a.status & IN_ERROR and not b.status & IN_ERROR
    a.status |= IN_ERROR
    lbmethods.force_recovery([a, b], 101.0, enabled=True)
    assert a.status & IN_ERROR


def test_sticky_election_counts_in_the_round_robin() -> None:
    a, b = FakeMember("a"), FakeMember("b")
    lbmethods.sticky_elect([a, b], b)
    assert (a.lbstatus, b.lbstatus) == (100, -100)
    assert sequence("byrequests", [a, b], 1) == "a"


def test_route_lookup_prefers_non_standby_and_follows_redirect() -> None:
    a = FakeMember("a", route="x", status=INITIALIZED | DISABLED, redirect="y")
    b = FakeMember("b", route="y")
    s = FakeMember("s", route="x", status=INITIALIZED | HOT_STANDBY)
    assert lbmethods.find_route_member([a, b, s], "y", 0.0) is b
    assert lbmethods.find_route_member([a, b, s], "x", 0.0) is b  # a's redirect, before standby s
    a.redirect = ""
    assert lbmethods.find_route_member([a, b, s], "x", 0.0) is s
    assert lbmethods.find_route_member([a, b, s], "nope", 0.0) is None


def test_redirect_cycles_end() -> None:
    a = FakeMember("a", route="x", redirect="y", status=INITIALIZED | DISABLED)
    b = FakeMember("b", route="y", redirect="x", status=INITIALIZED | DISABLED)
    assert lbmethods.find_route_member([a, b], "x", 0.0) is None


def test_status_syntax_and_words() -> None:
    assert apply_status(INITIALIZED, "+H") == INITIALIZED | HOT_STANDBY
    assert apply_status(INITIALIZED | DISABLED, "-D+I") == INITIALIZED | IGNORE_ERRORS
    assert apply_status(INITIALIZED, "DN") == INITIALIZED | DISABLED | DRAIN
    with pytest.raises(ValueError, match="unknown status flag"):
        apply_status(INITIALIZED, "+Q")
    assert status_words(INITIALIZED) == "Init Ok"
    assert status_words(INITIALIZED | DISABLED | HOT_STANDBY) == "Init Dis Stby"


def test_scoreboard_members_elect_like_plain_state_and_share_counters_across_workers() -> None:
    cfg = BalancerConfig(
        members=(as_member("http://127.0.0.1:1 loadfactor=3 route=a"), as_member("http://127.0.0.1:2 route=b"))
    )
    board = Scoreboard(2, workers=2)
    Balancer(cfg, board).initialize()
    first = Balancer(cfg, board, worker=0)
    second = Balancer(cfg, board, worker=1)
    names = []
    for i in range(8):
        balancer = first if i % 2 == 0 else second
        choice = balancer.choose(b"/", (), 0.0)
        assert choice.member is not None
        names.append(choice.member.cfg.route)
    assert "".join(names) == "aaba" * 2
    a: Member = first.members[0]
    a.add_busy(1)
    second.members[0].add_busy(2)
    assert a.busy == 3 and second.members[0].busy == 3
    assert first.members[0].elected == 6 and first.members[1].elected == 2


@pytest.mark.parametrize(
    "specs",
    [
        ("loadfactor=3", "loadfactor=1"),
        ("loadfactor=5", "loadfactor=2", "loadfactor=1"),
        ("loadfactor=1", "loadfactor=1", "status=+H"),  # a standby: the words path hands over
        ("loadfactor=2", "lbset=1"),
    ],
)
def test_byrequests_on_the_scoreboard_words_elects_as_on_plain_state(specs: tuple[str, ...]) -> None:
    cfg = BalancerConfig(
        members=tuple(as_member(f"http://127.0.0.1:{port} route=m{port} {spec}") for port, spec in enumerate(specs, 1))
    )
    board = Scoreboard(len(specs))
    Balancer(cfg, board).initialize()
    balancer = Balancer(cfg, board)
    plain = [
        FakeMember(f"m{port}", m.lbfactor, m.status, lbset=m.lbset)
        for port, m in enumerate(balancer.members, 1)
    ]
    chosen = []
    for _ in range(24):
        choice = balancer.choose(b"/", (), 1000.0)
        assert choice.member is not None
        chosen.append(choice.member.cfg.route)
    assert " ".join(chosen) == " ".join(lbmethods.elect("byrequests", plain, 1000.0).name for _ in range(24))  # type: ignore[union-attr]
    assert [m.lbstatus for m in balancer.members] == [m.lbstatus for m in plain]
