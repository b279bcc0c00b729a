"""Exactly one winner across processes and connections, with the PostgreSQL store.

`make test` runs a small but real race (8 processes); `make soak` runs the full one: 32
connections from 32 processes x 500 rounds, for one issue and for overlapping globs.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from dibs.core.resources import parse_resource
from dibs.core.state import SHARED, State, apply
from dibs.errors import Conflict
from dibs.service import Coordinator
from dibs.store.postgres import PostgresStore
from tests.integration.test_races import GLOBS

pytestmark = pytest.mark.postgres


def resource_for(kind: str, round_: int, index: int) -> str:
    if kind == "exact":
        return f"issue:round-{round_}"
    return f"path:r{round_}/{GLOBS[index % len(GLOBS)]}"


def race_worker(url: str, index: int, rounds: int, kind: str, sync: tuple[Any, Any]) -> None:
    """One racer: every round, try to claim; the winner holds until all have tried."""
    barrier, results = sync
    wins: list[tuple[int, str, int]] = []
    with Coordinator(PostgresStore(url, namespace="race")) as dibs:
        dibs.register(f"w{index}", ttl=600)
        for r in range(rounds):
            barrier.wait()
            text = resource_for(kind, r, index)
            won = False
            try:
                [claim] = dibs.claim([text])
                wins.append((r, claim["resource"], claim["token"]))
                won = True
            except Conflict:
                pass
            barrier.wait()
            if won:
                dibs.release([text])
    results.put((index, wins))


def run_race(url: str, kind: str, processes: int, rounds: int) -> list[tuple[int, str, int, int]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes, timeout=120)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=race_worker, args=(url, i, rounds, kind, (barrier, results)))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    try:
        collected = [results.get(timeout=900) for _ in workers]
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    assert all(w.exitcode == 0 for w in workers)
    return [(r, res, token, index) for index, wins in collected for r, res, token in wins]


def assert_one_holder_at_a_time(events: list[Any]) -> None:
    """Replay *events*: no grant ever overlaps a lease another agent still holds."""
    state = State()
    for event in events:
        if event["op"] == "acquire":
            resource = parse_resource(event["resource"])
            others = [
                lease
                for lease in state.overlapping(resource)
                if lease["agent"] != event["agent"]
                and not (lease["mode"] == SHARED and event["mode"] == SHARED)
            ]
            assert [] == others, f"double holder at seq {event['seq']}"
        apply(state, event)


def check_history(url: str, wins: list[tuple[int, str, int, int]], rounds: int) -> None:
    by_round: dict[int, list[tuple[str, int, int]]] = {}
    for r, res, token, index in wins:
        by_round.setdefault(r, []).append((res, token, index))
    assert sorted(by_round) == list(range(rounds)), "every round has a winner"
    assert all(len(v) == 1 for v in by_round.values()), "exactly one winner per round"
    tokens = [by_round[r][0][1] for r in range(rounds)]
    assert tokens == sorted(set(tokens)), "fencing tokens strictly increase"
    store = PostgresStore(url, namespace="race")
    try:
        events = list(store.events())
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "seq is contiguous"
        acquired = {(e["resource"], e["token"], e["agent"]) for e in events if e["op"] == "acquire"}
        for r in range(rounds):
            res, token, index = by_round[r][0]
            assert (res, token, f"w{index}") in acquired, "no acknowledged grant is lost"
        assert_one_holder_at_a_time(events)
        assert [] == store.check()
    finally:
        store.close()


def race_url(pg_database: str) -> str:
    store = PostgresStore(pg_database, namespace="race")
    store.create()
    store.close()
    return pg_database


@pytest.mark.parametrize("kind", ["exact", "glob"])
def test_processes_race_with_one_winner_per_round(pg_database: str, kind: str) -> None:
    """8 processes x 50 rounds through PostgreSQL: one winner, increasing tokens, no lost event."""
    url = race_url(pg_database)
    check_history(url, run_race(url, kind, 8, 50), 50)


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("kind", ["exact", "glob"])
def test_thirty_two_connections_race_for_five_hundred_rounds(pg_database: str, kind: str) -> None:
    """32 connections from 32 processes x 500 rounds, one issue or overlapping globs."""
    url = race_url(pg_database)
    check_history(url, run_race(url, kind, 32, 500), 500)
