"""Property tests of the core: random claims, renewals, releases, time and deaths.

Whatever happens, the state never holds two incompatible overlapping leases, fencing tokens are
never reused, and replaying the log rebuilds the state exactly.
"""

from __future__ import annotations

import json
from itertools import combinations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dibs.core.leases import Acquire, Context, Heartbeat, Register, Release, Renew, decide
from dibs.core.resources import overlaps, parse_resource
from dibs.core.state import SHARED, State, apply, seal
from tests.conftest import FakeClock, FakeLiveness

AGENTS = ["a1", "a2", "a3"]
RESOURCES = [
    "issue:A",
    "issue:B",
    "lock:x",
    "path:src/**",
    "path:src/*.py",
    "path:src/app.py",
    "path:src/app.py#L1-10",
    "path:src/app.py#L5-20",
    "path:docs/*.md",
    "path:**/test_*.py",
]


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.liveness = FakeLiveness()
        self.state = State()
        self.log: list[str] = []
        self.tokens: list[int] = []
        for name in AGENTS:
            self.run(Register(name, f"s-{name}", host="h", ttl=30))

    def run(self, command: object) -> None:
        decision = decide(self.state, command, Context(self.clock(), self.liveness))
        for event in seal(decision.events, self.state.seq):
            apply(self.state, event)
            self.log.append(json.dumps(event))
            if event["op"] == "acquire":
                self.tokens.append(event["token"])

    @rule(
        agent=st.sampled_from(AGENTS),
        texts=st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=3),
        shared=st.booleans(),
        ttl=st.sampled_from([5.0, 30.0, None]),
    )
    def claim(self, agent: str, texts: list[str], shared: bool, ttl: float | None) -> None:
        resources = [parse_resource(t) for t in dict.fromkeys(texts)]
        mode = SHARED if shared else "exclusive"
        self.run(Acquire(agent, f"s-{agent}", resources, mode=mode, ttl=ttl))

    @rule(agent=st.sampled_from(AGENTS), text=st.sampled_from(RESOURCES))
    def release(self, agent: str, text: str) -> None:
        self.run(Release(agent, f"s-{agent}", [parse_resource(text)]))

    @rule(agent=st.sampled_from(AGENTS), text=st.sampled_from(RESOURCES))
    def renew(self, agent: str, text: str) -> None:
        self.run(Renew(agent, f"s-{agent}", [parse_resource(text)]))

    @rule(agent=st.sampled_from(AGENTS))
    def heartbeat(self, agent: str) -> None:
        self.run(Heartbeat(agent, f"s-{agent}"))

    @rule(seconds=st.sampled_from([1.0, 4.0, 10.0, 40.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(agent=st.sampled_from(AGENTS))
    def die_and_come_back(self, agent: str) -> None:
        self.liveness.dead.add(agent)
        self.run(Register(agent, f"s-{agent}", host="h", ttl=30))
        self.liveness.dead.discard(agent)

    @invariant()
    def no_incompatible_overlap(self) -> None:
        leases = list(self.state.leases())
        for a, b in combinations(leases, 2):
            if a["agent"] == b["agent"] or (a["mode"] == SHARED and b["mode"] == SHARED):
                continue
            ra, rb = parse_resource(a["resource"]), parse_resource(b["resource"])
            assert not overlaps(ra, rb), (a, b)

    @invariant()
    def tokens_never_reused(self) -> None:
        assert self.tokens == sorted(set(self.tokens))

    @invariant()
    def replay_rebuilds_the_state(self) -> None:
        rebuilt = State()
        for line in self.log:
            apply(rebuilt, json.loads(line))
        assert self.state.to_json() == rebuilt.to_json()


LeaseMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
test_lease_machine = LeaseMachine.TestCase
