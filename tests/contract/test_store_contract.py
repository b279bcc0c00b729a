"""One contract, every store: what the service relies on, checked the same way for each.

Add a store by adding a parameter to the ``backend`` fixture. The PostgreSQL store runs each
test in its own database (see ``pg_database`` in tests/conftest.py), with the fake clock in
place of the server's so that tests can move time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dibs.core.leases import Decision
from dibs.core.state import State
from dibs.ground.errors import Conflict, LeaseLost
from dibs.service import Coordinator
from dibs.store.base import Store
from dibs.store.local import LocalStore
from dibs.store.memory import MemoryStore
from tests.conftest import FakeClock, FakeLiveness


class Backend:
    """A store under test, and a way to open it again as a fresh process would."""

    def __init__(self, make: Callable[[], Store], shared: bool):
        self._make = make
        self.shared = shared  # reopening sees the same data (memory: same object)
        self.store = make()

    def reopen(self) -> Store:
        return self.store if not self.shared else self._make()


@pytest.fixture(params=["memory", "local", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Backend]:
    if request.param == "memory":
        b = Backend(lambda: MemoryStore(clock=clock), shared=False)
    elif request.param == "local":
        b = Backend(lambda: LocalStore(tmp_path / "dibs", clock=clock), shared=True)
    else:
        from dibs.store.postgres import PostgresStore

        url = request.getfixturevalue("pg_database")
        setup = PostgresStore(url, namespace="contract")
        setup.create()
        setup.close()
        b = Backend(lambda: PostgresStore(url, namespace="contract", clock=clock), shared=True)
    try:
        yield b
    finally:
        b.store.close()
    if request.param == "postgres":
        # Whatever the test did, dibs.live (expiry outside the log) agrees with a replay.
        doctor = PostgresStore(url, namespace="contract")
        findings = [f["kind"] for f in doctor.check() if f["kind"].startswith("live-")]
        doctor.close()
        assert [] == findings


def coordinator(store: Store, liveness: FakeLiveness | None = None) -> Coordinator:
    return Coordinator(store, liveness=liveness or FakeLiveness())


def test_empty_store_reads_as_empty_state(backend: Backend) -> None:
    """A new store has no events and an empty state."""
    state, _ = backend.store.read()
    assert 0 == state.seq
    assert [] == list(backend.store.events())
    assert [] == backend.store.tail(5)
    assert [] == backend.store.check()


def test_transact_numbers_events_contiguously(backend: Backend) -> None:
    """Every event gets the next seq, across transactions."""
    c = coordinator(backend.store)
    c.register("a1")
    c.claim(["issue:1", "issue:2"])
    c.release(["issue:1"])
    seqs = [e["seq"] for e in backend.store.events()]
    assert list(range(1, len(seqs) + 1)) == seqs
    assert len(seqs) == backend.store.read()[0].seq


def test_refused_decision_appends_nothing_but_its_evictions(
    backend: Backend, clock: FakeClock
) -> None:
    """A refusal is returned, not raised, by the store; its evictions are still appended, and
    the refusal itself is recorded (one ``refuse`` event for the claim call)."""
    c1, c2 = coordinator(backend.store), coordinator(backend.store)
    c1.register("a1")
    c2.register("a2")
    c1.claim(["issue:X"], ttl=5)
    c1.claim(["issue:Y"])
    clock.advance(6)
    before = backend.store.read()[0].seq
    with pytest.raises(Conflict):
        c2.claim(["issue:X", "issue:Y"])
    events = list(backend.store.events(before))
    assert ["auto-evict", "refuse"] == [e["op"] for e in events]
    assert "issue:Y" == events[-1]["resource"]


def test_decision_with_no_events_changes_nothing(backend: Backend) -> None:
    """A decision without events leaves the log as it was."""
    seq = backend.store.read()[0].seq
    decision = backend.store.transact(lambda _state, _now: Decision(result="looked"))
    assert "looked" == decision.result
    assert seq == backend.store.read()[0].seq


def test_reopened_store_has_the_same_state(backend: Backend) -> None:
    """What one process wrote, the next one reads, without replaying by hand."""
    c = coordinator(backend.store)
    c.register("a1")
    c.claim(["issue:X", "path:src/**"], note="work")
    c.heartbeat()
    other = backend.reopen()
    assert backend.store.read()[0].to_json() == other.read()[0].to_json()
    if other is not backend.store:
        other.close()


def test_two_handles_see_each_others_writes(backend: Backend) -> None:
    """Two openers of one store (two processes) exclude each other."""
    other = backend.reopen()
    try:
        c1, c2 = coordinator(backend.store), coordinator(other)
        c1.register("a1")
        c2.register("a2")
        c1.claim(["issue:X"])
        with pytest.raises(Conflict, match="held by a1"):
            c2.claim(["issue:X"])
        c1.release(["issue:X"])
        assert "issue:X" == c2.claim(["issue:X"])[0]["resource"]
    finally:
        if other is not backend.store:
            other.close()


def test_events_since_and_tail(backend: Backend) -> None:
    """events(since) starts after since; tail(n) is the last n, oldest first."""
    c = coordinator(backend.store)
    c.register("a1")
    for n in range(10):
        c.claim([f"issue:{n}"])
    seqs = [e["seq"] for e in backend.store.events(5)]
    assert list(range(6, 12)) == seqs
    assert [9, 10, 11] == [e["seq"] for e in backend.store.tail(3)]
    assert 11 == len(backend.store.tail(100))


def test_heartbeat_extends_the_lease_for_every_reader_until_it_lapses(
    backend: Backend, clock: FakeClock
) -> None:
    """A heartbeat gives the lease another ttl, seen from another handle; once it lapsed and
    another agent took the resource, its holder's heartbeat and renew are refused as lost."""
    c = coordinator(backend.store)
    c.register("a1", ttl=30)
    c.claim(["issue:X"], ttl=10)
    clock.advance(8)
    assert ["issue:X"] == c.heartbeat()["renewed"]
    clock.advance(8)
    other = backend.reopen()
    try:
        c2 = coordinator(other)
        c2.register("a2")
        with pytest.raises(Conflict, match="held by a1"):
            c2.claim(["issue:X"])
        clock.advance(5)
        assert "issue:X" == c2.claim(["issue:X"])[0]["resource"]
        with pytest.raises(LeaseLost):
            c.heartbeat()
        with pytest.raises(LeaseLost):
            c.renew(["issue:X"])
    finally:
        if other is not backend.store:
            other.close()


