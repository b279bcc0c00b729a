"""Claims and releases that commute (`dibs.store.postgres.commuting`), against a real server.

Several clients on one namespace, each deciding on its own cached state while the others
write: a claim or release that commutes with what was written meanwhile is appended in one
statement, moved up past it. With DIBS_VERIFY_COMMUTING=1 (tests/conftest.py) every such
append is decided again on the caught-up state and must come out the same, so these runs
check the server's `dibs.append_commuting` against the rules on every case they generate.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dibs.core.events import new_event
from dibs.core.resources import parse_resource, scope, scopes_may_overlap
from dibs.core.rules import Decision
from dibs.ground.errors import AuthError, Conflict, LeaseLost, NotFound
from dibs.service import Coordinator
from dibs.store.postgres import PostgresStore, commuting
from tests.conftest import FakeLiveness, fresh_database

pytestmark = pytest.mark.postgres

POOL = [
    "issue:1",
    "issue:2",
    "lock:a",
    "path:src/a.py",
    "path:src/a.py#L1-5",
    "path:src/a.py#L4-9",
    "path:src/**",
    "path:src/*.py",
    "path:docs/x.md",
    "path:**/*.md",
    "path:src",
    "path:src/sub/b.py",
    "issue:3",
    "issue:4",
    "lock:b",
    "path:lib/c.py",
    "path:lib/**",
    "path:web/d.js#L2-3",
]
_names = itertools.count()


@pytest.fixture(scope="module")
def server(pg_template: str) -> Iterator[str]:
    """One database for the module; each example gets a namespace of its own."""
    with fresh_database(pg_template) as url:
        yield url


def test_the_server_compares_scopes_as_the_client_does(server: str) -> None:
    """``dibs.scope_clashes`` with the arrays `commuting.probe` makes of some scopes answers
    whether a scope may overlap one of them, as `scopes_may_overlap` does, for every pair and
    for sets of three (names with LIKE's own characters included)."""
    texts = [*POOL, "path:x_y/%z", "path:x_y/a", "path:xay/b", "path:**", "path:a\\*/b"]
    scopes = sorted({scope(parse_resource(text).text) or "" for text in texts} | {"path:"})
    sets = [[a] for a in scopes] + [list(trio) for trio in itertools.combinations(scopes, 3)][:300]
    cases = [(found, reads) for reads in sets for found in scopes]
    with psycopg.connect(server, autocommit=True) as conn:
        got = [
            conn.execute(
                "SELECT dibs.scope_clashes(%s, %s::text[], %s::text[], %s::text[], %s)",
                (found, *(commuting.probe(reads)[k] for k in ("reads", "above", "below", "root"))),
            ).fetchone()[0]  # type: ignore[index]
            for found, reads in cases
        ]
    expected = [any(scopes_may_overlap(a, found) for a in reads) for found, reads in cases]
    assert expected == got


def _record(state: Any, ctx: Any) -> Decision:
    return Decision([new_event("record", ctx.now, table="notes", key="k", value=1)])


def _act(
    coord: Coordinator,
    action: str,
    resources: list[str],
    shared: bool,
    everyone: dict[int, dict[str, int]],
) -> None:
    """One step of one client; *everyone* is what each client was told it holds (resource ->
    token), this one's under its agent's number."""
    held = everyone[int(str(coord.agent)[1:])]
    try:
        if action == "claim":
            for lease in coord.claim(resources, shared=shared):
                held[lease["resource"]] = lease["token"]
        elif action == "release":
            coord.release(resources[:1])
            held.pop(resources[0], None)
        elif action == "release-all":
            coord.release()
            held.clear()
        elif action == "heartbeat":
            coord.heartbeat()
        elif action == "evict":  # a person takes every hold on it away
            coord.evict(resources[0], reason="test")
            for mine in everyone.values():
                mine.pop(resources[0], None)
        else:
            coord.transact(_record)
    except Conflict:
        pass
    except (NotFound, LeaseLost):
        # Releasing what it does not hold (or no longer holds: evicted), a heartbeat that
        # reports a lease evicted, evicting what nobody holds.
        if action not in ("release", "release-all", "heartbeat", "evict"):
            raise


STEP = st.tuples(
    st.integers(0, 2),  # which client
    st.sampled_from(
        ["claim", "claim", "claim", "release", "release-all", "heartbeat", "record", "evict"]
    ),
    st.lists(st.sampled_from(POOL), min_size=1, max_size=2, unique=True),
    st.booleans(),  # shared
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(STEP, min_size=5, max_size=40))
def test_commuting_appends_are_what_the_rules_decide_on_the_current_state(
    server: str, steps: list[tuple[int, str, list[str], bool]]
) -> None:
    """Three clients interleave claims (overlapping globs, line ranges, shared and exclusive),
    releases, heartbeats and table records on stale caches. Every commuting append is checked
    against the rules on the caught-up state (the store raises if they differ); and the final
    state read fresh shows each client what it was told it holds."""
    namespace = f"c{next(_names)}"
    stores = [PostgresStore(server, namespace=namespace) for _ in range(3)]
    try:
        stores[0].create()
        coords = [Coordinator(store, liveness=FakeLiveness()) for store in stores]
        for i, coord in enumerate(coords):
            coord.register(f"a{i}", ttl=3600)
        for store in stores:
            store.profile = {}
        held: dict[int, dict[str, int]] = {0: {}, 1: {}, 2: {}}
        for who, action, resources, shared in steps:
            _act(coords[who], action, resources, shared, held)
        for store in stores:
            for key in ("commuting", "commuting-moved", "commuting-clash"):
                if store.profile and store.profile.get(key):
                    event(key)
        fresh = Coordinator(PostgresStore(server, namespace=namespace), liveness=FakeLiveness())
        try:
            for who, mine in held.items():
                got = {v["resource"]: v["token"] for v in fresh.claims(agent=f"a{who}")}
                assert mine == got
        finally:
            fresh.store.close()
    finally:
        for store in stores:
            store.close()


@contextlib.contextmanager
def _two_clients(server: str) -> Iterator[tuple[PostgresStore, Coordinator, Coordinator]]:
    """Agents a and b on a namespace of their own, each through its own client: (a's store,
    a's coordinator, b's coordinator)."""
    namespace = f"c{next(_names)}"
    a, b = (PostgresStore(server, namespace=namespace) for _ in range(2))
    try:
        a.create()
        ca, cb = Coordinator(a, liveness=FakeLiveness()), Coordinator(b, liveness=FakeLiveness())
        ca.register("a", ttl=3600)
        cb.register("b", ttl=3600)
        yield a, ca, cb
    finally:
        a.close()
        b.close()


def test_writers_of_different_resources_append_without_waiting_for_each_other(
    server: str,
) -> None:
    """A claim decided on a stale cache is appended past others' unrelated writes in one
    statement, its events and fencing token moved up; a related write makes it fall back
    to the lock and it is decided again."""
    with _two_clients(server) as (a, ca, cb):
        ca.claim(["issue:0"])  # a's cache is current up to here
        cb.claim(["issue:1", "path:src/**"])  # unrelated to a's next claim
        a.profile = {}
        [lease] = ca.claim(["path:docs/x.md"])
        assert 4 == lease["token"]  # moved up past b's two tokens (a had 1)
        assert 1 == a.profile.get("commuting-moved")
        cb.claim(["path:lib/**"])  # a's cache does not know this one
        with pytest.raises(Conflict, match="held by b"):
            ca.claim(["path:lib/a.py"])  # granted on a's cache; it clashes: decided again
        assert 1 == a.profile.get("commuting-clash")
        ops = [(e["seq"], e["op"], e.get("agent"), e.get("token")) for e in ca.log()]
        assert [seq for seq, *_ in ops] == list(range(1, len(ops) + 1))


def test_a_refusal_reads_every_resource_it_asked_for(server: str) -> None:
    """A claim of two resources refused on the first one read the second as well: a write to
    the second made meanwhile clashes, and the refusal is decided again (naming the first
    resource blocked on the state as it is now)."""
    with _two_clients(server) as (a, ca, cb):
        cb.claim(["issue:2"])
        ca.claim(["issue:0"])  # a's cache: b holds issue:2 only
        cb.claim(["issue:1"])  # a's cache does not know this one
        a.profile = {}
        with pytest.raises(Conflict) as refused:
            ca.claim(["issue:1", "issue:2"])
        assert "issue:1 is held by b" in str(refused.value)
        assert 1 == a.profile.get("commuting-clash")


def test_a_claim_or_release_with_a_wrong_token_is_refused_and_writes_nothing(
    server: str,
) -> None:
    """The commuting path runs the same authentication: no token, another agent's token, or
    a token from before the name was registered again are refused, on a stale cache too, and
    the log does not move."""
    with _two_clients(server) as (a, ca, cb):
        ca.claim(["issue:a"])
        cb.claim(["issue:b"])  # a's cache is stale from here
        before = len(ca.log())
        with pytest.raises(AuthError):
            Coordinator(a, agent="a", token=cb.token, liveness=FakeLiveness()).claim(["issue:x"])
        with pytest.raises(AuthError):
            Coordinator(a, agent="b", token=ca.token, liveness=FakeLiveness()).release(["issue:b"])
        with pytest.raises(AuthError, match="no session token"):
            Coordinator(a, agent="a", token="", liveness=FakeLiveness()).claim(["issue:x"])
        assert before == len(ca.log())
        assert ["issue:b"] == [v["resource"] for v in cb.claims(agent="b")]
