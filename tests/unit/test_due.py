"""`State.stuck` and `State.expiry` answer exactly what scanning every agent and lease answers.

The stuck agents (`leases.stuck_events`) and the rows that may have expired
(`live.expiring`) were once found by scanning the whole state on every write; `dibs.core.due`
keeps the times in order instead. The naive scans are kept here, and a Hypothesis machine
compares both over random events, times that go back as well as forward (a client's estimate
of the server's clock may), reboots, renewals taken from ``dibs.live`` outside the log,
rows confirmed under the lock, checkpoints and reloads.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dibs.core.events import new_event
from dibs.core.leases import (
    Acquire,
    Context,
    Heartbeat,
    Register,
    Release,
    Renew,
    Unregister,
    decide,
    stuck_events,
    stuck_for,
)
from dibs.core.resources import parse_resource
from dibs.core.state import NOT_PROGRESS, NS, State, apply, seal, ttl_ns
from dibs.ground.now import Now
from dibs.store.postgres import live
from tests.conftest import FakeClock, FakeLiveness

AGENTS = ["a1", "a2", "a3", "a4"]
RESOURCES = ["issue:A", "issue:B", "lock:x", "path:src/**"]
STUCK_AFTERS = [None, 5.0, 20.0, 45.0]
SHIFTS = [-60.0, -5.0, -0.001, 0.0, 0.001, 5.0, 30.0, 120.0]


def naive_stuck_events(state: State, ctx: Context, decided: list[Any]) -> list[Any]:
    """`stuck_events` as it was: every agent looked at."""
    if ctx.stuck_after is None:
        return []
    active = {e.get("agent") for e in decided if e["op"] not in NOT_PROGRESS}
    gone = {
        (e.get("resource"), e.get("agent"))
        for e in decided
        if e["op"] in ("auto-evict", "force-evict", "release")
    }
    events: list[Any] = []
    for name in sorted(state.agents):
        agent = state.agents[name]
        if name in active or agent.get("stuck", -1) == agent.get("progress", 0):
            continue
        idle = stuck_for(agent, ctx)
        if idle is None:
            continue
        action = "evict" if ctx.evict_stuck else "notify"
        details = {"idle": round(idle, 3), "action": action, "since": agent.get("progress_wall")}
        events.append(new_event("stuck", ctx.now, agent=name, details=details))
        held = state.leases_of(name) if ctx.evict_stuck else []
        events.extend(
            new_event(
                "auto-evict",
                ctx.now,
                resource=lease["resource"],
                agent=name,
                mode=lease["mode"],
                token=lease["token"],
                reason="stuck",
            )
            for lease in held
            if (lease["resource"], name) not in gone
        )
    return events


def naive_expiring(
    state: State, before: int, confirmed: dict[tuple[str, str], int]
) -> tuple[list[str], list[str]]:
    """`live.expiring` as it was: every agent and lease looked at."""
    agents: list[str] = []
    resources: list[str] = []
    for name, agent in state.agents.items():
        expiry = int(agent["seen"]) + ttl_ns(agent["ttl"])
        if expiry <= before and confirmed.get((name, "")) != expiry:
            agents.append(name)
            resources.append("")
    for text, holders in state.claims.items():
        for name, lease in holders.items():
            if lease["expires"] <= before and confirmed.get((name, text)) != lease["expires"]:
                agents.append(name)
                resources.append(text)
    return agents, resources


def rows(keys: tuple[list[str], list[str]]) -> list[tuple[str, str]]:
    return sorted(zip(*keys, strict=True))


class DueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.liveness = FakeLiveness()
        self.state = State()
        self.state.stuck()  # kept from the start; `reload` also tries them built late
        self.state.expiry()
        self.confirmed: dict[tuple[str, str], int] = {}
        self.stuck_after: float | None = 20.0
        self.evict_stuck = False

    def ctx(self, now: Now | None = None) -> Context:
        return Context(
            now or self.clock(),
            self.liveness,
            stuck_after=self.stuck_after,
            evict_stuck=self.evict_stuck,
        )

    def run(self, command: object) -> None:
        """One step as `Coordinator.transact` takes it: the decision, then the stuck agents."""
        ctx = self.ctx()
        decision = decide(self.state, command, ctx)
        stuck = stuck_events(self.state, ctx, decision.events)
        assert stuck == naive_stuck_events(self.state, ctx, decision.events)
        for event in seal(decision.events + stuck, self.state.seq):
            apply(self.state, event)

    def nows(self) -> list[Now]:
        now = self.clock()
        return [Now(now.boot, now.mono + int(s * NS), now.wall + s) for s in SHIFTS]

    @rule(agent=st.sampled_from(AGENTS), ttl=st.sampled_from([3.0, 10.0, 30.0, 90.0]))
    def register(self, agent: str, ttl: float) -> None:
        self.run(Register(agent, f"s-{agent}", host="h", ttl=ttl, proof=f"s-{agent}"))

    @rule(agent=st.sampled_from(AGENTS))
    def unregister(self, agent: str) -> None:
        self.run(Unregister(agent, f"s-{agent}"))

    @rule(
        agent=st.sampled_from(AGENTS),
        texts=st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=2),
        ttl=st.sampled_from([2.0, 30.0, None]),
    )
    def claim(self, agent: str, texts: list[str], ttl: float | None) -> None:
        resources = [parse_resource(t) for t in dict.fromkeys(texts)]
        self.run(Acquire(agent, f"s-{agent}", resources, ttl=ttl))

    @rule(agent=st.sampled_from(AGENTS), text=st.sampled_from(RESOURCES))
    def release(self, agent: str, text: str) -> None:
        self.run(Release(agent, f"s-{agent}", [parse_resource(text)]))

    @rule(
        agent=st.sampled_from(AGENTS),
        text=st.sampled_from(RESOURCES),
        ttl=st.sampled_from([1.0, 60.0, None]),
    )
    def renew(self, agent: str, text: str, ttl: float | None) -> None:
        self.run(Renew(agent, f"s-{agent}", [parse_resource(text)], ttl=ttl))

    @rule(agent=st.sampled_from(AGENTS))
    def heartbeat(self, agent: str) -> None:
        self.run(Heartbeat(agent, f"s-{agent}"))

    @rule(agent=st.sampled_from(AGENTS))
    def progress(self, agent: str) -> None:
        if agent in self.state.agents:
            event = new_event("progress", self.clock(), agent=agent)
            apply(self.state, seal([event], self.state.seq)[0])

    @rule(seconds=st.sampled_from([1.0, 4.0, 10.0, 25.0, 60.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reboot(self) -> None:
        self.clock.reboot()

    @rule(
        stuck_after=st.sampled_from(STUCK_AFTERS),
        evict=st.booleans(),
        agent=st.sampled_from(AGENTS),
    )
    def settings_change(self, stuck_after: float | None, evict: bool, agent: str) -> None:
        self.stuck_after, self.evict_stuck = stuck_after, evict
        self.run(Heartbeat(agent, f"s-{agent}"))

    @rule(agent=st.sampled_from(AGENTS))
    def dies(self, agent: str) -> None:
        self.liveness.dead.add(agent)

    @rule(agent=st.sampled_from(AGENTS), ahead=st.sampled_from([0.0, 7.0, 50.0]))
    def renewed_outside_the_log(self, agent: str, ahead: float) -> None:
        """A lock-free renewal that succeeded (`live.renewed`)."""
        held = self.state.leases_of(agent)
        params = {"agent": agent, "resources": [lease["resource"] for lease in held]}
        live.renewed(self.state, params, self.clock().mono + int(ahead * NS))

    @rule(
        agent=st.sampled_from(AGENTS),
        seen=st.sampled_from([-20.0, 0.0, 40.0]),
        expires=st.sampled_from([-3.0, 0.0, 15.0]),
        same=st.booleans(),
    )
    def read_from_dibs_live(self, agent: str, seen: float, expires: float, same: bool) -> None:
        """Rows read back from dibs.live (`live.patch`); with *same* False, rows of another
        registration or lease, which must change nothing."""
        record = self.state.agents.get(agent)
        if record is None:
            return
        held = self.state.leases_of(agent)
        mono = self.clock().mono
        live.patch(
            self.state,
            (
                [agent, *(agent for _ in held)],
                ["", *(lease["resource"] for lease in held)],
                [None, *(lease["token"] + (0 if same else 1) for lease in held)],
                [record["secret"] if same else "other", *(None for _ in held)],
                [
                    mono + int(seen * NS) + ttl_ns(record["ttl"]),
                    *(mono + int(expires * NS) for _ in held),
                ],
            ),
        )

    @rule(shift=st.sampled_from(SHIFTS))
    def confirm(self, shift: float) -> None:
        """Rows read under the lock and found expired (`live.confirm`)."""
        now = self.clock().mono + int(shift * NS)
        keys = live.expiring(self.state, now, self.confirmed)
        live.confirm(self.state, *keys, now, self.confirmed)

    @rule(checkpoint=st.booleans())
    def reload(self, checkpoint: bool) -> None:
        """A state loaded again (a checkpoint, or JSON alone) and a fresh set of confirmed rows."""
        data = self.state.to_checkpoint() if checkpoint else self.state.to_json()
        self.state = State.from_json(json.loads(json.dumps(data)))
        self.confirmed = {}

    @invariant()
    def stuck_agents_are_the_naive_ones(self) -> None:
        for now in self.nows():
            for stuck_after in STUCK_AFTERS:
                for evict in (False, True):
                    ctx = Context(now, self.liveness, stuck_after=stuck_after, evict_stuck=evict)
                    found = stuck_events(self.state, ctx, [])
                    assert found == naive_stuck_events(self.state, ctx, [])

    @invariant()
    def expiring_rows_are_the_naive_ones(self) -> None:
        for now in self.nows():
            for confirmed in (self.confirmed, {}, self.confirmed):
                found = rows(live.expiring(self.state, now.mono, confirmed))
                assert found == rows(naive_expiring(self.state, now.mono, confirmed))


DueMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_due_machine = DueMachine.TestCase


class Counting(dict[str, Any]):
    """The state's agents, noting which of them a step looks at."""

    def __init__(self, agents: dict[str, Any]) -> None:
        super().__init__(agents)
        self.looked: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        self.looked.add(name)
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:
        self.looked.add(name)
        return super().get(name, default)

    def __iter__(self) -> Any:
        self.looked.update(super().keys())
        return super().__iter__()


