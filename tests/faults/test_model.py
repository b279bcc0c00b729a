"""Model test: the local store against a small reference model, step by step.

A Hypothesis state machine claims, renews and releases for three agents, advances a fake clock,
crashes the store (dropping the handle, sometimes leaving a torn write behind) and reopens it,
and compacts (rewrites, or loses, the checkpoint). After every step the store's answers and its
live leases must equal the model's. 2,000 examples in `make test`.

The model is written from the rules in docs/explanation/architecture.md, not from dibs.core:
holds with a mode, a token from one counter and an expiry; claims all or nothing; renew and
release only by a holder whose lease has not expired.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dibs.core.resources import overlaps, parse_resource
from dibs.ground.errors import Conflict, LeaseLost, NotFound
from dibs.service import Coordinator
from dibs.store.local import LocalStore
from tests.conftest import FakeClock, FakeLiveness
from tests.faults.history import check

AGENTS = ["a1", "a2", "a3"]
RESOURCES = ["issue:A", "issue:B", "lock:x", "path:src/**", "path:src/app.py", "path:docs/a.md"]
# mkdtemp makes a private folder there; tmpfs makes fsync free, which 2,000 examples need.
SHM = "/dev/shm"  # noqa: S108
TMP = SHM if os.access(SHM, os.W_OK) else None


@dataclass
class Hold:
    mode: str
    token: int
    expires: float
    ttl: float


@dataclass
class Model:
    """The rules, small: (resource, agent) -> Hold; one growing token counter; a clock."""

    now: float = 0.0
    last_token: int = 0
    holds: dict[tuple[str, str], Hold] = field(default_factory=dict)

    def live(self) -> dict[tuple[str, str], Hold]:
        return {k: h for k, h in self.holds.items() if h.expires > self.now}

    def claim(self, agent: str, wanted: list[str], mode: str, ttl: float) -> list[int] | None:
        for resource in wanted:
            for (other, holder), hold in self.live().items():
                if holder == agent or (mode == "shared" and hold.mode == "shared"):
                    continue
                if overlaps(parse_resource(resource), parse_resource(other)):
                    return None
        tokens = []
        for resource in wanted:
            mine = self.live().get((resource, agent))
            if mine is not None and mine.mode == mode:
                mine.expires, mine.ttl = self.now + ttl, ttl
                tokens.append(mine.token)
                continue
            self.last_token += 1
            self.holds[(resource, agent)] = Hold(mode, self.last_token, self.now + ttl, ttl)
            tokens.append(self.last_token)
        return tokens

    def renew(self, agent: str, resource: str) -> bool:
        hold = self.live().get((resource, agent))
        if hold is None:
            self.holds.pop((resource, agent), None)
            return False
        hold.expires = self.now + hold.ttl
        return True

    def release(self, agent: str, resource: str) -> bool:
        hold = self.live().get((resource, agent))
        self.holds.pop((resource, agent), None)
        return hold is not None


class StoreVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="dibs-model-", dir=TMP))
        self.clock = FakeClock()
        self.model = Model()
        self.tokens: dict[str, str] = {}
        self.store = self._open()
        for agent in AGENTS:
            self.tokens[agent] = self._coordinator().register(agent, ttl=60)["token"]

    def _open(self) -> LocalStore:
        return LocalStore(
            self.folder / "dibs", clock=self.clock, segment_bytes=4000, checkpoint_bytes=1500
        )

    def _coordinator(self, agent: str | None = None) -> Coordinator:
        token = self.tokens.get(agent) if agent else None
        return Coordinator(self.store, agent=agent, token=token, liveness=FakeLiveness())

    def teardown(self) -> None:
        check(self.store.events()).assert_clean()
        self.store.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(
        agent=st.sampled_from(AGENTS),
        wanted=st.lists(st.sampled_from(RESOURCES), min_size=1, max_size=3, unique=True),
        shared=st.booleans(),
        ttl=st.sampled_from([5.0, 20.0]),
    )
    def claim(self, agent: str, wanted: list[str], shared: bool, ttl: float) -> None:
        expected = self.model.claim(agent, wanted, "shared" if shared else "exclusive", ttl)
        try:
            granted = self._coordinator(agent).claim(wanted, shared=shared, ttl=ttl)
            actual: list[int] | None = [g["token"] for g in granted]
        except Conflict:
            actual = None
        assert expected == actual

    @rule(agent=st.sampled_from(AGENTS), resource=st.sampled_from(RESOURCES))
    def renew(self, agent: str, resource: str) -> None:
        expected = self.model.renew(agent, resource)
        try:
            self._coordinator(agent).renew([resource])
            actual = True
        except (LeaseLost, NotFound):
            actual = False
        assert expected == actual

    @rule(agent=st.sampled_from(AGENTS), resource=st.sampled_from(RESOURCES))
    def release(self, agent: str, resource: str) -> None:
        expected = self.model.release(agent, resource)
        try:
            self._coordinator(agent).release([resource])
            actual = True
        except (LeaseLost, NotFound):
            actual = False
        assert expected == actual

    @rule(seconds=st.sampled_from([1.0, 4.0, 6.0, 25.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.model.now += seconds

    @rule(torn=st.sampled_from([b"", b'{"schema_version":1,"seq":', b"{"]))
    def crash_and_reopen(self, torn: bytes) -> None:
        self.store.close()
        if torn:
            segment = max((self.folder / "dibs" / "log").iterdir())
            if segment.stat().st_mode & 0o200:
                with open(segment, "ab") as f:  # a write cut short by the crash
                    f.write(torn)
        self.store = self._open()

    @rule(lose=st.booleans())
    def compact(self, lose: bool) -> None:
        index = self.folder / "dibs" / "checkpoint"
        if lose:
            index.unlink(missing_ok=True)
        else:
            self.store.read()
            self.store.write_checkpoint()

    @invariant()
    def live_leases_agree(self) -> None:
        state, now = self.store.read()
        actual = {
            (text, agent, lease["mode"], lease["token"])
            for text, holders in state.claims.items()
            for agent, lease in holders.items()
            if lease["expires"] > now.mono
        }
        expected = {
            (resource, agent, hold.mode, hold.token)
            for (resource, agent), hold in self.model.live().items()
        }
        assert expected == actual


StoreVersusModel.TestCase.settings = settings(
    max_examples=2000, stateful_step_count=12, deadline=None
)
test_store_against_the_model = StoreVersusModel.TestCase
