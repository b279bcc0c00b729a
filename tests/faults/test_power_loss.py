"""Simulated power loss on the local store: every crash state of a real workload reopens with
no acknowledged claim lost and no fencing token reused.

`make test` checks a fixed sample of the crash states; `make soak` checks all of them (well over
10,000). The figures (states checked, violations) are printed with ``-s``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from dibs.ground.errors import Conflict, CorruptLog, LeaseLost, NotFound
from dibs.service import Coordinator
from dibs.store.local import LocalStore
from tests.conftest import FakeClock, FakeLiveness
from tests.faults.crashfs import CrashState, Recorder, crash_states, local_store_os, materialize
from tests.faults.history import check

RESOURCES = ["issue:A", "issue:B", "issue:C", "lock:deploy", "path:src/**", "path:src/app.py"]


def record_workload(base: Path, steps: int, seed: int) -> list[tuple[Any, ...]]:
    """Three agents (three store handles, as three processes) claim, release and heartbeat."""
    recorder = Recorder()
    clock = FakeClock()
    rng = random.Random(seed)
    with local_store_os(recorder):
        agents = []
        for name in ("a1", "a2", "a3"):
            store = LocalStore(base / "dibs", clock=clock, segment_bytes=1500, checkpoint_bytes=900)
            coordinator = Coordinator(store, liveness=FakeLiveness())
            coordinator.register(name, ttl=30)
            agents.append(coordinator)
        for step in range(steps):
            agent = rng.choice(agents)
            roll = rng.random()
            try:
                if roll < 0.55:
                    wanted = rng.sample(RESOURCES, rng.randint(1, 3))
                    note = f"request-{step}"
                    recorder.mark(("request", note, sorted(wanted)))
                    granted = agent.claim(wanted, ttl=rng.choice([5, 30]), note=note)
                    grants = [(g["resource"], g["token"]) for g in granted if g["new"]]
                    recorder.mark(("ack", grants))
                elif roll < 0.85:
                    agent.release()
                else:
                    agent.heartbeat()
            except (Conflict, LeaseLost, NotFound):
                pass
            clock.advance(rng.choice([0.5, 2, 8]))
    return recorder.ops


def check_state(state: CrashState, base: Path, where: Path) -> list[str]:
    """Reopen one crash state; return its violations (none expected)."""
    root = materialize(state, str(base), where) / "dibs"
    acked = {grant for mark in state.acknowledged if mark[0] == "ack" for grant in mark[1]}
    requested = {mark[1]: mark[2] for mark in state.acknowledged if mark[0] == "request"}
    store = LocalStore(root, clock=FakeClock(boot="after-crash"))
    try:
        events = list(store.events())
        store.read()
    except CorruptLog as exc:
        return [f"{state.variant} at {state.point}: does not open: {exc.message}"]
    problems = []
    logged = {(e["resource"], e["token"]) for e in events if e["op"] == "acquire"}
    problems += [f"acknowledged {g} lost" for g in sorted(acked - logged)]
    verdict = check(events)
    problems += verdict.overlapping_holders + verdict.token_order
    # All or nothing: a claim survives the crash whole, or not at all.
    survived: dict[str, set[str]] = {}
    for event in events:
        if event["op"] in ("acquire", "renew") and "note" in event:
            survived.setdefault(event["note"], set()).add(event["resource"])
    problems += [
        f"half of {note} survived: {sorted(got)} of {requested[note]}"
        for note, got in survived.items()
        if note in requested and got != set(requested[note])
    ]
    coordinator = Coordinator(store, liveness=FakeLiveness())
    coordinator.register("after-crash")
    [grant] = coordinator.claim(["issue:after-crash"])
    highest = max((token for _, token in acked), default=0)
    if grant["token"] <= highest:
        problems.append(f"token {grant['token']} reused after the crash (had {highest})")
    damaged = [f for f in store.check() if f["kind"] == "corrupt-log"]
    problems += [f"doctor: {f['message']}" for f in damaged]
    store.close()
    return [f"{state.variant} at op {state.point}: {p}" for p in problems]


def run(tmp_path: Path, sample: int | None) -> tuple[int, int, list[str]]:
    base = tmp_path / "recorded"
    base.mkdir()
    ops = record_workload(base, steps=40, seed=7)
    states = list(crash_states(ops, str(base)))
    if sample is not None:
        rng = random.Random(11)
        states = rng.sample(states, min(sample, len(states)))
    violations: list[str] = []
    for index, state in enumerate(states):
        violations += check_state(state, base, tmp_path / f"state-{index}")
    return len(ops), len(states), violations


def test_sample_of_crash_states_loses_nothing(tmp_path: Path) -> None:
    """A fixed sample of crash states: every one reopens; nothing acknowledged is lost."""
    ops, states, violations = run(tmp_path, sample=300)
    print(f"power loss: {ops} recorded calls, {states} crash states, {len(violations)} violations")
    assert [] == violations


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_every_crash_state_loses_nothing(tmp_path: Path) -> None:
    """All crash states of the workload (more than 10,000)."""
    ops, states, violations = run(tmp_path, sample=None)
    print(f"power loss: {ops} recorded calls, {states} crash states, {len(violations)} violations")
    assert states >= 10_000
    assert [] == violations
