"""The lease state machine: decide() and apply(), with a fake clock and fake liveness."""

from __future__ import annotations

import copy
import json

import pytest

from dibs.core.leases import (
    Acquire,
    Context,
    Decision,
    ForceEvict,
    Heartbeat,
    Register,
    Release,
    Renew,
    Unregister,
    decide,
)
from dibs.core.resources import parse_resource
from dibs.core.state import State, apply, seal
from dibs.ground.errors import AuthError, Conflict, CorruptLog, LeaseLost, NotFound
from tests.conftest import FakeClock, FakeLiveness


class Core:
    """decide + seal + apply, the way a store runs them, keeping the log."""

    def __init__(self, clock: FakeClock, liveness: FakeLiveness):
        self.clock = clock
        self.liveness = liveness
        self.state = State()
        self.log: list[dict[str, object]] = []

    def run(self, command: object) -> Decision:
        before = copy.deepcopy(self.state.to_json())
        decision = decide(self.state, command, Context(self.clock(), self.liveness))
        assert before == self.state.to_json(), "decide() must not change the state"
        for event in seal(decision.events, self.state.seq):
            apply(self.state, event)
            self.log.append(json.loads(json.dumps(event)))
        return decision

    def ok(self, command: object) -> Decision:
        decision = self.run(command)
        assert decision.error is None, decision.error
        return decision

    def register(self, name: str, *, ttl: float = 90.0) -> None:
        self.ok(Register(name, f"secret-{name}", host="h", ttl=ttl))

    def claim(self, agent: str, *texts: str, **kw: object) -> Decision:
        resources = [parse_resource(t) for t in texts]
        return self.run(Acquire(agent, f"secret-{agent}", resources, **kw))  # type: ignore[arg-type]

    def holders(self, text: str) -> list[str]:
        return sorted(self.state.claims.get(text, {}))


@pytest.fixture
def core(clock: FakeClock, liveness: FakeLiveness) -> Core:
    c = Core(clock, liveness)
    for name in ("a1", "a2", "a3"):
        c.register(name)
    return c


def test_acquire_refuses_second_exclusive_holder(core: Core) -> None:
    """A second exclusive claim on a held issue is refused, naming the holder and expiry."""
    core.claim("a1", "issue:X")
    decision = core.claim("a2", "issue:X")
    assert isinstance(decision.error, Conflict)
    assert "issue:X is held by a1" in decision.error.message
    assert "expires in 90 s" in decision.error.message
    assert ["a1"] == core.holders("issue:X")


def test_shared_claims_coexist_but_not_with_exclusive(core: Core) -> None:
    """Shared with shared is fine; exclusive against shared is refused, both ways."""
    assert core.claim("a1", "lock:api", mode="shared").error is None
    assert core.claim("a2", "lock:api", mode="shared").error is None
    assert isinstance(core.claim("a3", "lock:api").error, Conflict)
    core.claim("a3", "lock:db")
    assert isinstance(core.claim("a1", "lock:db", mode="shared").error, Conflict)
    assert ["a1", "a2"] == core.holders("lock:api")


def test_every_acquire_gets_a_larger_fencing_token(core: Core) -> None:
    """Tokens come from one counter that only grows, across resources and agents."""
    tokens = [
        core.claim(agent, f"issue:{n}").result[0]["token"]
        for n, agent in enumerate(["a1", "a2", "a3", "a1"])
    ]
    assert [1, 2, 3, 4] == tokens
    core.ok(Release("a1", "secret-a1", [parse_resource("issue:0")]))
    assert 5 == core.claim("a2", "issue:0").result[0]["token"]


def test_reacquire_by_holder_extends_and_keeps_token(core: Core, clock: FakeClock) -> None:
    """Claiming again what you hold extends the lease and keeps its token."""
    first = core.claim("a1", "issue:X").result[0]
    clock.advance(60)
    again = core.claim("a1", "issue:X")
    assert first["token"] == again.result[0]["token"]
    assert "renew" == core.log[-1]["op"]
    clock.advance(60)  # 120 s after the first claim, 60 s after the second
    assert isinstance(core.claim("a2", "issue:X").error, Conflict)


