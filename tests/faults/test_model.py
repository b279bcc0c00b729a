"""Model test: every store against a small reference model, step by step.

A Hypothesis state machine claims, renews and releases for three agents, advances a fake clock
and runs the store's own check with repair; after every step the store's answers and its live
leases must equal the model's. Each store adds the faults it can meet:

* local: crashes (the handle dropped, sometimes leaving a torn write behind) and reopening, and
  compaction (the checkpoint rewritten, or lost). 2,000 examples.
* PostgreSQL: the connection killed by the server (the store reconnects), the client dropped
  and a new one opened, checkpoints lost. One database per run, a namespace per example; 150
  examples, as each step costs round trips.
* memory: the rules alone (it has no disk and no second life). 1,000 examples.

The model is written from the rules in docs/explanation/architecture.md, not from dibs.core:
holds with a mode, a token from one counter and an expiry; claims all or nothing; renew and
release only by a holder whose lease has not expired.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from dibs.core.resources import overlaps, parse_resource
from dibs.ground.errors import Conflict, LeaseLost, NotFound
from dibs.service import Coordinator
from dibs.store.base import Store
from dibs.store.local import LocalStore
from dibs.store.memory import MemoryStore
from dibs.store.postgres import PostgresStore
from tests.conftest import FakeClock, FakeLiveness
from tests.faults.history import check

# Thousands of examples: on a loaded 2-core machine they outlast the default 120 s per test.
pytestmark = pytest.mark.timeout(900)

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
    """The rules every store must follow, checked against the model; subclasses open the store
    (`_open`) and add the faults it can meet."""

    #: Kinds of finding a repairing check may report at any step (and mend) in this store.
    REPAIRABLE: frozenset[str] = frozenset()

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.model = Model()
        self.tokens: dict[str, str] = {}
        self.store = self._open()
        for agent in AGENTS:
            self.tokens[agent] = self._coordinator().register(agent, ttl=60)["token"]

    def _open(self) -> Store:
        raise NotImplementedError  # each store's machine says how it opens

    def _coordinator(self, agent: str | None = None) -> Coordinator:
        token = self.tokens.get(agent) if agent else None
        return Coordinator(self.store, agent=agent, token=token, liveness=FakeLiveness())

    def teardown(self) -> None:
        check(self.store.events()).assert_clean()
        self.store.close()

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

    @rule()
    def doctor(self) -> None:
        """A repairing check finds only what this store may meet, and changes no live lease
        (the invariant compares them after this step)."""
        found = {f["kind"] for f in self.store.check(repair=True)}
        assert found <= self.REPAIRABLE

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


class MemoryVersusModel(StoreVersusModel):
    """The memory store: the rules alone."""

    def _open(self) -> Store:
        return MemoryStore(clock=self.clock)


class LocalVersusModel(StoreVersusModel):
    """The local store, with crashes, torn writes and compaction."""

    # A crash can leave a torn write (repaired by the next writer, or by the check), and a
    # lost checkpoint is reported once the log outgrows checkpoint_bytes.
    REPAIRABLE = frozenset({"torn-tail", "no-checkpoint"})

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dibs-model-", dir=TMP))
        super().__init__()

    def _open(self) -> Store:
        return LocalStore(
            self.folder / "dibs", clock=self.clock, segment_bytes=4000, checkpoint_bytes=1500
        )

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

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
            assert isinstance(self.store, LocalStore)
            self.store.read()
            self.store.write_checkpoint()


_namespaces = itertools.count(1)


class PostgresVersusModel(StoreVersusModel):
    """The PostgreSQL store, with killed connections, new clients and lost checkpoints; each
    example in a namespace of its own in the run's database."""

    def __init__(self, url: str, admin: Any) -> None:
        self.url = url
        self.admin = admin  # an autocommit connection to the same database
        self.namespace = f"model{next(_namespaces)}"
        setup = PostgresStore(url, namespace=self.namespace)
        setup.create()
        setup.close()
        super().__init__()

    def _open(self) -> Store:
        return PostgresStore(
            self.url, namespace=self.namespace, clock=self.clock, checkpoint_bytes=1500
        )

    @rule(kill=st.booleans())
    def crash_and_reopen(self, kill: bool) -> None:
        """kill: the server ends every other session of the database (a restart, a failover),
        and the client carries on; else the client is dropped and a new one opened."""
        if kill:
            self.admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        else:
            self.store.close()
            self.store = self._open()

    @rule()
    def lose_checkpoints(self) -> None:
        self.admin.execute("DELETE FROM dibs.checkpoints WHERE namespace = %s", (self.namespace,))


# 2,000 local examples took about 28 s on a loaded 2-core machine; the memory store is quicker
# per step and PostgreSQL much slower (round trips), hence fewer of those.
test_local_store_against_the_model = LocalVersusModel.TestCase
test_local_store_against_the_model.settings = settings(
    max_examples=2000, stateful_step_count=12, deadline=None
)
test_memory_store_against_the_model = MemoryVersusModel.TestCase
test_memory_store_against_the_model.settings = settings(
    max_examples=300, stateful_step_count=12, deadline=None
)


@pytest.mark.postgres
def test_postgres_store_against_the_model(pg_database: str) -> None:
    """The PostgreSQL store against the model, in this test's own database."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True) as admin:
        run_state_machine_as_test(
            lambda: PostgresVersusModel(pg_database, admin),
            settings=settings(max_examples=100, stateful_step_count=12, deadline=None),
        )
