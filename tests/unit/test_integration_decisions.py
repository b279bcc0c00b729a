"""The integrations' decisions as pure functions of (state, context, input), without a store,
git or a process: who may take a pool slot or adopt a worktree, what finishing releases, a
worktree's health, the token bucket, plan overlaps, and a document write's version check."""

from __future__ import annotations

import pytest

from dibs.core.events import new_event
from dibs.core.leases import Acquire, Context, Decision, Register, decide
from dibs.core.resources import parse_resource
from dibs.core.state import State, apply, seal
from dibs.ground.errors import LeaseLost, NotFound, UsageError
from dibs.integrations import documents, limits, plans
from dibs.integrations.worktrees import decide as worktrees
from tests.conftest import FakeClock, FakeLiveness


class World:
    """A state built the way a store builds it (decide, seal, apply), at a fake time."""

    def __init__(self, clock: FakeClock, liveness: FakeLiveness):
        self.clock = clock
        self.liveness = liveness
        self.state = State()

    def ctx(self) -> Context:
        return Context(self.clock(), self.liveness)

    def apply(self, decision: Decision) -> Decision:
        for event in seal(decision.events, self.state.seq):
            apply(self.state, event)
        return decision

    def register(self, name: str, *, ttl: float = 90.0) -> None:
        decision = decide(
            self.state, Register(name, f"secret-{name}", host="h", ttl=ttl), self.ctx()
        )
        assert decision.error is None
        self.apply(decision)

    def claim(self, agent: str, *texts: str) -> list[dict[str, object]]:
        command = Acquire(agent, f"secret-{agent}", [parse_resource(t) for t in texts])
        decision = decide(self.state, command, self.ctx())
        assert decision.error is None, decision.error
        return list(self.apply(decision).result)

    def record(self, table: str, key: str, value: dict[str, object] | None) -> None:
        self.apply(Decision([new_event("record", self.clock(), table=table, key=key, value=value)]))


@pytest.fixture
def world(clock: FakeClock, liveness: FakeLiveness) -> World:
    w = World(clock, liveness)
    for name in ("a1", "a2"):
        w.register(name)
    return w


# Worktrees: the pool -------------------------------------------------------------------


def test_free_slots_are_those_no_live_claim_holds(world: World) -> None:
    """A slot someone holds is not offered; the others are, in number order."""
    for slot in ("1", "2", "10"):
        world.record("pool", slot, {"slot": slot, "path": f".worktrees/pool/{slot}"})
    world.claim("a2", "worktree:2")
    assert ["1", "10"] == worktrees.free_slots(world.state, world.ctx(), "a1")


def test_an_agent_is_offered_the_slot_it_already_holds(world: World) -> None:
    """Taking again gives an agent back its own slot, not another free one."""
    for slot in ("1", "2"):
        world.record("pool", slot, {"slot": slot, "path": f".worktrees/pool/{slot}"})
    world.claim("a1", "worktree:2")
    assert ["2"] == worktrees.free_slots(world.state, world.ctx(), "a1")


def test_a_slot_whose_claim_expired_is_free_again(world: World, clock: FakeClock) -> None:
    """An expired claim (not yet evicted) does not keep a slot busy."""
    world.record("pool", "1", {"slot": "1", "path": ".worktrees/pool/1"})
    world.claim("a2", "worktree:1")
    clock.advance(91)
    assert ["1"] == worktrees.free_slots(world.state, world.ctx(), "a1")


# Worktrees: adoption, finishing, health ------------------------------------------------


def test_a_live_owners_worktree_may_not_be_adopted(world: World) -> None:
    """A live agent keeps its worktree unless it let it go with --keep-worktree."""
    assert not worktrees.may_adopt(world.state, world.ctx(), "a1", {"agent": "a1"})
    assert worktrees.may_adopt(world.state, world.ctx(), "a1", {"agent": "a1", "finished": True})