def test_acquiring_several_is_all_or_nothing(core: Core) -> None:
    """One blocked resource means none of the others is taken."""
    core.claim("a2", "path:src/db.py")
    seq = core.state.seq
    decision = core.claim("a1", "issue:X", "path:src/**", "lock:y")
    assert isinstance(decision.error, Conflict)
    assert seq == core.state.seq
    assert [] == core.holders("issue:X")


def test_overlapping_globs_conflict(core: Core) -> None:
    """Glob claims conflict when some file matches both, not by string equality."""
    core.claim("a1", "path:src/**/test_*.py")
    assert isinstance(core.claim("a2", "path:src/foo/*.py").error, Conflict)
    assert core.claim("a2", "path:docs/*.md").error is None


def test_line_ranges_conflict_only_when_they_overlap(core: Core) -> None:
    """Ranges on one file conflict when they overlap; a whole-file claim covers all ranges."""
    core.claim("a1", "path:src/app.py#L10-80")
    assert core.claim("a2", "path:src/app.py#L81-90").error is None
    assert isinstance(core.claim("a3", "path:src/app.py#L80-85").error, Conflict)
    assert isinstance(core.claim("a3", "path:src/*.py").error, Conflict)


def test_expired_lease_is_evicted_by_the_operation_that_meets_it(
    core: Core, clock: FakeClock
) -> None:
    """After its ttl, the next acquirer evicts the lease (reason expired) and wins."""
    core.claim("a1", "issue:X", ttl=10)
    clock.advance(10)
    decision = core.claim("a2", "issue:X")
    assert decision.error is None
    evict = [e for e in core.log if e["op"] == "auto-evict"]
    assert [("issue:X", "a1", "expired")] == [
        (e["resource"], e["agent"], e["reason"]) for e in evict
    ]
    assert ["a2"] == core.holders("issue:X")


def test_dead_holder_loses_every_lease_at_once(core: Core, liveness: FakeLiveness) -> None:
    """A holder whose process is gone is evicted without waiting for its ttl, all leases."""
    core.claim("a1", "issue:X", "issue:Y")
    liveness.dead.add("a1")
    assert core.claim("a2", "issue:X").error is None
    reasons = {(e["resource"], e["reason"]) for e in core.log if e["op"] == "auto-evict"}
    assert {("issue:X", "holder-dead"), ("issue:Y", "holder-dead")} == reasons
    assert [] == core.holders("issue:Y")


def test_reboot_expires_every_lease_from_before_it(core: Core, clock: FakeClock) -> None:
    """A lease from an earlier boot is evicted with reason rebooted."""
    core.claim("a1", "issue:X", ttl=3600)
    clock.reboot()
    assert core.claim("a2", "issue:X").error is None
    assert "rebooted" == next(e["reason"] for e in core.log if e["op"] == "auto-evict")


def test_renew_needs_the_session_token(core: Core) -> None:
    """A wrong token is refused; an unknown agent is not found."""
    core.claim("a1", "issue:X")
    wrong = core.run(Renew("a1", "secret-a2", [parse_resource("issue:X")]))
    assert isinstance(wrong.error, AuthError)
    unknown = core.run(Renew("zz", "secret-zz", [parse_resource("issue:X")]))
    assert isinstance(unknown.error, NotFound)
    assert [] == wrong.events + unknown.events


def test_renew_after_eviction_reports_lease_lost(core: Core, clock: FakeClock) -> None:
    """A holder whose lease was taken over gets LeaseLost, naming why."""
    core.claim("a1", "issue:X", ttl=5)
    clock.advance(6)
    core.claim("a2", "issue:X")
    decision = core.run(Renew("a1", "secret-a1", [parse_resource("issue:X")]))
    assert isinstance(decision.error, LeaseLost)
    assert "issue:X (expired" in decision.error.message
    assert ["a2"] == core.holders("issue:X")