def test_a_stuck_agent_is_found_among_many_without_looking_at_them() -> None:
    """Of many busy agents, the one idle for stuck_after is found; the others are not read."""
    clock = FakeClock()
    liveness = FakeLiveness()
    state = State()
    names = [f"a{i:03d}" for i in range(200)]
    for name in names:
        command = Register(name, f"s-{name}", host="h", ttl=600)
        decision = decide(state, command, Context(clock(), liveness))
        for event in seal(decision.events, state.seq):
            apply(state, event)
    clock.advance(100)
    for name in names[1:]:
        event = new_event("progress", clock(), agent=name)
        apply(state, seal([event], state.seq)[0])
    clock.advance(30)
    state.stuck()
    state.agents = Counting(state.agents)
    found = stuck_events(state, Context(clock(), liveness, stuck_after=120.0), [])
    assert [e["agent"] for e in found] == ["a000"]
    assert state.agents.looked == {"a000"}
    assert liveness.asked == ["a000"]


def test_an_agent_parked_as_stale_is_still_found_for_a_shorter_stuck_after() -> None:
    """Found idle for 30 s but stale before that, an agent is parked; with stuck_after 20 s it
    was idle long enough while still live, and the parked agents are asked too."""
    clock = FakeClock()
    liveness = FakeLiveness()
    state = State()
    start = clock()
    for command in (Register("a", "s-a", host="h", ttl=10), Register("b", "s-b", host="h", ttl=10)):
        for event in seal(decide(state, command, Context(clock(), liveness)).events, state.seq):
            apply(state, event)
    clock.advance(12)
    for event in seal(decide(state, Heartbeat("a", "s-a"), Context(clock(), liveness)).events, 2):
        apply(state, event)
    later = Now(start.boot, start.mono + 40 * NS, start.wall + 40)
    assert stuck_events(state, Context(later, liveness, stuck_after=30.0), []) == []
    assert "a" in state.stuck().parked
    then = Now(start.boot, start.mono + 21 * NS, start.wall + 21)
    ctx = Context(then, liveness, stuck_after=20.0)
    assert [e["agent"] for e in stuck_events(state, ctx, [])] == ["a"]
    assert naive_stuck_events(state, ctx, []) == stuck_events(state, ctx, [])