def test_a_stale_dead_or_gone_owners_worktree_may_be_adopted(
    world: World, clock: FakeClock, liveness: FakeLiveness
) -> None:
    """Once its owner is stale, dead or unregistered, another agent may take a worktree over."""
    liveness.dead.add("a2")
    assert "dead" == worktrees.owner_status(world.state, world.ctx(), "a2")
    assert worktrees.may_adopt(world.state, world.ctx(), "a2", {})
    assert "gone" == worktrees.owner_status(world.state, world.ctx(), "nobody")
    assert worktrees.may_adopt(world.state, world.ctx(), "nobody", {})
    clock.advance(91)
    assert "stale" == worktrees.owner_status(world.state, world.ctx(), "a1")
    assert worktrees.may_adopt(world.state, world.ctx(), "a1", {})


def test_finishing_releases_only_that_tasks_claims(world: World) -> None:
    """Finishing one issue keeps the agent's other issues and its other worktree's files."""
    world.claim("a1", "issue:A", "issue:B", "path:src/a/**", "path:src/b/**", "lock:x")
    world.record(
        "worktrees",
        ".worktrees/a1/B",
        {"agent": "a1", "issue": "B", "files": ["path:src/b/**"], "branch": "agent/B"},
    )
    record = {"agent": "a1", "issue": "A", "files": ["path:src/a/**"], "branch": "agent/A"}
    released = worktrees.claims_to_release(world.state, record)  # type: ignore[arg-type]
    assert ["issue:A", "lock:x", "path:src/a/**"] == sorted(released)


def test_health_says_whose_worktree_is_in_trouble(world: World, liveness: FakeLiveness) -> None:
    """ok for a live agent's, free for an unheld slot, `agent dead|gone` otherwise."""
    liveness.dead.add("a2")
    ctx = world.ctx()
    assert "ok" == worktrees.health(world.state, ctx, {"agent": "a1"})
    assert "free" == worktrees.health(world.state, ctx, {"slot": "1"})
    assert "agent dead" == worktrees.health(world.state, ctx, {"agent": "a2"})
    assert "agent gone" == worktrees.health(world.state, ctx, {"agent": "nobody"})


def test_a_half_made_worktree_is_one_git_never_finished_for_an_agent_not_live(
    world: World, liveness: FakeLiveness
) -> None:
    """Locked `initializing` with no commit under the folder, made for a dead agent: half-made;
    the same for a live agent (it may still be making it) is not."""
    entry = {"worktree": "/r/.worktrees/a2/X", "HEAD": "0" * 40, "locked": "initializing"}
    ctx = world.ctx()
    assert not worktrees.half_made(world.state, ctx, ".worktrees/a2/X", entry, ".worktrees")
    liveness.dead.add("a2")
    ctx = world.ctx()
    assert worktrees.half_made(world.state, ctx, ".worktrees/a2/X", entry, ".worktrees")
    assert not worktrees.half_made(world.state, ctx, "elsewhere/a2/X", entry, ".worktrees")


# Rate limits -----------------------------------------------------------------------------


def test_taking_from_a_bucket_spends_its_tokens(world: World) -> None:
    """A take leaves capacity minus cost, as a limit-take event."""
    wall = world.clock.wall
    world.record("limits", "api", {"capacity": 10.0, "per": 60.0, "tokens": 10.0, "at": wall})
    decision = limits.decide_take(world.state, world.ctx(), "api", 3.0, "a1")
    assert decision.error is None
    assert ["limit-take"] == [e["op"] for e in decision.events]
    assert {"name": "api", "cost": 3.0, "remaining": 7.0} == decision.result


def test_an_empty_bucket_says_when_to_come_back(world: World, clock: FakeClock) -> None:
    """Too few tokens: refused with the seconds until the refill covers the cost; later,
    the refill lets the same take through."""
    wall = clock.wall
    world.record("limits", "api", {"capacity": 10.0, "per": 10.0, "tokens": 1.0, "at": wall})
    refused = limits.decide_take(world.state, world.ctx(), "api", 4.0, "a1")
    assert isinstance(refused.error, limits.Exhausted)
    assert 3.0 == refused.error.details["retry_after"]
    assert [] == refused.events
    clock.advance(3)
    assert limits.decide_take(world.state, world.ctx(), "api", 4.0, "a1").error is None