def test_lease_lost_after_force_evict(backend: Backend) -> None:
    """The holder of a force-evicted lease gets LeaseLost on release."""
    c = coordinator(backend.store)
    c.register("a1")
    c.claim(["issue:X"])
    coordinator(backend.store).evict("issue:X", reason="stuck")
    with pytest.raises(LeaseLost):
        c.release(["issue:X"])


def test_check_finds_nothing_wrong_after_normal_use(backend: Backend, clock: FakeClock) -> None:
    """A store used normally passes its own check, and the state equals a replay."""
    c = coordinator(backend.store)
    c.register("a1")
    c.claim(["issue:X"], ttl=5)
    clock.advance(10)
    c2 = coordinator(backend.store)
    c2.register("a2")
    c2.claim(["issue:X"])
    assert [] == [f for f in backend.store.check() if f["kind"] != "no-checkpoint"]
    rebuilt = State()
    from dibs.core.state import apply

    for event in backend.store.events():
        apply(rebuilt, event)
    assert rebuilt.to_json() == backend.store.read()[0].to_json()


def test_crossing_waits_decided_at_once_refuse_exactly_one(backend: Backend) -> None:
    """Two waits closing one cycle in the same instant: the second sees the first's edge."""
    import threading

    from dibs.ground.errors import Deadlock

    other = backend.reopen()
    try:
        c1, c2 = coordinator(backend.store), coordinator(other)
        c1.register("a1")
        c2.register("a2")
        for round_ in range(5):
            mine, theirs = f"issue:A{round_}", f"issue:B{round_}"
            c1.claim([mine])
            c2.claim([theirs])
            barrier = threading.Barrier(2)
            errors: list[Exception | None] = [None, None]
            threads = [
                threading.Thread(target=_cross, args=(barrier, errors, 0, c1, theirs)),
                threading.Thread(target=_cross, args=(barrier, errors, 1, c2, mine)),
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            kinds = sorted(type(e).__name__ for e in errors)
            assert ["Conflict", "Deadlock"] == kinds, errors
            refused = 0 if isinstance(errors[0], Deadlock) else 1
            assert [("a1", "a2")[1 - refused]] == sorted(other.read()[0].tables["waits"])
            for c, text in ((c1, mine), (c2, theirs)):
                c.release([text])
            survivor = (c1, c2)[1 - refused]
            survivor.claim([(theirs, mine)[1 - refused]], wait=1)  # the waiting call's grant
            survivor.release()
    finally:
        if other is not backend.store:
            other.close()


def _cross(barrier: Any, errors: list[Exception | None], i: int, c: Coordinator, text: str) -> None:
    """One blocked ``--wait`` try of *c*'s agent on *text*, started together with the other."""
    from dibs.core import leases
    from dibs.core.resources import parse_resource

    agent, secret = c._identity()
    waiter = {"host": "h", "pid": 1, "host_boot": "b", "horizon": 30.0}
    cmd = leases.Acquire(agent, secret, [parse_resource(text)], waiter=waiter)
    barrier.wait()
    errors[i] = c.store.transact(lambda state, now: leases.decide(state, cmd, c.context(now))).error
