"""Inboxes and stuck agents in the core: which events reach whom, the read cursor, progress."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from dibs.core import inbox
from dibs.core.events import new_event
from dibs.core.leases import (
    Acquire,
    Context,
    Decision,
    ForceEvict,
    Heartbeat,
    Register,
    decide,
    eviction_reason,
    stuck_events,
    stuck_for,
)
from dibs.core.resources import parse_resource
from dibs.core.state import State, apply, seal
from tests.conftest import FakeClock, FakeLiveness


class Core:
    """decide + the stuck sweep + seal + apply, as the Coordinator runs them."""

    def __init__(self, clock: FakeClock, *, stuck_after: float | None, evict: bool = False):
        self.clock = clock
        self.stuck_after = stuck_after
        self.evict = evict
        self.state = State()
        self.log: list[Any] = []

    def ctx(self) -> Context:
        return Context(
            self.clock(), FakeLiveness(), stuck_after=self.stuck_after, evict_stuck=self.evict
        )

    def run(self, command: object) -> Decision:
        ctx = self.ctx()
        decision = decide(self.state, command, ctx)
        decision.events += stuck_events(self.state, ctx, decision.events)
        self.append(decision.events)
        return decision

    def append(self, events: list[Any]) -> None:
        for event in seal(events, self.state.seq):
            apply(self.state, event)
            self.log.append(json.loads(json.dumps(event)))

    def write(self, op: str, **fields: Any) -> None:
        self.append([new_event(op, self.clock(), **fields)])

    def register(self, name: str) -> None:
        assert self.run(Register(name, f"s-{name}", host="h", ttl=90.0)).error is None

    def claim(self, agent: str, *texts: str) -> Decision:
        return self.run(Acquire(agent, f"s-{agent}", [parse_resource(t) for t in texts]))

    def heartbeat(self, agent: str) -> Decision:
        return self.run(Heartbeat(agent, f"s-{agent}"))

    def unread(self, who: str) -> list[int]:
        return [seq for seq, _ in inbox.unread(self.state, who)]


@pytest.fixture
def core(clock: FakeClock) -> Core:
    return Core(clock, stuck_after=60.0)


def test_an_eviction_reaches_the_evicted_agent_and_a_force_one_the_watchers(core: Core) -> None:
    core.register("a")
    core.claim("a", "issue:X")
    core.run(ForceEvict(parse_resource("issue:X"), by="ann@host", reason="hotfix"))
    [seq] = core.unread("a")
    told = inbox.render(core.log[seq - 1], None)
    assert ("evicted", "ann@host", "hotfix") == (told["kind"], told["from"], told["reason"])
    assert [seq] == [s for s, _ in inbox.unread(core.state, inbox.WATCH, reader="p@h")]


def test_reading_moves_the_cursor_and_only_past_what_was_read(core: Core) -> None:
    core.register("a")
    for text in ("one", "two", "three"):
        core.write("message", by="b", note=text, details={"to": ["a"]})
    first, second, third = core.unread("a")
    core.write("inbox-read", agent="a", details={"upto": second, "reader": "a"})
    assert [third] == core.unread("a")
    core.write("inbox-read", agent="a", details={"upto": first, "reader": "a"})  # late, old
    assert [third] == core.unread("a")


def test_a_message_to_everyone_reaches_every_agent_but_the_sender(core: Core) -> None:
    for name in ("a", "b", "c"):
        core.register(name)
    core.write("message", agent="a", by="a", note="hi", details={"to": ["*"]})
    assert ([], 1, 1) == (core.unread("a"), len(core.unread("b")), len(core.unread("c")))


def test_a_land_fail_reaches_its_author_with_gate_and_tail(core: Core) -> None:
    value = {"id": "q1", "issue": "G-1", "branch": "agent/G-1", "reason": "gate tests exited 7"}
    value.update(gate="tests", exit=7, tail="boom")
    core.write("land-fail", agent="alice", table="queue", key="q1", value=value)
    [(seq, extra)] = inbox.unread(core.state, "alice")
    told = inbox.render(core.log[seq - 1], extra)
    assert ("land-failed", "tests", 7, "boom") == (
        told["kind"],
        told["gate"],
        told["exit"],
        told["tail"],
    )
    assert "boom" in told["text"]


def test_a_gave_up_wait_hears_of_the_release_once(core: Core) -> None:
    core.register("a")
    core.register("b")
    core.claim("a", "path:src/**")
    waits = {"resources": ["path:src/x.py"], "mode": "exclusive"}
    core.write("wait", agent="b", table="waits", key="b", value=waits)
    core.write("wait-end", agent="b", reason="gave-up", table="waits", key="b")
    assert [] == core.unread("b")
    core.run(ForceEvict(parse_resource("path:src/**"), by="p@h", reason="r"))
    [(seq, extra)] = inbox.unread(core.state, "b")
    assert "free" == inbox.render(core.log[seq - 1], extra)["kind"]
    assert {} == core.state.tables.get(inbox.WANTS, {})


def test_overlapping_plans_tell_both_owners(core: Core) -> None:
    core.write("plan-add", agent="a", table="plans", key="a", value={"globs": ["path:src/**"]})
    core.write("plan-add", agent="b", table="plans", key="b", value={"globs": ["path:src/x.py"]})
    core.write("plan-add", agent="c", table="plans", key="c", value={"globs": ["path:doc/**"]})
    assert (1, 1, 0) == tuple(len(core.unread(n)) for n in "abc")


def test_a_heartbeating_agent_without_progress_is_stuck_and_told_once(
    core: Core, clock: FakeClock
) -> None:
    core.register("a")
    core.claim("a", "issue:X")
    for _ in range(4):
        clock.advance(20)
        core.heartbeat("a")
    assert stuck_for(core.state.agents["a"], core.ctx()) is not None
    assert ["stuck"] == [e["op"] for e in core.log if e["op"] == "stuck"]
    clock.advance(20)
    core.heartbeat("a")
    assert 1 == sum(1 for e in core.log if e["op"] == "stuck")
    assert ["issue:X"] == list(core.state.claims)  # notify: claims stay


def test_progress_ends_a_stuck_stretch(core: Core, clock: FakeClock) -> None:
    core.register("a")
    clock.advance(61)
    core.heartbeat("a")
    core.claim("a", "issue:Y")
    assert stuck_for(core.state.agents["a"], core.ctx()) is None
    clock.advance(61)
    core.heartbeat("a")
    assert 2 == sum(1 for e in core.log if e["op"] == "stuck")


def test_a_stale_agent_is_not_stuck(core: Core, clock: FakeClock) -> None:
    core.register("a")
    clock.advance(120)  # past its ttl of 90 s: stale, not stuck
    assert stuck_for(core.state.agents["a"], core.ctx()) is None


def test_on_stuck_evict_frees_its_claims_with_reason_stuck(clock: FakeClock) -> None:
    core = Core(clock, stuck_after=60.0, evict=True)
    core.register("a")
    core.register("b")
    core.claim("a", "issue:X", "issue:Y")
    clock.advance(61)
    before = copy.deepcopy(core.state.to_json())
    lease = core.state.claims["issue:X"]["a"]
    assert "stuck" == eviction_reason(core.state, lease, core.ctx())
    assert before == core.state.to_json()
    assert core.claim("b", "issue:X").error is None
    evicted = {(e["resource"], e["reason"]) for e in core.log if e["op"] == "auto-evict"}
    assert {("issue:X", "stuck"), ("issue:Y", "stuck")} == evicted
    assert {} == {k: v for k, v in core.state.claims.items() if "a" in v}


def test_stuck_is_off_without_stuck_after(clock: FakeClock) -> None:
    core = Core(clock, stuck_after=None)
    core.register("a")
    clock.advance(80)
    core.heartbeat("a")
    assert [] == [e for e in core.log if e["op"] == "stuck"]


def test_an_agent_that_leaves_leaves_no_inbox_but_one_registered_again_keeps_it(
    core: Core, clock: FakeClock
) -> None:
    core.register("a")
    core.write("message", by="b", note="x", details={"to": ["a"]})
    clock.advance(91)
    core.register("a")  # a stale name taken over: the same inbox
    assert 1 == len(core.unread("a"))
    core.write("unregister", agent="a")
    assert "a" not in core.state.tables.get(inbox.TABLE, {})


def test_replaying_the_log_rebuilds_the_same_inboxes(core: Core, clock: FakeClock) -> None:
    core.register("a")
    core.claim("a", "issue:X")
    core.write("message", by="b", note="x", details={"to": ["a"]})
    clock.advance(61)
    core.heartbeat("a")
    replayed = State()
    for event in core.log:
        apply(replayed, event)
    assert core.state.to_json() == replayed.to_json()
