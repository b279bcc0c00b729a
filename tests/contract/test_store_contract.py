"""One contract, every store: what the service relies on, checked the same way for each.

Add a store by adding it to ``KINDS`` (and to ``_store_class`` and ``_open_backend``). The
PostgreSQL store runs each test in its own database (see ``pg_database`` in tests/conftest.py),
with the fake clock in place of the server's so that tests can move time; the tests where
another process takes part open the store on its own clock instead, as that process does.

Beyond the basics: waiting for a change (``wait_for_change`` where a store offers it, and
``claim(wait=...)`` granted after another process releases), paging a long log (``events``
from any ``since``, ``tail``, paging by the last seen seq while a writer appends), and
``check(repair=True)`` on a healthy store and after each way the store's cache can be lost or
damaged (``DAMAGES``).
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

    def __init__(self, kind: str, where: str, make: Callable[[], Store], shared: bool):
        self.kind = kind  # "memory", "local" or "postgres"
        self.where = where  # the folder or the database URL (memory: "")
        self._make = make
        self.shared = shared  # reopening sees the same data (memory: same object)
        self.store = make()

    def reopen(self) -> Store:
        return self.store if not self.shared else self._make()

    def real(self) -> Store:
        """Another opener of the same store, on the store's own clock (the one another
        process would read), not the test's fake clock."""
        if self.kind == "local":
            return LocalStore(self.where)
        from dibs.store.postgres import PostgresStore

        return PostgresStore(self.where, namespace="contract")


def _store_class(kind: str) -> type:
    if kind == "postgres":
        from dibs.store.postgres import PostgresStore

        return PostgresStore
    return {"memory": MemoryStore, "local": LocalStore}[kind]


def _params(kinds: list[str]) -> list[Any]:
    return [pytest.param(k, marks=pytest.mark.postgres) if k == "postgres" else k for k in kinds]


KINDS = ["memory", "local", "postgres"]
#: Stores that other processes open too (not the memory store, which lives in one process).
SHARED_KINDS = ["local", "postgres"]
#: Stores that offer `dibs.store.base.Waiter` (``wait_for_change``); with the others,
#: ``claim(wait=...)`` sleeps with backoff between tries.
WAITING_KINDS = [k for k in KINDS if hasattr(_store_class(k), "wait_for_change")]


def _open_backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[Backend]:
    kind = request.param
    if kind == "memory":
        b = Backend(kind, "", lambda: MemoryStore(clock=clock), shared=False)
    elif kind == "local":
        root = str(tmp_path / "dibs")
        b = Backend(kind, root, lambda: LocalStore(root, clock=clock), shared=True)
    else:
        from dibs.store.postgres import PostgresStore

        url = request.getfixturevalue("pg_database")
        setup = PostgresStore(url, namespace="contract")
        setup.create()
        setup.close()
        b = Backend(
            kind, url, lambda: PostgresStore(url, namespace="contract", clock=clock), shared=True
        )
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