PATHS = [
    "path:**",
    "path:**/x.py",
    "path:src/**",
    "path:src/*.py",
    "path:src/a/**",
    "path:src/a/b.py",
    "path:src/a/b.py#L1-5",
    "path:src/ab/**",
    "path:src/a.b/**",
    "path:src-a/**",
    "path:docs/*.md",
    "issue:A",
]


def naive_overlapping(state: State, text: str) -> list[Any]:
    """`State.overlapping` as it was: every path prefix looked at."""
    from dibs.core import resources as res

    resource = parse_resource(text)
    if resource.kind != "path":
        return list(state.claims.get(resource.text, {}).values())
    key = res.prefix_key(resource.text)
    parts = key.split("/") if key else []
    ancestors = {"/".join(parts[:size]) for size in range(len(parts) + 1)}
    candidates: set[str] = set()
    for prefix, texts in state._prefixes.items():
        if prefix in ancestors or not key or prefix.startswith(key + "/"):
            candidates |= texts
    found = []
    for other in sorted(candidates):
        if res.overlaps(resource, parse_resource(other)):
            found.extend(state.claims[other].values())
    return found


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(AGENTS), st.sampled_from(PATHS), st.booleans()), max_size=40
    ),
    reload_at=st.integers(min_value=0, max_value=40),
)
def test_overlapping_finds_what_looking_at_every_prefix_finds(
    steps: list[tuple[str, str, bool]], reload_at: int
) -> None:
    """Path claims are found through their prefixes, those below a pattern's by range."""
    clock = FakeClock()
    state = State()
    for name in AGENTS:
        decision = decide(state, Register(name, "s", host="h", ttl=600), Context(clock()))
        for event in seal(decision.events, state.seq):
            apply(state, event)
    for at, (agent, text, take) in enumerate(steps):
        if at == reload_at:
            state = State.from_json(json.loads(json.dumps(state.to_checkpoint())))
        if take:
            command: object = Acquire(agent, "s", [parse_resource(text)], mode="shared")
        else:
            command = Release(agent, "s", [parse_resource(text)])
        for event in seal(decide(state, command, Context(clock())).events, state.seq):
            apply(state, event)
        for probe in PATHS:
            found = list(state.overlapping(parse_resource(probe)))
            assert found == naive_overlapping(state, probe)
