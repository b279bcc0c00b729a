"""The service's reads (what integrations and faces use instead of the store): the state, a
page of the log, a table, the last sequence number; against the in-memory store."""

from __future__ import annotations

import pytest

from dibs.core.events import new_event
from dibs.core.leases import Context, Decision
from dibs.core.state import State
from dibs.ground.errors import UsageError
from dibs.service import Coordinator
from dibs.store.memory import MemoryStore
from tests.conftest import FakeClock


@pytest.fixture
def coord(clock: FakeClock) -> Coordinator:
    coord = Coordinator(MemoryStore(clock=clock))
    coord.register("a1")
    coord.claim(["issue:A", "issue:B", "issue:C"])
    return coord


def test_events_pages_through_the_log(coord: Coordinator) -> None:
    """events(since, limit) gives the first *limit* events after *since*; the pages join up
    to the whole log."""
    everything = coord.events()
    assert [e["seq"] for e in everything] == list(range(1, len(everything) + 1))
    first = coord.events(0, 2)
    rest = coord.events(first[-1]["seq"])
    assert everything == first + rest
    assert [] == coord.events(everything[-1]["seq"])
    assert [] == coord.events(0, 0)


def test_events_refuses_a_negative_since_or_limit(coord: Coordinator) -> None:
    """Bad paging input is a usage error, as for `log`."""
    with pytest.raises(UsageError):
        coord.events(-1)
    with pytest.raises(UsageError):
        coord.events(0, -5)


def test_read_table_and_seq_show_the_state_now(coord: Coordinator) -> None:
    """read() is the state and its time; seq() its last event; table() one table, a copy."""
    state, now = coord.read()
    assert ["issue:A", "issue:B", "issue:C"] == sorted(state.claims)
    assert state.seq == coord.seq() == coord.events()[-1]["seq"]
    assert now.boot == "boot-a"
    assert {} == coord.table("plans")

    def put(_state: State, ctx: Context) -> Decision:
        return Decision([new_event("record", ctx.now, table="plans", key="a1", value={})])

    coord.transact(put)
    table = coord.table("plans")
    assert {"a1": {}} == table
    table["b"] = {}
    assert ["a1"] == list(coord.table("plans"))
