"""Work handed from agent to agent: a landed task stays done, a lander hears its own outcome,
a dead agent's worktree is removed when landed and taken over when not, and a failed takeover
keeps nothing. Each test is one defect found by the swarm trial (bench/swarm.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Cli, background, git, until


def settings(repo: Path, gates: str = "") -> None:
    """dibs.toml (target main, *gates*) committed on main; tasks.toml beside it."""
    (repo / "dibs.toml").write_text(f'[merge]\ntarget = "main"\n[gates]\n{gates}\n')
    git(repo, "add", "dibs.toml")
    git(repo, "commit", "-q", "-m", "settings")


def tasks(repo: Path, *ids: str) -> None:
    (repo / "tasks.toml").write_text("".join(f'[[task]]\nid = "{i}"\n' for i in ids))


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process an agent is registered to watch: kill it and the agent is dead."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def die(proc: subprocess.Popen[bytes]) -> None:
    proc.kill()
    proc.wait()


def commit_in(path: str, name: str, text: str) -> None:
    Path(path, name).write_text(text)
    git(path, "add", name)
    git(path, "commit", "-q", "-m", f"add {name}")


def fill_finished(repo: Path, issue: str, count: int) -> None:
    """*count* finished queue entries (queued, then cancelled) of another issue's branch."""
    from dibs import Coordinator
    from dibs.integrations import queue

    with Coordinator.open(repo) as dibs:
        dibs.register("filler")
        dibs.claim([f"issue:{issue}"])
        git(repo, "branch", f"agent/{issue}", "main")
        for _ in range(count):
            queue.cancel(dibs, queue.enqueue(dibs, f"agent/{issue}")["id"])


def test_a_landed_task_is_never_ready_again_after_the_queue_pruned_its_entry(
    repo: Path, cli: Cli
) -> None:
    """Land T1, then 50 more finished queue entries: T1 is still done, not handed out."""
    settings(repo)
    tasks(repo, "T1", "T2")
    env = cli.register("alice")
    started = cli.json("next", "--start", env=env)
    assert "T1" == started["id"]
    commit_in(started["started"]["path"], "t1.txt", "one\n")
    entry = cli.json("land", "agent/T1", env=env)
    assert 0 == cli("finish", "T1", env=env).returncode
    fill_finished(repo, "T2", 50)
    assert entry["id"] not in {e["id"] for e in cli.json("queue")}  # pruned
    report = cli.json("ready", "--all")
    assert [] == [t["id"] for t in report["ready"]]
    assert {"T1": ["done"]} == {t["id"]: t["why"] for t in report["tasks"] if t["id"] == "T1"}
    landed = [e for e in cli.jsonl("log", "--since", "0") if e["op"] == "landed"]
    assert [("T1", 1)] == [(e["key"], e["value"]["times"]) for e in landed]