def test_release_of_an_expired_lease_evicts_it_and_reports_lost(
    core: Core, clock: FakeClock
) -> None:
    """Releasing after expiry is not a silent success."""
    core.claim("a1", "issue:X", ttl=5)
    clock.advance(5)
    decision = core.run(Release("a1", "secret-a1", [parse_resource("issue:X")]))
    assert isinstance(decision.error, LeaseLost)
    assert ["auto-evict"] == [e["op"] for e in decision.events]


def test_release_of_something_never_held_is_not_found(core: Core) -> None:
    """Releasing what you never held says so (exit 1), it is not 'lease lost'."""
    decision = core.run(Release("a1", "secret-a1", [parse_resource("issue:nope")]))
    assert isinstance(decision.error, NotFound)


def test_heartbeat_renews_all_and_reports_lost(core: Core, clock: FakeClock) -> None:
    """One heartbeat extends every live lease; an already expired one is reported lost."""
    core.claim("a1", "issue:X", ttl=10)
    core.claim("a1", "issue:Y", ttl=100)
    clock.advance(50)
    decision = core.run(Heartbeat("a1", "secret-a1"))
    assert isinstance(decision.error, LeaseLost)
    assert ["issue:Y"] == decision.result["renewed"]
    assert ["issue:X"] == decision.result["lost"]
    clock.advance(99)
    assert isinstance(core.claim("a2", "issue:Y").error, Conflict)


def test_register_refuses_a_live_name_and_replaces_a_stale_one(
    core: Core, clock: FakeClock
) -> None:
    """A live agent's name is taken; once stale, registering takes it over."""
    live = core.run(Register("a1", "other", host="h", ttl=90))
    assert isinstance(live.error, Conflict)
    core.claim("a1", "issue:X")
    clock.advance(91)
    replaced = core.ok(Register("a1", "new-secret", host="h", ttl=90))
    assert replaced.result["replaced"]
    assert ["auto-evict", "unregister", "register"] == [e["op"] for e in replaced.events]
    assert [] == core.holders("issue:X")


def test_a_stale_name_with_live_leases_needs_its_token(core: Core, clock: FakeClock) -> None:
    """Stale by its own ttl but holding a longer lease: refused without the old token; with
    it, the live lease goes as ``replaced``, and the old token is then told lease lost."""
    core.ok(Register("q", "secret-q", host="h", ttl=5))
    core.claim("q", "issue:X", ttl=600)
    clock.advance(10)
    taken = core.run(Register("q", "intruder", host="h", ttl=90))
    assert isinstance(taken.error, Conflict)
    assert [] == taken.events
    assert ["q"] == core.holders("issue:X")
    wrong = core.run(Register("q", "intruder", host="h", ttl=90, proof="guess"))
    assert isinstance(wrong.error, Conflict)
    again = core.ok(Register("q", "secret-q2", host="h", ttl=90, proof="secret-q"))
    assert [("auto-evict", "replaced")] == [
        (e["op"], e.get("reason")) for e in again.events if e["op"] == "auto-evict"
    ]
    old = core.run(Renew("q", "secret-q", [parse_resource("issue:X")]))
    assert isinstance(old.error, LeaseLost)


def test_a_replaced_name_evicts_leases_for_their_real_reason(
    core: Core, clock: FakeClock, liveness: FakeLiveness
) -> None:
    """Expired leases are logged ``expired``; a dead holder's ``holder-dead``."""
    core.claim("a1", "issue:X", ttl=30)
    core.claim("a2", "issue:Y", ttl=600)
    clock.advance(91)
    replaced = core.ok(Register("a1", "new", host="h", ttl=90))
    assert ["expired"] == [e["reason"] for e in replaced.events if e["op"] == "auto-evict"]
    liveness.dead.add("a2")
    dead = core.ok(Register("a2", "new", host="h", ttl=90))
    assert ["holder-dead"] == [e["reason"] for e in dead.events if e["op"] == "auto-evict"]


