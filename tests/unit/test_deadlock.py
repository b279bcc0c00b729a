"""The wait-for graph: cycles found (pure), and waits recorded, ended and refused by the core."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dibs.core.deadlock import TABLE, describe, find_cycle
from dibs.core.leases import Acquire, Release
from dibs.core.resources import parse_resource
from dibs.ground.errors import Conflict, Deadlock
from tests.conftest import FakeClock, FakeLiveness
from tests.unit.test_leases import Core, core

__all__ = ["core"]  # the fixture, shared with test_leases

WAITER = {"host": "h", "pid": 7, "pid_start": 1, "host_boot": "hb", "horizon": 30.0}


def test_no_cycle_without_a_way_back() -> None:
    """A chain of waits that never returns to the claimant is no deadlock."""
    graph = {"b": {"c": "issue:C"}, "c": {"d": "issue:D"}}
    assert find_cycle(graph, "a", {"b": "issue:B"}) is None


def test_two_waiters_crossing_make_a_cycle() -> None:
    """a waits for b while b waits for a."""
    cycle = find_cycle({"b": {"a": "issue:A"}}, "a", {"b": "issue:B"})
    assert [("a", "issue:B", "b"), ("b", "issue:A", "a")] == cycle
    assert "deadlock: a waits for issue:B held by b, who waits for issue:A held by a" == describe(
        cycle or []
    )


def test_the_shortest_cycle_is_named() -> None:
    """Of several cycles the new wait closes, the shortest (then by name) is reported."""
    graph = {"b": {"c": "r2"}, "c": {"a": "r3"}, "d": {"a": "r4"}}
    assert [("a", "r1", "d"), ("d", "r4", "a")] == find_cycle(graph, "a", {"b": "r0", "d": "r1"})


def test_the_claimants_own_old_edges_are_ignored() -> None:
    """Its new wait replaces its old one: an old edge out of the claimant closes nothing."""
    graph = {"a": {"b": "old"}, "b": {"c": "r"}}
    assert find_cycle(graph, "a", {"c": "r"}) is None


NAMES = ["a", "b", "c", "d", "e"]
graphs = st.dictionaries(
    st.sampled_from(NAMES),
    st.dictionaries(st.sampled_from(NAMES), st.sampled_from(["r1", "r2"]), max_size=3),
    max_size=5,
)


def _reaches(graph: dict[str, dict[str, str]], starts: set[str], goal: str) -> bool:
    """Whether *goal* is reachable from *starts* along edges that do not leave *goal*."""
    seen, todo = set(starts), list(starts)
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        for nxt in graph.get(node, {}):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


@given(graph=graphs, agent=st.sampled_from(NAMES), wants=graphs.map(lambda g: g.get("a", {})))
def test_refuses_exactly_when_the_new_wait_closes_a_real_cycle(
    graph: dict[str, dict[str, str]], agent: str, wants: dict[str, str]
) -> None:
    """Never a cycle that is not there; always one when the new edges close one."""
    cycle = find_cycle(graph, agent, wants)
    assert (cycle is not None) == _reaches(graph, set(wants), agent)
    if cycle is None:
        return
    assert cycle[0][0] == agent == cycle[-1][2]
    assert wants[cycle[0][2]] == cycle[0][1]
    for before, (waiter, resource, holder) in itertools.pairwise(cycle):
        assert before[2] == waiter
        assert graph[waiter][holder] == resource
    assert len({w for w, _, _ in cycle}) == len(cycle)


def core_claim(core: Core, agent: str, *texts: str, **kw: Any) -> Acquire:
    """The claim command of *agent* (its secret as `Core` registers it)."""
    return Acquire(agent, f"secret-{agent}", [parse_resource(t) for t in texts], **kw)


def _wait(core: Core, agent: str, *texts: str) -> Conflict:
    decision = core.claim(agent, *texts, waiter=WAITER)
    assert isinstance(decision.error, Conflict)
    return decision.error


def test_a_blocked_wait_is_recorded_once_and_ends_when_granted(core: Core) -> None:
    """The first blocked try records the wait, later tries do not repeat it, a grant ends it."""
    core.ok(core_claim(core, "a1", "issue:A"))
    _wait(core, "a2", "issue:A")
    _wait(core, "a2", "issue:A")
    assert ["wait"] == [e["op"] for e in core.log if e["op"].startswith("wait")]
    core.ok(Release("a1", "secret-a1", [parse_resource("issue:A")]))
    core.ok(core_claim(core, "a2", "issue:A", waiter=WAITER))
    assert TABLE not in core.state.tables
    assert ["granted"] == [e["reason"] for e in core.log if e["op"] == "wait-end"]


def test_a_wait_closing_a_cycle_is_refused_and_not_recorded(core: Core) -> None:
    """The wait that closes the cycle is refused as a deadlock; the first waiter's stays."""
    core.ok(core_claim(core, "a1", "issue:A"))
    core.ok(core_claim(core, "a2", "path:src/**"))
    _wait(core, "a1", "path:src/app.py")
    decision = core.claim("a2", "issue:A", waiter=WAITER)
    assert isinstance(decision.error, Deadlock)
    assert 3 == decision.error.exit_code
    assert decision.error.message == (
        "deadlock: a2 waits for issue:A held by a1, who waits for path:src/app.py held by a2"
    )
    assert ["a1"] == sorted(core.state.tables[TABLE])
    assert "deadlock" == core.log[-1]["reason"]


def test_a_cycle_made_by_a_grant_is_refused_at_the_next_try(core: Core) -> None:
    """Legal waits become a cycle when a resource changes hands: the next try sees it."""
    core.ok(core_claim(core, "a1", "issue:A"))
    core.ok(core_claim(core, "a3", "issue:X"))
    _wait(core, "a1", "issue:X")  # a1 waits for a3
    core.ok(core_claim(core, "a2", "issue:B"))
    _wait(core, "a2", "issue:A")  # a2 waits for a1
    core.ok(Release("a3", "secret-a3", [parse_resource("issue:X")]))
    core.ok(core_claim(core, "a2", "issue:X"))  # now a1 waits for a2, who waits for a1
    assert isinstance(core.claim("a1", "issue:X", waiter=WAITER).error, Deadlock)


def test_shared_waits_for_shared_are_no_edge(core: Core) -> None:
    """A shared claim waits only for exclusive holders, so shared holders close no cycle."""
    core.ok(core_claim(core, "a1", "issue:A", mode="shared"))
    core.ok(core_claim(core, "a2", "issue:B"))
    _wait(core, "a1", "issue:B")
    assert isinstance(core.claim("a2", "issue:A", waiter=WAITER).error, Deadlock)
    core.ok(core_claim(core, "a3", "issue:A", mode="shared"))


def test_an_expired_or_dead_wait_makes_no_cycle(
    core: Core, clock: FakeClock, liveness: FakeLiveness
) -> None:
    """A wait past its horizon, or whose waiting process is gone, is no edge."""
    core.ok(core_claim(core, "a1", "issue:A"))
    core.ok(core_claim(core, "a2", "issue:B"))
    _wait(core, "a1", "issue:B")
    liveness.dead.add("wait a1")
    assert not isinstance(_wait(core, "a2", "issue:A"), Deadlock)
    liveness.dead.clear()
    core.ok(core_claim(core, "a3", "issue:C"))
    _wait(core, "a3", "issue:A")
    clock.advance(31)  # past the wait's 30 s horizon, within the leases' 90 s ttl
    _wait(core, "a1", "issue:C")
