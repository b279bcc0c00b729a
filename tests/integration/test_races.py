"""Exactly one winner: many real processes race for the same resource, round after round."""

from __future__ import annotations

import multiprocessing
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest

from dibs.core.resources import overlaps, parse_resource
from dibs.ground.errors import Conflict
from dibs.service import Coordinator
from dibs.store.base import Store
from dibs.store.local import LocalStore
from tests.faults.history import History, check

PROCESSES = 16
ROUNDS = 200
#: Patterns that pairwise overlap (checked below), so every round is a real race.
GLOBS = ["**", "*.py", "a*", "*b.py", "**/c", "?b.py", "[ab]*", "**/*.py", "ab.py", "*"]


def resource_for(kind: str, round_: int, index: int) -> str:
    """What racer *index* claims in round *round_*: one issue, or one of the overlapping globs."""
    if kind == "exact":
        return f"issue:round-{round_}"
    return f"path:r{round_}/{GLOBS[index % len(GLOBS)]}"


def open_race_store(spec: str) -> Store:
    """A store from *spec*: a folder (the local store) or a postgresql:// URL."""
    if spec.startswith("postgresql://"):
        from dibs.store.postgres import PostgresStore

        return PostgresStore(spec, namespace="race")
    return LocalStore(spec)


def race_worker(spec: str, index: int, rounds: int, kind: str, sync: tuple[Any, Any]) -> None:
    """One racer: every round, try to claim; the winner holds until all have tried."""
    barrier, results = sync
    wins: list[tuple[int, str, int]] = []
    with Coordinator(open_race_store(spec)) as dibs:
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


def run_race(spec: str, kind: str, processes: int, rounds: int) -> list[tuple[int, str, int, int]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes, timeout=120)
    results = ctx.Queue()
    workers = [
        ctx.Process(target=race_worker, args=(spec, i, rounds, kind, (barrier, results)))
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


def check_history(spec: str, wins: list[tuple[int, str, int, int]], rounds: int) -> None:
    """One winner per round, tokens growing with the rounds, and a clean log."""
    by_round: dict[int, list[tuple[str, int, int]]] = {}
    for r, res, token, index in wins:
        by_round.setdefault(r, []).append((res, token, index))
    assert sorted(by_round) == list(range(rounds)), "every round has a winner"
    assert all(len(v) == 1 for v in by_round.values()), "exactly one winner per round"
    tokens = [by_round[r][0][1] for r in range(rounds)]
    assert tokens == sorted(set(tokens)), "fencing tokens strictly increase"
    store = open_race_store(spec)
    try:
        events = list(store.events())
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1)), "seq is contiguous"
        history = History()
        for r in range(rounds):
            res, token, index = by_round[r][0]
            history.done(history.record(f"w{index}", "acquire", res), "ok", token)
        check(events, history).assert_clean()  # no double holder, no acknowledged grant lost
        assert [] == [f for f in store.check() if f["kind"] != "no-checkpoint"]
    finally:
        store.close()


def test_globs_used_in_the_race_really_overlap() -> None:
    """Every pair of the glob racers' patterns can match a common file."""
    parsed = [parse_resource(f"path:r0/{g}") for g in GLOBS]
    assert all(overlaps(a, b) for a, b in combinations(parsed, 2))


@pytest.mark.timeout(600)
def test_sixteen_processes_race_for_one_issue_per_round(tmp_path: Path) -> None:
    """16 processes x 200 rounds on one issue: one winner, increasing tokens, no lost event."""
    wins = run_race(str(tmp_path / "dibs"), "exact", PROCESSES, ROUNDS)
    check_history(str(tmp_path / "dibs"), wins, ROUNDS)


@pytest.mark.timeout(600)
def test_sixteen_processes_race_with_overlapping_globs(tmp_path: Path) -> None:
    """Different but overlapping globs exclude each other exactly like one resource."""
    wins = run_race(str(tmp_path / "dibs"), "glob", PROCESSES, ROUNDS)
    check_history(str(tmp_path / "dibs"), wins, ROUNDS)
