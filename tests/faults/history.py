"""One history checker for every fault test (Jepsen's lock and lock-set checks, in small).

A test records what each client asked and what it was told (`History.record`), runs its faults,
recovers the store, and calls `check` with the store's log. The checker proves:

* no two holders of overlapping resources (one of them exclusive) at the same time, as the store
  saw it: replaying the log in ``seq`` order, every ``acquire`` finds no incompatible live hold
  (holds end with ``release``, ``auto-evict``, ``force-evict`` or ``unregister``);
* fencing tokens strictly increase, per resource and overall;
* every grant a client was told about (acknowledged) is in the log after recovery;
* a fenced register (a counter guarded by a claim, written read-modify-write with the token)
  equals the number of writes it acknowledged, and accepted no stale write.

It shares nothing with `dibs.core.leases` but the resource overlap rule, which has its own
brute-force proof (tests/unit/test_globs.py).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dibs.core.resources import overlaps, parse_resource


@dataclass
class Op:
    """One client operation: who, what, when (monotonic), and what it was told."""

    client: str
    kind: str  # "acquire", "release", "write", ...
    resource: str
    invoked: float
    returned: float | None = None
    outcome: str = "pending"  # "ok", "refused", "failed" (not acknowledged), "unknown"
    token: int | None = None


@dataclass
class History:
    """What clients asked and were told, appended as they go (one per process, merged later)."""

    ops: list[Op] = field(default_factory=list)

    def record(self, client: str, kind: str, resource: str) -> Op:
        op = Op(client, kind, resource, time.monotonic())
        self.ops.append(op)
        return op

    def done(self, op: Op, outcome: str, token: int | None = None) -> None:
        op.returned = time.monotonic()
        op.outcome = outcome
        op.token = token

    def dump(self) -> list[dict[str, Any]]:
        return [op.__dict__ for op in self.ops]

    @classmethod
    def load(cls, rows: Iterable[dict[str, Any]]) -> History:
        return cls([Op(**row) for row in rows])

    def acknowledged_grants(self) -> set[tuple[str, int]]:
        return {
            (op.resource, op.token)
            for op in self.ops
            if op.kind == "acquire" and op.outcome == "ok" and op.token is not None
        }


@dataclass
class Verdict:
    """What the checker found; every list must be empty."""

    overlapping_holders: list[str] = field(default_factory=list)
    token_order: list[str] = field(default_factory=list)
    lost_grants: list[str] = field(default_factory=list)
    register: list[str] = field(default_factory=list)
    events: int = 0
    acquires: int = 0

    @property
    def violations(self) -> int:
        return sum(
            map(len, (self.overlapping_holders, self.token_order, self.lost_grants, self.register))
        )

    def assert_clean(self) -> None:
        assert self.violations == 0, self


def check(
    events: Iterable[dict[str, Any]],
    history: History | None = None,
    register: FencedRegister | None = None,
) -> Verdict:
    """Check a recovered log (and optionally a client history and a fenced register)."""
    events = list(events)
    verdict = Verdict(events=len(events))
    granted = _check_holds(events, verdict)
    if history is not None:
        for resource, token in sorted(history.acknowledged_grants()):
            if (resource, token) not in granted:
                verdict.lost_grants.append(f"{resource} token {token} was acknowledged, not logged")
    if register is not None:
        ops = history.ops if history is not None else []
        acked = sum(1 for op in ops if op.kind == "write" and op.outcome == "ok")
        verdict.register += check_register(events, register, acked)
    return verdict


def _check_holds(events: list[dict[str, Any]], verdict: Verdict) -> set[tuple[str, int]]:
    """Replay holds in log order; record overlaps and token disorder; return every grant."""
    holds: dict[tuple[str, str], tuple[str, int]] = {}  # (resource, agent) -> (mode, token)
    last_token = 0
    per_resource: dict[str, int] = {}
    granted: set[tuple[str, int]] = set()
    for event in events:
        op = event["op"]
        if op in ("release", "auto-evict", "force-evict"):
            holds.pop((event["resource"], event["agent"]), None)
        elif op == "unregister":
            for key in [k for k in holds if k[1] == event["agent"]]:
                del holds[key]
        if op != "acquire":
            continue
        verdict.acquires += 1
        resource, agent, mode, token = (e := event)["resource"], e["agent"], e["mode"], e["token"]
        parsed = parse_resource(resource)
        for (other, holder), (other_mode, other_token) in holds.items():
            if holder == agent or (mode == "shared" and other_mode == "shared"):
                continue
            if overlaps(parsed, parse_resource(other)):
                verdict.overlapping_holders.append(
                    f"seq {event['seq']}: {agent} got {resource} (token {token}) while "
                    f"{holder} held {other} (token {other_token})"
                )
        if token <= last_token or token <= per_resource.get(resource, 0):
            verdict.token_order.append(f"seq {event['seq']}: token {token} did not grow")
        last_token = max(last_token, token)
        per_resource[resource] = token
        holds[(resource, agent)] = (mode, token)
        granted.add((resource, token))
    return granted


class FencedRegister:
    """A counter in a file, guarded by a claim: each write presents the writer's fencing token.

    The storage checks, under its own flock, that the token is still the live lease on the
    resource (asking the store) and is not lower than any token it has seen for that resource
    (so each resource guards its own slot); only then does it
    count the write, remembering the store's ``seq`` at that moment, so that the checker can
    prove from the log that the holder really held the lease then. A refused write is a stale
    writer caught.
    """

    def __init__(self, folder: Path):
        self.path = folder / "register.json"
        if not self.path.exists():
            self.path.write_text(json.dumps({"value": 0, "max": {}, "refused": 0, "writes": []}))

    def write(self, resource: str, token: int, current: Callable[[], tuple[bool, int]]) -> bool:
        """Add one under *token*; *current* says whether the token is live, and the seq."""
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            state = json.loads(f.read())
            live, seq = current()
            # Each resource guards its own value: tokens are compared per resource.
            accepted = live and token >= state["max"].get(resource, 0)
            if accepted:
                state["value"] += 1
                state["max"][resource] = token
                state["writes"].append([resource, token, seq])
            else:
                state["refused"] += 1
            f.seek(0)
            f.truncate()
            f.write(json.dumps(state))
            f.flush()
            os.fsync(f.fileno())
        return accepted

    def read(self) -> dict[str, Any]:
        return dict(json.loads(self.path.read_text()))


def check_register(events: list[dict[str, Any]], register: FencedRegister, acked: int) -> list[str]:
    """The register's value is the acknowledged writes, and each fell inside a live hold."""
    state = register.read()
    problems = []
    if state["value"] != acked:
        problems.append(f"register holds {state['value']}, {acked} writes were acknowledged")
    start: dict[tuple[str, int], int] = {}
    end: dict[tuple[str, int], int] = {}
    for event in events:
        key = (event.get("resource", ""), event.get("token", -1))
        if event["op"] == "acquire":
            start[key] = event["seq"]
        elif event["op"] in ("release", "auto-evict", "force-evict"):
            end.setdefault(key, event["seq"])
    for resource, token, seq in state["writes"]:
        key = (resource, token)
        if key not in start or start[key] > seq or end.get(key, seq + 1) <= seq:
            problems.append(f"write with {resource} token {token} at seq {seq}: not a live hold")
    return problems