def test_taking_more_than_a_bucket_holds_or_from_no_bucket_is_refused(world: World) -> None:
    """A cost above capacity is a usage error; an unknown limit is not found."""
    wall = world.clock.wall
    world.record("limits", "api", {"capacity": 2.0, "per": 1.0, "tokens": 2.0, "at": wall})
    assert isinstance(
        limits.decide_take(world.state, world.ctx(), "api", 3, "a1").error, UsageError
    )
    assert isinstance(limits.decide_take(world.state, world.ctx(), "nope", 1, "a1").error, NotFound)


def test_reshaping_a_bucket_keeps_its_tokens_within_the_new_capacity(world: World) -> None:
    """A new bucket starts full; a smaller capacity caps the tokens it had."""
    made = limits.decide_set(world.state, world.ctx(), "a1", "api", capacity=10.0, per=60.0)
    assert 10.0 == made.result["tokens"]
    world.apply(made)
    smaller = limits.decide_set(world.state, world.ctx(), "a1", "api", capacity=4.0, per=60.0)
    assert 4.0 == smaller.result["tokens"]
    assert "a1" == smaller.events[0]["by"]


def test_an_apis_own_count_holds_until_its_reset(world: World, clock: FakeClock) -> None:
    """update: the API's remaining count stands until reset_at; then the bucket is full."""
    world.apply(limits.decide_set(world.state, world.ctx(), "a1", "api", capacity=10.0, per=60.0))
    reset_at = clock.wall + 30
    told = limits.decide_update(
        world.state, world.ctx(), "a1", "api", remaining=0, reset_at=reset_at
    )
    world.apply(told)
    assert isinstance(
        limits.decide_take(world.state, world.ctx(), "api", 1, "a1").error, limits.Exhausted
    )
    clock.advance(30)
    assert limits.decide_take(world.state, world.ctx(), "api", 10, "a1").error is None
    missing = limits.decide_update(world.state, world.ctx(), "a1", "x", remaining=1, reset_at=0)
    assert isinstance(missing.error, NotFound)


# Plans -----------------------------------------------------------------------------------


def test_plans_and_claims_that_can_touch_one_file_collide(world: World) -> None:
    """An uncommitted plan overlapping another agent's live claim is one collision, with an
    example file; a plan on other files is none."""
    world.record("plans", "a1", {"agent": "a1", "globs": ["path:src/**/*.py"], "committed": False})
    world.claim("a2", "path:src/app/main.py")
    agents, found = plans.collisions(world.state, world.ctx())
    assert ["a1", "a2"] == agents
    assert [["a1", "a2"]] == [c["agents"] for c in found]
    assert ["plan", "claim"] == found[0]["sources"]
    assert "src/app/main.py" == found[0]["example"]
    world.record("plans", "a1", {"agent": "a1", "globs": ["path:docs/**"], "committed": False})
    assert [] == plans.collisions(world.state, world.ctx())[1]


# Documents -------------------------------------------------------------------------------


def test_a_document_write_needs_the_lock_it_was_granted(world: World, clock: FakeClock) -> None:
    """With the lock and its fencing token the write may be recorded; with the lock lapsed,
    or another token, it is refused as a lost lease."""
    fence = world.claim("a1", "lock:doc:README.md")[0]["token"]
    assert isinstance(fence, int)

    def refusal(**kw: int) -> object:
        args = {"fence": fence, "version": 1, "if_version": 0, **kw}
        return documents.write_refusal(world.state, world.ctx(), "README.md", holder="a1", **args)

    assert refusal() is None
    assert isinstance(refusal(fence=fence + 1), LeaseLost)
    clock.advance(91)
    assert isinstance(refusal(), LeaseLost)


def test_a_document_write_loses_to_a_newer_recorded_version(world: World) -> None:
    """When another writer recorded this version first, the write is a version conflict."""
    fence = world.claim("a1", "lock:doc:notes.md")[0]["token"]
    assert isinstance(fence, int)
    world.record("documents", "notes.md", {"version": 2, "by": "a2", "fence": 0})
    error = documents.write_refusal(
        world.state, world.ctx(), "notes.md", holder="a1", fence=fence, version=2, if_version=1
    )
    assert isinstance(error, documents.VersionConflict)