@pytest.fixture(params=_params(KINDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Backend]:
    yield from _open_backend(request, tmp_path, clock)


@pytest.fixture(params=_params(SHARED_KINDS))
def shared_backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[Backend]:
    """A store that another process can open too."""
    yield from _open_backend(request, tmp_path, clock)


@pytest.fixture(params=_params(WAITING_KINDS))
def waiting_backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> Iterator[Backend]:
    """A store that offers ``wait_for_change``."""
    yield from _open_backend(request, tmp_path, clock)


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


# Waiting for a change -------------------------------------------------------------------------
#
# The releases below are made by another real process (a child Python that opens the same
# store), so they reach the waiter the way they do between agents: through the files or the
# database, never through this process's memory. Both sides read the store's own clock.

_RELEASE_IN_A_CHILD = """
import sys

from dibs.service import Coordinator

kind, where, agent, token, resource = sys.argv[1:]
if kind == "local":
    from dibs.store.local import LocalStore

    store = LocalStore(where)
else:
    from dibs.store.postgres import PostgresStore

    store = PostgresStore(where, namespace="contract")
Coordinator(store, agent=agent, token=token).release([resource])
store.close()
"""

# Generous: the machine is shared; a healthy run takes a fraction of a second.
_PATIENCE = 120.0


def _release_in_a_child(backend: Backend, agent: str, token: str, resource: str) -> None:
    """Release *resource* as *agent* from another process, and wait for it to finish."""
    import subprocess
    import sys

    args = [backend.kind, backend.where, agent, token, resource]
    done = subprocess.run(
        [sys.executable, "-c", _RELEASE_IN_A_CHILD, *args],
        capture_output=True,
        text=True,
        timeout=_PATIENCE,
        check=False,
    )
    assert 0 == done.returncode, done.stderr


def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll *condition* until it holds; fail saying *what* never happened."""
    import time

    deadline = time.monotonic() + _PATIENCE
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {_PATIENCE:g} s")
        time.sleep(0.02)


def test_wait_for_change_wakes_on_a_release_by_another_process(waiting_backend: Backend) -> None:
    """A refused client that waits for a change is woken (True) by another process's release,
    and may then take the resource."""
    import threading

    holder_store, waiting_store = waiting_backend.real(), waiting_backend.real()
    try:
        holder, waiter = coordinator(holder_store), coordinator(waiting_store)
        token = holder.register("a1")["token"]
        waiter.register("a2")
        holder.claim(["issue:X"])
        with pytest.raises(Conflict):
            waiter.claim(["issue:X"])
        woke: list[bool] = []
        started = threading.Event()

        def wait() -> None:
            started.set()
            woke.append(waiting_store.wait_for_change(_PATIENCE))  # type: ignore[attr-defined]

        thread = threading.Thread(target=wait)
        thread.start()
        started.wait(_PATIENCE)
        _release_in_a_child(waiting_backend, "a1", token, "issue:X")
        thread.join(_PATIENCE + 30)
        assert [True] == woke
        assert "a2" == waiter.claim(["issue:X"])[0]["agent"]
    finally:
        holder_store.close()
        waiting_store.close()


def test_wait_for_change_times_out_when_nothing_is_released(waiting_backend: Backend) -> None:
    """With nothing released, a wait returns False once its timeout passes; a write that frees
    nothing (another client's new claim) does not wake it either."""
    other = waiting_backend.reopen()
    try:
        c1, c2 = coordinator(waiting_backend.store), coordinator(other)
        c1.register("a1")
        c2.register("a2")
        c1.claim(["issue:X"])
        with pytest.raises(Conflict):
            c2.claim(["issue:X"])
        c1.claim(["issue:Y"])
        assert other.wait_for_change(0.3) is False  # type: ignore[attr-defined]
        assert other.wait_for_change(0.3) is False  # type: ignore[attr-defined]
    finally:
        if other is not waiting_backend.store:
            other.close()


def test_claim_with_wait_is_granted_after_another_process_releases(
    shared_backend: Backend,
) -> None:
    """``claim(wait=...)`` blocked by a holder is granted once another process releases: it
    was recorded as waiting first, and it returns a grant, not a timeout."""
    import threading

    from dibs.ground.errors import DibsError

    holder_store, waiting_store = shared_backend.real(), shared_backend.real()
    try:
        holder, waiter = coordinator(holder_store), coordinator(waiting_store)
        token = holder.register("a1")["token"]
        waiter.register("a2")
        holder.claim(["issue:X"])
        outcome: list[Any] = []

        def claim() -> None:
            try:
                outcome.append(waiter.claim(["issue:X"], wait=_PATIENCE))
            except DibsError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=claim)
        thread.start()
        _until(
            lambda: "a2" in holder_store.read()[0].tables.get("waits", {}),
            "the waiting claim being recorded",
        )
        _release_in_a_child(shared_backend, "a1", token, "issue:X")
        thread.join(_PATIENCE + 30)
        assert 1 == len(outcome), "the waiting claim did not return"
        assert isinstance(outcome[0], list), outcome[0]
        assert "a2" == outcome[0][0]["agent"]
        acquire = [e for e in holder_store.events() if e["op"] == "acquire"][-1]
        assert "a2" == acquire["agent"]
        assert 0 < acquire["waited"] < _PATIENCE
    finally:
        holder_store.close()
        waiting_store.close()


# Paging a long log ----------------------------------------------------------------------------


def _small_pages(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make each store's unit of reading small, so a few thousand events cross many of them:
    PostgreSQL pages, the local store's segments and read chunks."""
    if backend.kind == "postgres":
        import sys

        for name, module in list(sys.modules.items()):
            if name.startswith("dibs.store.postgres") and hasattr(module, "_PAGE"):
                monkeypatch.setattr(module, "_PAGE", 128)
    elif backend.kind == "local":
        monkeypatch.setattr("dibs.store.local._READ_CHUNK", 4096)
        monkeypatch.setattr(backend.store, "segment_bytes", 64 * 1024)


def _long_log(c: Coordinator, rounds: int = 15, width: int = 100) -> None:
    """``2 * rounds * width`` events in ``2 * rounds`` transactions (claims and releases)."""
    batch = [f"issue:{n}" for n in range(width)]
    for _ in range(rounds):
        c.claim(batch)
        c.release(batch)


def test_events_of_a_long_log_from_any_since(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over a few thousand events, events(since) returns every later seq once, in order, from
    any since (on this handle and on a fresh one), and tail(n) is the end of events()."""
    _small_pages(backend, monkeypatch)
    c = coordinator(backend.store)
    c.register("a1")
    _long_log(c)
    end = backend.store.read()[0].seq
    everything = list(backend.store.events())
    assert list(range(1, end + 1)) == [e["seq"] for e in everything]
    sinces = [0, 1, 127, 128, 129, end // 2, end - 129, end - 1, end, end + 7]
    reader = backend.reopen()
    try:
        for handle in {id(h): h for h in (backend.store, reader)}.values():
            for since in sinces:
                seqs = [e["seq"] for e in handle.events(since)]
                assert list(range(since + 1, end + 1)) == seqs, f"events({since})"
            for count in (1, 2, 129, end, end + 10):
                assert everything[-count:] == handle.tail(count), f"tail({count})"
            assert [] == handle.tail(0)
    finally:
        if reader is not backend.store:
            reader.close()


def test_paging_by_the_last_seen_seq_never_skips_or_repeats(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that asks for events after the last seq it saw, a page at a time, while a
    writer keeps appending, sees every event exactly once and in order."""
    from itertools import islice

    _small_pages(backend, monkeypatch)
    c = coordinator(backend.store)
    c.register("a1")
    _long_log(c)
    reader = backend.reopen()
    try:
        seen: list[int] = []
        since = 0
        writes = 0
        while True:
            page = [e["seq"] for e in islice(reader.events(since), 97)]
            if not page:
                break
            seen.extend(page)
            since = page[-1]
            if writes < 20:
                writes += 1
                c.claim([f"issue:w{writes}"])  # appended while the reader is mid-log
        assert list(range(1, backend.store.read()[0].seq + 1)) == seen
    finally:
        if reader is not backend.store:
            reader.close()


# check(repair=True) ----------------------------------------------------------------------------


def _snapshot(store: Store) -> str:
    """The store's current state as text (a copy: the live state may be changed later).

    On PostgreSQL a handle's lease expiries and last-seen times are lower bounds (renewals
    outside the log extend them in dibs.live: docs/explanation/postgres.md), so two handles, or
    one before and after a reload, may differ there and nowhere else."""
    import json

    data = store.read()[0].to_json()
    if store.url.startswith(("postgres://", "postgresql://")):
        from dibs.store.postgres.live import without_expiry

        data = without_expiry(data)
    return json.dumps(data, sort_keys=True)


def _busy(backend: Backend, clock: FakeClock) -> None:
    """A state worth caching: two agents, path globs, shared and expired leases, and enough
    history (about 120 kB) that every store has written a checkpoint of it."""
    c1, c2 = coordinator(backend.store), coordinator(backend.store)
    c1.register("a1")
    c2.register("a2")
    _long_log(c1, rounds=3)
    c1.claim(["path:src/**", "lock:held"], note="work")
    c2.claim(["path:docs/**", "lock:x"], shared=True, ttl=5)
    clock.advance(10)
    c1.heartbeat()
    c2.claim(["lock:taken"])


def _wrong_state(data: dict[str, Any]) -> None:
    """Damage a cached state so that it still parses: leases gone, the token counter moved."""
    data["claims"] = {}
    data["last_token"] += 1000


def _damage_memory_state(backend: Backend) -> None:
    state = backend.store.read()[0]
    state.claims.pop(min(state.claims))
    state.last_token += 1000


def _local_checkpoint(backend: Backend) -> Path:
    path = Path(backend.where) / "checkpoint"
    assert path.exists(), "the workload should have written a checkpoint"
    return path


def _rewrite_local_checkpoint(backend: Backend, change: Callable[[dict[str, Any]], None]) -> None:
    """Change the state inside the checkpoint, keeping its format and its place in the log."""
    import marshal

    from dibs.store.local import _CHECKPOINT_HEADER

    path = _local_checkpoint(backend)
    data = marshal.loads(path.read_bytes()[len(_CHECKPOINT_HEADER) :])  # noqa: S302 -- the test's own
    change(data["state"])
    path.write_bytes(_CHECKPOINT_HEADER + marshal.dumps(data, 4))


def _forget_path_index(state: dict[str, Any]) -> None:
    """The checkpoint's derived index of path claims loses its entries; the claims stay."""
    state["indexes"]["prefixes"] = {}


def _pg(backend: Backend, statement: str) -> None:
    """Run *statement*, which must change at least one row (else it damaged nothing)."""
    import psycopg

    with psycopg.connect(backend.where, autocommit=True) as conn:
        assert conn.execute(statement).rowcount > 0, statement  # type: ignore[arg-type]


def _rewrite_pg_checkpoints(backend: Backend) -> None:
    import json

    import psycopg

    with psycopg.connect(backend.where, autocommit=True) as conn:
        rows = conn.execute("SELECT seq, state FROM dibs.checkpoints").fetchall()
        assert rows, "the workload should have written a checkpoint"
        for seq, text in rows:
            data = json.loads(text)
            _wrong_state(data)
            conn.execute(
                "UPDATE dibs.checkpoints SET state = %s WHERE seq = %s", (json.dumps(data), seq)
            )


#: How each store's cache can be lost or damaged: (what, damage, the kinds check reports,
#: whether a fresh opener reads a wrong state until the repair).
Damage = tuple[str, Callable[[Backend], None], set[str], bool]
DAMAGES: dict[str, list[Damage]] = {
    # The memory store's only cache is its live state, which readers must not change.
    "memory": [("live state changed", _damage_memory_state, {"state-differs"}, True)],
    "local": [
        ("checkpoint lost", lambda b: _local_checkpoint(b).unlink(), {"no-checkpoint"}, False),
        (
            "checkpoint unreadable",
            lambda b: _local_checkpoint(b).write_bytes(b"\x00garbage"),
            {"checkpoint-invalid"},
            False,
        ),
        (
            "checkpoint state wrong",
            lambda b: _rewrite_local_checkpoint(b, _wrong_state),
            {"checkpoint-differs"},
            True,
        ),
        (
            "checkpoint index wrong",
            lambda b: _rewrite_local_checkpoint(b, _forget_path_index),
            {"checkpoint-differs"},
            False,  # the state reads the same; the index misleads decisions (a path claim)
        ),
    ],
    "postgres": [
        (
            "checkpoint unreadable",
            lambda b: _pg(b, "UPDATE dibs.checkpoints SET state = 'not json'"),
            {"checkpoint-differs"},
            False,
        ),
        ("checkpoint state wrong", _rewrite_pg_checkpoints, {"checkpoint-differs"}, True),
        (
            "token counter behind",
            lambda b: _pg(b, "UPDATE dibs.namespaces SET last_token = 0"),
            {"token-counter"},
            False,
        ),
        # A lost checkpoint costs a replay of the namespace's log, nothing else: not reported.
        ("checkpoints lost", lambda b: _pg(b, "DELETE FROM dibs.checkpoints"), set(), False),
    ],
}


def test_check_of_a_healthy_store_finds_nothing_and_repair_changes_nothing(
    backend: Backend, clock: FakeClock
) -> None:
    """A store used normally has no findings; repairing it, twice, leaves it as it was."""
    _busy(backend, clock)
    healthy = _snapshot(backend.store)
    assert [] == backend.store.check()
    assert [] == backend.store.check(repair=True)
    assert [] == backend.store.check(repair=True)
    assert healthy == _snapshot(backend.store)
    fresh = backend.reopen()
    try:
        assert healthy == _snapshot(fresh)
    finally:
        if fresh is not backend.store:
            fresh.close()


def test_check_repairs_a_lost_or_damaged_cache(backend: Backend, clock: FakeClock) -> None:
    """Each way a store's cached state can be lost or damaged: check reports it (without
    changing anything), repair mends it, a second repair finds nothing, and the state, on this
    handle and on a fresh opener, is the one from before the damage."""
    _busy(backend, clock)
    c = coordinator(backend.store)
    c.register("a3")
    for what, damage, kinds, misleads in DAMAGES[backend.kind]:
        _long_log(c, rounds=2)  # history goes on, and a repaired store checkpoints it again
        healthy = _snapshot(backend.store)
        damage(backend)
        fresh = backend.reopen()
        try:
            assert misleads == (healthy != _snapshot(fresh)), what
        finally:
            if fresh is not backend.store:
                fresh.close()
        assert kinds == {f["kind"] for f in backend.store.check()}, what
        found = backend.store.check(repair=True)
        assert kinds == {f["kind"] for f in found}, what
        assert all(f["repaired"] for f in found), what
        assert [] == backend.store.check(repair=True), what
        assert healthy == _snapshot(backend.store), what
        fresh = backend.reopen()
        try:
            assert healthy == _snapshot(fresh), what
        finally:
            if fresh is not backend.store:
                fresh.close()
