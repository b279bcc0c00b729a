"""Pauses: holders stopped (SIGSTOP) for 1.5x their ttl, on 5% of operations.

Each worker claims a resource, then writes a fenced register twice under its token. On 5% of
operations it is stopped between the claim and the writes for 1.5 ttl, so its lease expires
and others take the resource; when it wakes, its writes must be refused. The register counts
stale attempts (the fault fired) and the checker proves none was accepted.

`make test` runs 6 processes x 40 operations; `make soak` 16 x 500.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dibs.store.local import LocalStore
from tests.faults.history import FencedRegister, History, check

WORKER = textwrap.dedent(
    """
    import json, os, random, signal, subprocess, sys, time
    from dibs.core.leases import eviction_reason
    from dibs.ground.errors import Conflict, LeaseLost
    from dibs.service import Coordinator
    from dibs.store.local import LocalStore
    from pathlib import Path
    from tests.faults.history import FencedRegister, History

    root, out = sys.argv[1], sys.argv[5]
    index, ops, ttl = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(index)
    me = f"w{index}"
    dibs = Coordinator(LocalStore(root))
    dibs.register(me, pid=os.getpid(), ttl=ttl)
    register = FencedRegister(Path(root).parent)
    history = History()
    pauses = 0

    def current(resource, token):
        def ask():
            state, now = dibs.store.read()
            lease = state.claims.get(resource, {}).get(me)
            live = (
                lease is not None
                and lease["token"] == token
                and eviction_reason(state, lease, dibs.context(now)) is None
            )
            return live, state.seq
        return ask

    due = False
    for k in range(ops):
        due = due or k % 20 == 3  # 5% of operations pause, at the next claim that succeeds
        resource = f"issue:{rng.randrange(6)}"
        op = history.record(me, "acquire", resource)
        try:
            [grant] = dibs.claim([resource], ttl=ttl)
        except Conflict:
            history.done(op, "refused")
            continue
        history.done(op, "ok", grant["token"])
        if due:
            due = False
            pauses += 1
            # A stopped process cannot wake itself: a helper sends SIGCONT after 1.5 ttl.
            subprocess.Popen(["sh", "-c", f"sleep {1.5 * ttl}; kill -CONT {os.getpid()}"])
            os.kill(os.getpid(), signal.SIGSTOP)
        time.sleep(rng.uniform(0, 0.05))  # work before writing: a stale writer can wake now
        for _ in range(2):
            write = history.record(me, "write", resource)
            accepted = register.write(resource, grant["token"], current(resource, grant["token"]))
            history.done(write, "ok" if accepted else "refused", grant["token"])
        try:
            dibs.release([resource])
        except LeaseLost:
            pass
    json.dump({"history": history.dump(), "pauses": pauses}, open(out, "w"))
    """
)


def run(tmp_path: Path, processes: int, ops: int, ttl: float) -> dict[str, Any]:
    root = tmp_path / "dibs"
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                str(root),
                str(i),
                str(ops),
                str(ttl),
                str(tmp_path / f"w{i}.json"),
            ],
            cwd=Path(__file__).resolve().parents[2],
        )
        for i in range(processes)
    ]
    try:
        for w in workers:
            assert 0 == w.wait(timeout=1800)
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    history = History()
    pauses = 0
    for i in range(processes):
        data = json.loads((tmp_path / f"w{i}.json").read_text())
        history.ops += History.load(data["history"]).ops
        pauses += data["pauses"]
    register = FencedRegister(tmp_path)
    verdict = check(LocalStore(root).events(), history, register)
    stale = register.read()["refused"]
    writes = sum(1 for op in history.ops if op.kind == "write" and op.outcome == "ok")
    print(
        f"pauses: {processes}x{ops} operations, {pauses} pauses, {writes} writes accepted, "
        f"{stale} stale writes refused, {verdict.violations} violations"
    )
    return {"verdict": verdict, "pauses": pauses, "stale": stale}


def test_stopped_holders_cannot_write_when_they_wake(tmp_path: Path) -> None:
    """6 x 40 with 5% pauses: stale writes were attempted, none accepted, no double holder."""
    result = run(tmp_path, processes=6, ops=40, ttl=0.3)
    result["verdict"].assert_clean()
    assert result["pauses"] > 0
    assert result["stale"] > 0


@pytest.mark.soak
@pytest.mark.timeout(3600)
def test_sixteen_processes_five_hundred_operations_with_pauses(tmp_path: Path) -> None:
    """16 x 500, the issue's full size."""
    result = run(tmp_path, processes=16, ops=500, ttl=0.5)
    result["verdict"].assert_clean()
    assert result["stale"] > 0