def test_land_reports_its_own_outcome_after_serving_others_while_its_entry_was_pruned(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """The lander lands its own entry, then serves another (its gate waits) while 50 entries
    finish and prune its row: it still reports its own landing (exit 0), from the log."""
    started, go = tmp_path / "started", tmp_path / "go"
    gate = (
        f'if [ "$DIBS_LAND_ISSUES" = B ]; then touch {started}; '
        f"while [ ! -f {go} ]; do sleep 0.05; done; fi"
    )
    settings(repo, f"tests = '{gate}'")
    alice, bob = cli.register("alice"), cli.register("bob")
    git(repo, "switch", "-q", "-c", "agent/A")
    commit_in(str(repo), "a.txt", "a\n")
    git(repo, "switch", "-q", "main")
    git(repo, "branch", "agent/B", "main")
    for env, issue in ((alice, "A"), (bob, "B")):  # A first in the queue, then B
        assert 0 == cli("claim", f"issue:{issue}", env=env).returncode
        assert 0 == cli("land", f"agent/{issue}", "--queue-only", env=env).returncode
    lander = background(cli, "land", "agent/A", "--json", env=alice)
    try:
        until(started.exists, "the lander reaching B's gate", lander)
        fill_finished(repo, "C", 50)
        go.write_text("")
        out, err = lander.communicate(timeout=120)
    finally:
        go.write_text("")  # the gate ends, whatever happened above
        if lander.poll() is None:
            lander.kill()
            lander.communicate()
    assert 0 == lander.returncode, out + err
    entry = json.loads(out)
    assert ("landed", "agent/A") == (entry["state"], entry["branch"])
    assert entry["id"] not in {e["id"] for e in cli.json("queue")}


def test_doctor_repair_removes_a_dead_agents_landed_worktree_and_offers_unlanded_work(
    repo: Path, cli: Cli, sleeper: subprocess.Popen[bytes]
) -> None:
    """A dead agent's landed worktree is reported and removed with its branch; a dead
    agent's unlanded worktree is kept, its claim freed, and the next taker adopts it."""
    settings(repo)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        done = cli.register("done", "--pid", str(sleeper.pid))
        busy = cli.register("busy", "--pid", str(other.pid))
        landed = cli.json("start", "L-1", env=done)
        commit_in(landed["path"], "l.txt", "l\n")
        assert 0 == cli("land", "agent/L-1", env=done).returncode
        kept = cli.json("start", "U-1", env=busy)
        commit_in(kept["path"], "u.txt", "u\n")
    finally:
        die(sleeper)
        die(other)
    report = cli("doctor", "--json")
    assert 1 == report.returncode
    kinds = {f["kind"] for f in json.loads(report.stdout)["findings"]}
    assert {"abandoned-landed", "abandoned-work"} <= kinds
    assert 0 == cli("doctor", "--repair").returncode
    assert not os.path.exists(landed["path"])
    assert "" == git(repo, "branch", "--list", "agent/L-1")
    assert os.path.isdir(kept["path"])
    assert [] == cli.json("claims")
    heir = cli.register("heir")
    took = cli.json("start", "U-1", env=heir)
    assert {"agent": "busy", "path": os.path.relpath(kept["path"], repo)} == took["adopted"]
    assert "u\n" == Path(took["path"], "u.txt").read_text()
    assert not os.path.exists(kept["path"])


def test_next_start_takes_over_a_dead_holders_worktree_with_its_work(
    repo: Path, cli: Cli, sleeper: subprocess.Popen[bytes]
) -> None:
    """The dead holder's worktree moves to the new holder: commits and uncommitted changes
    kept, the branch checked out once, the log saying who took it from whom."""
    settings(repo)
    tasks(repo, "W")
    ghost = cli.register("ghost", "--pid", str(sleeper.pid))
    first = cli.json("next", "--start", env=ghost)["started"]
    commit_in(first["path"], "done.txt", "committed\n")
    Path(first["path"], "wip.txt").write_text("uncommitted\n")
    die(sleeper)
    heir = cli.register("heir")
    out = cli("next", "--start", "--json", env=heir)
    assert 0 == out.returncode, out.stderr
    second = json.loads(out.stdout)["started"]
    assert str(repo / ".worktrees" / "heir" / "W") == second["path"]
    assert "committed\n" == Path(second["path"], "done.txt").read_text()
    assert "uncommitted\n" == Path(second["path"], "wip.txt").read_text()
    assert not os.path.exists(first["path"])
    assert 1 == git(repo, "worktree", "list").count("agent/W")
    rows = cli.json("worktrees")
    assert [("W", "heir")] == [(r["issue"], r["agent"]) for r in rows if r["issue"]]
    adopt = [e for e in cli.jsonl("log", "--since", "0") if e["op"] == "worktree-adopt"]
    assert ["ghost"] == [e["value"]["adopted"]["agent"] for e in adopt]


def test_next_steal_start_takes_over_a_stale_holders_worktree(repo: Path, cli: Cli) -> None:
    """--steal evicts a stale holder and moves its worktree to the thief in one act."""
    settings(repo)
    tasks(repo, "S")
    ghost = cli.register("ghost", "--ttl", "1")
    first = cli.json("next", "--start", "--ttl", "600", env=ghost)["started"]
    commit_in(first["path"], "s.txt", "s\n")
    time.sleep(1.5)  # no heartbeat within its 1 s: stale, while the lease has 600 s
    thief = cli.register("thief")
    out = cli("next", "--steal", "--start", "--json", env=thief)
    assert 0 == out.returncode, out.stderr
    taken = json.loads(out.stdout)
    assert (True, "ghost") == (taken["stolen"], taken["started"]["adopted"]["agent"])
    assert "s\n" == Path(taken["started"]["path"], "s.txt").read_text()


def test_a_failed_next_start_releases_the_task_it_took(repo: Path, cli: Cli) -> None:
    """When the worktree cannot be made, `next --start` exits 3 holding nothing: the task is
    ready for the next agent."""
    settings(repo)
    tasks(repo, "F")
    (repo / ".worktrees" / "unlucky" / "F").mkdir(parents=True)
    unlucky = cli.register("unlucky")
    out = cli("next", "--start", env=unlucky)
    assert 3 == out.returncode, out.stderr
    assert "already exists" in out.stderr
    assert [] == cli.json("claims")
    assert ["F"] == [t["id"] for t in cli.json("ready")["ready"]]


def test_a_live_owners_worktree_is_taken_only_once_it_lets_it_go(repo: Path, cli: Cli) -> None:
    """A live agent whose lease ran out keeps its worktree: `start` by another is refused
    (exit 3) leaving no claim; once it lets go (`finish --keep-worktree`) it is taken over."""
    settings(repo)
    alice = cli.register("alice", "--ttl", "600")
    cli.json("start", "K-1", "--ttl", "1", env=alice)
    time.sleep(1.5)  # the issue's 1 s lease ran out; alice itself is live (600 s)
    bob = cli.register("bob")
    out = cli("start", "K-1", env=bob)
    assert 3 == out.returncode, out.stderr
    assert "alice, which is live" in out.stderr
    assert [] == cli.json("claims")
    assert 0 == cli("finish", "K-1", "--keep-worktree", env=alice).returncode
    took = cli.json("start", "K-1", env=bob)
    assert "alice" == took["adopted"]["agent"]


def test_next_ttl_is_the_ttl_of_the_started_worktrees_claim(repo: Path, cli: Cli) -> None:
    """`next --ttl 40 --start` leaves the issue leased for 40 s, not the agent's ttl."""
    settings(repo)
    tasks(repo, "TTL")
    env = cli.register("short", "--ttl", "5")
    assert 0 == cli("next", "--ttl", "40", "--start", env=env).returncode
    leases: list[dict[str, Any]] = cli.json("claims")
    assert [("issue:TTL", 40.0)] == [(c["resource"], c["ttl"]) for c in leases]


def test_doctor_repair_removes_a_dead_processors_worktree_and_a_gone_worktrees_landed_branch(
    repo: Path, cli: Cli
) -> None:
    """What a kill mid-landing or mid-finish leaves (a processor's temporary worktree and the
    gate still running in it, a landed branch whose worktree is gone) is reported, and
    removed (stopped) by --repair."""
    from dibs.ground.host import boot_id, host_id, process_start

    settings(repo)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lander = repo / ".git" / "dibs-land" / f"lander-{gone.pid}-abcdef.0"
    git(repo, "worktree", "add", "-q", "--detach", str(lander))
    gate = subprocess.Popen(["sleep", "600"], cwd=lander, start_new_session=True)
    record = {
        "processor": f"lander-{gone.pid}-abcdef",
        "processor_pid": gone.pid,
        "processor_start": None,
        "host": host_id(),
        "boot": boot_id(),
        "entries": ["q1"],
        "gate": "tests",
        "pid": gate.pid,
        "start": process_start(gate.pid),
    }
    Path(f"{lander}.gate").write_text(json.dumps(record))
    env = cli.register("alice")
    started = cli.json("start", "G-1", env=env)
    git(repo, "worktree", "remove", "--force", started["path"])  # finish killed half-way
    torn = cli.json("start", "G-2", env=env)
    shutil.rmtree(torn["path"])  # ... or before git forgot the folder (prunable)
    kinds = {f["kind"] for f in json.loads(cli("doctor", "--json").stdout)["findings"]}
    assert {"lander-worktree", "worktree-gone", "prunable"} <= kinds
    try:
        assert 0 == cli("doctor", "--repair").returncode
        assert -signal.SIGTERM == gate.wait(timeout=60)
    finally:
        gate.kill()
        gate.wait()
    assert [] == os.listdir(lander.parent)
    assert 1 == git(repo, "worktree", "list", "--porcelain").count("worktree ")
    assert "" == git(repo, "branch", "--list", "agent/G-*")


def test_doctor_repair_removes_a_worktree_whose_creation_was_killed(repo: Path, cli: Cli) -> None:
    """`git worktree add` killed half-way leaves a locked worktree without a commit or a .git
    file, which `git worktree remove` refuses: --repair unlocks, deletes and prunes it."""
    settings(repo)
    path = repo / ".worktrees" / "ghost" / "H-1"
    git(repo, "worktree", "add", "-q", "--detach", str(path))
    git(repo, "worktree", "lock", "--reason", "initializing", str(path))
    admin = Path(git(path, "rev-parse", "--absolute-git-dir").strip())
    (admin / "HEAD").write_text("0" * 40 + "\n")
    (path / ".git").unlink()
    kinds = {f["kind"] for f in json.loads(cli("doctor", "--json").stdout)["findings"]}
    assert "half-made-worktree" in kinds
    assert 0 == cli("doctor", "--repair").returncode
    assert 1 == git(repo, "worktree", "list", "--porcelain").count("worktree ")
    assert not path.exists()


_DIE_AFTER_MOVE = """
import os, signal, sys
from dibs import Coordinator
from dibs.integrations import queue

original = queue._Processor._move


def move_then_die(self, old, new):
    moved = original(self, old, new)
    if moved:  # the target moved; the kill comes before its land-done is written
        os.kill(os.getpid(), signal.SIGKILL)
    return moved


queue._Processor._move = move_then_die
with Coordinator.open(".", agent=os.environ["DIBS_AGENT"], token=os.environ["DIBS_TOKEN"]) as c:
    queue.land(c, "agent/T1")
"""


def test_a_landing_whose_processor_died_after_moving_main_is_never_handed_out_again(
    repo: Path, cli: Cli
) -> None:
    """A processor SIGKILLed between moving main and writing land-done: T1 is not ready (main
    has it), not stolen, and the next processor records it landed without landing it twice."""
    settings(repo)
    tasks(repo, "T1", "T2")
    alice = cli.register("alice")
    started = cli.json("next", "--start", env=alice)
    commit_in(started["started"]["path"], "t1.txt", "one\n")
    died = subprocess.run(
        [sys.executable, "-c", _DIE_AFTER_MOVE],
        cwd=repo,
        env={**cli.env, **alice},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert -9 == died.returncode, died.stderr
    assert "t1.txt" in git(repo, "ls-tree", "--name-only", "main")  # main moved
    assert "land-done" not in {e["op"] for e in cli.jsonl("log", "-n", "100")}
    assert 0 == cli("evict", "issue:T1", "--reason", "alice is gone").returncode
    bob = cli.register("bob")
    ready = {t["id"] for t in cli.json("ready")["ready"]}
    assert {"T2"} == ready
    assert "T2" == cli.json("next", "--steal", env=bob)["id"]
    # The next processor finds the landing in main and records it, landing nothing again.
    git(repo, "branch", "agent/T2", "main")
    assert 0 == cli("land", "agent/T2", env=bob).returncode
    done = [e for e in cli.jsonl("log", "-n", "200") if e["op"] == "land-done"]
    assert ["T1", "T2"] == sorted(e["value"]["issue"] for e in done)
    assert 1 == git(repo, "log", "--oneline", "main", "--", "t1.txt").count("\n")
