"""kill -9 in the middle of writing, dead holders, and a stale holder waking up."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from dibs.core.state import State, apply
from dibs.service import Coordinator
from dibs.store.local import LocalStore
from tests.conftest import BIN

ITERATIONS = 200

WRITER = textwrap.dedent(
    """
    import json, sys
    from dibs.service import Coordinator
    from dibs.store.local import LocalStore
    root, name, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # Small write pieces let a kill land in the middle of a batch (see LocalStore).
    dibs = Coordinator(LocalStore(root, checkpoint_bytes=4096, write_chunk=61))
    dibs.register(name, ttl=3600)
    print("ready", flush=True)
    n = 0
    while True:
        names = [f"issue:{name}-{n}-{k}" for k in range(batch)]
        claims = dibs.claim(names, note="x" * 200)
        print(json.dumps([[c["resource"], c["token"]] for c in claims]), flush=True)
        dibs.release(names)
        n += 1
    """
)


def python(code: str, *args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.timeout(900)
def test_kill_9_at_random_points_loses_no_acknowledged_claim(
    tmp_path: Path, procs: list[subprocess.Popen[Any]]
) -> None:
    """200 writers killed mid-run: the store opens, keeps every acknowledged claim, no token
    repeats, and a torn tail is repaired."""
    root = tmp_path / "dibs"
    rng = random.Random(20261123)
    acknowledged: list[tuple[str, int]] = []
    torn = 0
    for iteration in range(ITERATIONS):
        batch = rng.choice([1, 5, 40])
        proc = python(WRITER, str(root), f"w{iteration}", str(batch))
        procs.append(proc)
        assert proc.stdout is not None
        assert "ready" == proc.stdout.readline().strip()
        time.sleep(rng.uniform(0, 0.03))
        proc.kill()
        out, _ = proc.communicate()
        for line in out.splitlines():
            if line.startswith("["):
                acknowledged.extend((r, t) for r, t in json.loads(line))
        torn += ends_torn(root)
        if iteration % 20 == 19:
            # Opening after a crash must work, and a full check must find no damage.
            kinds = {f["kind"] for f in LocalStore(root).check(repair=True)}
            assert kinds <= {"torn-tail", "checkpoint-differs", "no-checkpoint"}
    store = LocalStore(root)
    state = store.read()[0]
    events = list(store.events())
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    granted = {(e["resource"], e["token"]) for e in events if e["op"] == "acquire"}
    assert set(acknowledged) <= granted, "an acknowledged claim was lost"
    tokens = [e["token"] for e in events if e["op"] == "acquire"]
    assert len(tokens) == len(set(tokens)), "a fencing token was reused"
    assert tokens == sorted(tokens)
    rebuilt = State()
    for event in events:
        apply(rebuilt, event)
    assert rebuilt.to_json() == state.to_json()
    assert len(acknowledged) > ITERATIONS  # the writers really wrote
    assert torn > ITERATIONS // 20, f"only {torn} kills left a torn tail: the fault did not fire"


def ends_torn(root: Path) -> int:
    """1 when the log ends in a torn line or an incomplete transaction, else 0."""
    data = max((root / "log").iterdir()).read_bytes()
    if not data.endswith(b"\n"):
        return 1
    last = json.loads(data.splitlines()[-1])
    return int("txn" in last and last["seq"] != last["txn"][0] + last["txn"][1] - 1)


HOLDER = textwrap.dedent(
    """
    import os, subprocess, sys
    from dibs.service import Coordinator
    dibs = Coordinator.open(sys.argv[1])
    reg = dibs.register("holder", pid=os.getpid(), ttl=float(sys.argv[2]))
    [claim] = dibs.claim(["issue:X"])
    print(claim["token"], flush=True)
    sys.stdin.readline()
    env = dict(os.environ, DIBS_AGENT="holder", DIBS_TOKEN=reg["token"])
    argv = [sys.argv[3], "renew", "issue:X", "-C", sys.argv[1]]
    out = subprocess.run(argv, env=env, capture_output=True, text=True)
    print(out.returncode, out.stderr.strip().replace("\\n", " | "), flush=True)
    """
)


def test_stale_holder_is_refused_when_it_wakes(
    repo: Path, procs: list[subprocess.Popen[Any]]
) -> None:
    """A holder stopped past its ttl loses the lease to another agent and gets exit 4 on wake."""
    holder = python(HOLDER, str(repo), "1.0", str(BIN / "dibs"), stdin=subprocess.PIPE)
    procs.append(holder)
    assert holder.stdout is not None
    assert holder.stdin is not None
    old_token = int(holder.stdout.readline())
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        time.sleep(1.5)
        with Coordinator.open(repo) as dibs:
            dibs.register("taker")
            [claim] = dibs.claim(["issue:X"])
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    assert claim["token"] > old_token
    holder.stdin.write("go\n")
    holder.stdin.flush()
    code, _, message = holder.stdout.readline().partition(" ")
    assert "4" == code
    assert "lease lost" in message
    assert "issue:X (expired" in message
    with Coordinator.open(repo) as dibs:
        assert ["taker"] == [c["agent"] for c in dibs.claims()]


DEAD = textwrap.dedent(
    """
    import os, sys, time
    from dibs.service import Coordinator
    dibs = Coordinator.open(sys.argv[1])
    dibs.register("doomed", pid=os.getpid(), ttl=3600)
    dibs.claim(["issue:X", "path:src/**"])
    print("claimed", flush=True)
    time.sleep(3600)
    """
)


@pytest.mark.parametrize("reap", [True, False], ids=["reaped", "zombie"])
def test_dead_holder_is_evicted_at_once(
    repo: Path, procs: list[subprocess.Popen[Any]], reap: bool
) -> None:
    """A holder killed with SIGKILL loses its claims to the next claimant, not after its ttl."""
    holder = python(DEAD, str(repo))
    procs.append(holder)
    assert holder.stdout is not None
    assert "claimed" == holder.stdout.readline().strip()
    holder.kill()
    if reap:
        holder.wait()
    else:
        time.sleep(0.2)  # killed but not waited for: a zombie still has its /proc entry
    with Coordinator.open(repo) as dibs:
        dibs.register("next")
        dibs.claim(["path:src/app.py"])
        evictions = [e for e in dibs.log() if e["op"] == "auto-evict"]
    assert {("issue:X", "holder-dead"), ("path:src/**", "holder-dead")} == {
        (e["resource"], e["reason"]) for e in evictions
    }


def test_pid_reuse_does_not_keep_a_dead_holder_alive() -> None:
    """A live pid with another start time is another process: the holder is dead."""
    from dibs.ground.host import Liveness, boot_id, host_id, process_start

    start = process_start(os.getpid())
    assert start is not None
    agent: Any = {"name": "x", "pid": os.getpid(), "host": host_id(), "boot": boot_id()}
    live = Liveness()
    assert live({**agent, "pid_start": start}) is True
    assert live({**agent, "pid_start": start - 1}) is False
    assert live({**agent, "pid_start": start, "host": "elsewhere"}) is None
    assert live({**agent, "pid_start": start, "boot": "an-earlier-boot"}) is False