def test_unregister_releases_everything(core: Core) -> None:
    """Unregistering lets go of every claim and forgets the agent."""
    core.claim("a1", "issue:X", "lock:y")
    core.ok(Unregister("a1", "secret-a1"))
    assert "a1" not in core.state.agents
    assert {} == core.state.claims


def test_force_evict_is_logged_with_who_and_why(core: Core) -> None:
    """A person's eviction names them; the holder then learns it lost the lease."""
    core.claim("a1", "issue:X")
    core.ok(ForceEvict(parse_resource("issue:X"), by="alice", reason="agent is stuck"))
    event = core.log[-1]
    assert ("force-evict", "alice", "agent is stuck") == (event["op"], event["by"], event["reason"])
    lost = core.run(Renew("a1", "secret-a1", [parse_resource("issue:X")]))
    assert isinstance(lost.error, LeaseLost)
    assert "by alice" in lost.error.message


def test_force_evict_of_nothing_is_not_found(core: Core) -> None:
    """Evicting a resource nobody holds changes nothing."""
    decision = core.run(ForceEvict(parse_resource("issue:X"), by="alice", reason="x"))
    assert isinstance(decision.error, NotFound)
    assert [] == decision.events


def test_events_of_one_decision_form_one_transaction(core: Core) -> None:
    """Several events decided together carry txn = [first seq, count]."""
    core.claim("a1", "issue:A", "issue:B", "issue:C")
    batch = core.log[-3:]
    first = batch[0]["seq"]
    assert [[first, 3]] * 3 == [e["txn"] for e in batch]
    core.claim("a1", "issue:D")
    assert "txn" not in core.log[-1]


def test_replaying_the_log_rebuilds_the_same_state(core: Core, clock: FakeClock) -> None:
    """The state is a pure function of the log."""
    core.claim("a1", "issue:X", "path:src/**")
    core.claim("a2", "lock:y", mode="shared", note="reading")
    clock.advance(100)
    core.claim("a3", "issue:X")
    core.run(Heartbeat("a2", "secret-a2"))
    rebuilt = State()
    for event in core.log:
        apply(rebuilt, event)  # type: ignore[arg-type]
    assert core.state.to_json() == rebuilt.to_json()
    assert (
        core.state.to_json() == State.from_json(json.loads(json.dumps(rebuilt.to_json()))).to_json()
    )


def test_apply_refuses_a_gap_in_seq() -> None:
    """An event that does not follow the state is corruption, not something to skip."""
    state = State()
    event = {"schema_version": 1, "seq": 2, "op": "heartbeat", "wall": "", "mono": 0, "boot": ""}
    with pytest.raises(CorruptLog, match="does not follow"):
        apply(state, event)  # type: ignore[arg-type]


def test_apply_refuses_an_unknown_op() -> None:
    """An op this version does not know is reported, with a hint to upgrade."""
    event = {"schema_version": 1, "seq": 1, "op": "teleport", "wall": "", "mono": 0, "boot": ""}
    with pytest.raises(CorruptLog, match="unknown op 'teleport'"):
        apply(State(), event)  # type: ignore[arg-type]


def test_heartbeat_reports_leases_evicted_since_the_last_one(core: Core, clock: FakeClock) -> None:
    """A lease taken over by someone else is reported by the next heartbeat, once."""
    core.claim("a1", "issue:X", ttl=5)
    core.ok(Heartbeat("a1", "secret-a1"))
    clock.advance(6)
    core.claim("a2", "issue:X")  # evicts a1's expired lease
    first = core.run(Heartbeat("a1", "secret-a1"))
    assert isinstance(first.error, LeaseLost)
    assert ["issue:X"] == first.result["lost"]
    assert "issue:X (expired" in first.error.message
    again = core.run(Heartbeat("a1", "secret-a1"))
    assert again.error is None
    assert [] == again.result["lost"]
