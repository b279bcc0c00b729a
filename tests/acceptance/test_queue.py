"""The merge queue on real repositories: landings, conflicts, gates, fencing, CAS, batches."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli, background, git, until


def settings(repo: Path, gates: str = "", merge: str = "") -> None:
    """Write dibs.toml with *gates* (TOML lines) and commit it on main."""
    (repo / "dibs.toml").write_text(f'[merge]\ntarget = "main"\n{merge}\n[gates]\n{gates}\n')
    git(repo, "add", "dibs.toml")
    git(repo, "commit", "-q", "-m", "settings")


def branch(repo: Path, name: str, files: dict[str, str], base: str = "main") -> str:
    """Make branch *name* from *base* with one commit writing *files*; returns its commit."""
    git(repo, "branch", name, base)
    tree_env = {**os.environ, "GIT_INDEX_FILE": str(repo / ".git" / f"index-{os.getpid()}")}
    subprocess.run(["git", "read-tree", name], cwd=repo, env=tree_env, check=True)
    for path, text in files.items():
        blob = subprocess.run(
            ["git", "hash-object", "-w", "--stdin"],
            cwd=repo,
            input=text,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        subprocess.run(
            ["git", "update-index", "--add", "--cacheinfo", f"100644,{blob},{path}"],
            cwd=repo,
            env=tree_env,
            check=True,
        )
    tree = subprocess.run(
        ["git", "write-tree"], cwd=repo, env=tree_env, capture_output=True, text=True, check=True
    ).stdout.strip()
    os.unlink(tree_env["GIT_INDEX_FILE"])
    commit = git(repo, "commit-tree", tree, "-p", name, "-m", f"work on {name}").strip()
    git(repo, "update-ref", f"refs/heads/{name}", commit)
    return commit


def agent_with_issue(cli: Cli, name: str, issue: str) -> dict[str, str]:
    env = cli.register(name)
    out = cli("claim", f"issue:{issue}", env=env)
    assert 0 == out.returncode, out.stderr
    return env


def main_files(repo: Path) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", "main").split())


def test_a_branch_lands_rebased_and_the_checkout_follows(repo: Path, cli: Cli) -> None:
    """The branch is rebased onto a target that moved, gated, and main moves to that commit."""
    settings(repo, 'tests = "test -f a.txt"')
    env = agent_with_issue(cli, "alice", "A-1")
    branch(repo, "agent/A-1", {"a.txt": "a\n"})
    (repo / "other.txt").write_text("other\n")
    git(repo, "add", "other.txt")
    git(repo, "commit", "-q", "-m", "main moves on")
    out = cli("land", "agent/A-1", "--json", env=env)
    assert 0 == out.returncode, out.stderr
    entry = json.loads(out.stdout)
    assert "landed" == entry["state"]
    assert entry["commit"] == git(repo, "rev-parse", "main").strip()
    assert git(repo, "rev-parse", "main~1").strip() == entry["onto"]  # linear, on the new tip
    assert {"a.txt", "other.txt"} <= main_files(repo)
    assert (repo / "a.txt").exists()  # the main checkout was carried forward
    assert "" == git(repo, "status", "--porcelain")
    gates = cli.json("gates", "A-1")
    assert gates["ready"]
    assert gates["gates"][0]["commit"] == entry["commit"]
    assert not list((repo / ".git" / "dibs-land").iterdir())  # the temporary worktree is gone


def test_the_issue_comes_from_the_branch_name_and_an_agent_needs_its_claim(
    repo: Path, cli: Cli
) -> None:
    settings(repo)
    env = agent_with_issue(cli, "alice", "A-2")
    other = cli.register("bob")
    branch(repo, "agent/A-2", {"x.txt": "x\n"})
    out = cli("land", "agent/A-2", env=other)
    assert 3 == out.returncode, out.stderr
    assert "issue:A-2 is alice's work, not bob's" in out.stderr
    assert 0 == cli("land", "agent/A-2", env=env).returncode
    branch(repo, "feature", {"y.txt": "y\n"})
    out = cli("land", "feature", env=env)
    assert 0 == out.returncode, out.stderr  # alice holds one issue: that one


def test_bad_input_is_refused_and_changes_nothing(repo: Path, cli: Cli) -> None:
    settings(repo)
    env = agent_with_issue(cli, "alice", "A-3")
    before = cli.jsonl("log", "-n", "1000")
    cases = [
        (["land", "main"], 2, "is the target branch itself"),
        (["land", "nope"], 1, "no branch 'nope' here"),
        (["land", "bad..name"], 2, "is not a branch name"),
        (["land", "--batch", "0"], 2, "give 1 to 64"),
        (["queue", "cancel", "q999"], 1, "no queue entry 'q999'"),
        (["gate", "pass", "A-3", "no way"], 2, "is not a gate name"),
    ]
    for args, code, said in cases:
        out = cli(*args, env=env)
        assert code == out.returncode, (args, out.stderr)
        assert said in out.stderr, (args, out.stderr)
    assert before == cli.jsonl("log", "-n", "1000")


def test_a_conflict_fails_the_entry_and_the_queue_goes_on(repo: Path, cli: Cli) -> None:
    """A branch that conflicts with the target leaves with the files named; the next lands."""
    settings(repo)
    env = agent_with_issue(cli, "alice", "C-1")
    env2 = agent_with_issue(cli, "bob", "C-2")
    bad = branch(repo, "agent/C-1", {"README.md": "mine\n"})
    branch(repo, "agent/C-2", {"ok.txt": "ok\n"})
    (repo / "README.md").write_text("theirs\n")
    git(repo, "commit", "-q", "-am", "main edits README")
    assert 0 == cli("land", "agent/C-1", "--queue-only", env=env).returncode
    assert 0 == cli("land", "agent/C-2", "--queue-only", env=env2).returncode
    out = cli("land", "agent/C-1", env=env)  # already queued: sees it through
    assert 3 == out.returncode
    assert "conflicts with main in README.md" in out.stdout
    entries = {e["branch"]: e for e in cli.json("queue")}
    assert ["README.md"] == entries["agent/C-1"]["files"]
    assert "landed" == entries["agent/C-2"]["state"]
    assert bad == git(repo, "rev-parse", "agent/C-1").strip()  # the branch is untouched
    assert "ok.txt" in main_files(repo)


def test_a_failing_gate_names_gate_exit_code_and_output(repo: Path, cli: Cli) -> None:
    settings(repo, 'tests = "if [ -f broken ]; then echo boom; exit 7; fi"\nlint = "true"')
    env = agent_with_issue(cli, "alice", "G-1")
    env2 = agent_with_issue(cli, "bob", "G-2")
    branch(repo, "agent/G-1", {"broken": "x\n"})
    branch(repo, "agent/G-2", {"fine": "x\n"})
    assert 0 == cli("land", "agent/G-1", "--queue-only", env=env).returncode
    out = cli("land", "agent/G-2", "--json", env=env2)
    assert 0 == out.returncode, out.stdout
    failed = {e["branch"]: e for e in cli.json("queue")}["agent/G-1"]
    assert ("failed", "tests", 7) == (failed["state"], failed["gate"], failed["exit"])
    assert "boom" in failed["tail"]
    report = cli("gates", "G-1")
    assert 3 == report.returncode
    assert "not ready: tests" in report.stdout
    assert "broken" not in main_files(repo)
    assert "fine" in main_files(repo)


def test_a_gate_that_hangs_is_killed_at_its_timeout(repo: Path, cli: Cli) -> None:
    settings(repo, 'tests = "sleep 60"', merge="gate_timeout = 1")
    env = agent_with_issue(cli, "alice", "T-1")
    branch(repo, "agent/T-1", {"t": "t\n"})
    out = cli("land", "agent/T-1", "--json", env=env)
    assert 3 == out.returncode
    entry = json.loads(out.stdout)
    assert ("gate tests timed out", "timeout") == (entry["reason"], entry["exit"])


def test_manual_gates_hold_for_the_commit_that_was_reviewed(repo: Path, cli: Cli) -> None:
    settings(repo, 'required = ["review"]')
    env = agent_with_issue(cli, "alice", "R-1")
    branch(repo, "agent/R-1", {"r": "1\n"})
    out = cli("land", "agent/R-1", env=env)
    assert 3 == out.returncode
    assert "gate review has not passed for issue R-1" in out.stdout
    assert 0 == cli("gate", "pass", "R-1", "review", "--note", "lgtm", "--as-operator").returncode
    branch(repo, "agent/R-1-next", {"r": "2\n"}, base="agent/R-1")
    git(repo, "update-ref", "refs/heads/agent/R-1", "agent/R-1-next")  # new commits after review
    out = cli("land", "agent/R-1", env=env)
    assert 3 == out.returncode
    assert "gate review passed on" in out.stdout
    assert 0 == cli("gate", "pass", "R-1", "review", "--as-operator").returncode
    out = cli("land", "agent/R-1", env=env)
    assert 0 == out.returncode, out.stdout
    gates = cli.json("gates", "R-1")
    assert "passed" == gates["gates"][0]["state"]
    assert "manual" == gates["gates"][0]["kind"]


def test_a_token_made_stale_by_eviction_cannot_land(repo: Path, cli: Cli) -> None:
    """The issue claim was evicted after the branch was queued: "lease lost", exit 4."""
    settings(repo)
    env = agent_with_issue(cli, "alice", "S-1")
    branch(repo, "agent/S-1", {"s": "s\n"})
    before = git(repo, "rev-parse", "main").strip()
    assert 0 == cli("land", "agent/S-1", "--queue-only", env=env).returncode
    assert 0 == cli("evict", "issue:S-1", "--reason", "stuck").returncode
    agent_with_issue(cli, "bob", "S-1")  # somebody else has the issue now
    out = cli("land", "agent/S-1", "--as-operator")
    assert 4 == out.returncode, out.stdout + out.stderr
    assert "lease lost" in out.stdout
    assert "now held by bob" in out.stdout
    assert before == git(repo, "rev-parse", "main").strip()


def test_a_target_moved_mid_run_is_never_overwritten(repo: Path, cli: Cli) -> None:
    """Someone commits on main while the gate runs: the CAS refuses, the entry is rebased
    onto the new tip, tested again and lands on top of that commit."""
    script = repo.parent / "move-main.sh"
    script.write_text(
        f"""#!/bin/sh
if [ ! -f {repo.parent}/moved ]; then
  touch {repo.parent}/moved
  cd {repo} && echo more > moved.txt && git add moved.txt && git commit -q -m 'someone else'
fi
"""
    )
    script.chmod(0o755)
    settings(repo, f'tests = "{script}"')
    env = agent_with_issue(cli, "alice", "M-1")
    branch(repo, "agent/M-1", {"m": "m\n"})
    out = cli("land", "agent/M-1", "--json", env=env)
    assert 0 == out.returncode, out.stdout + out.stderr
    entry = json.loads(out.stdout)
    assert 2 == entry["attempts"]
    assert {"m", "moved.txt"} <= main_files(repo)
    assert "someone else" == git(repo, "log", "-1", "--format=%s", "main~1").strip()


def test_merge_strategy_makes_a_merge_commit(repo: Path, cli: Cli) -> None:
    settings(repo, merge='strategy = "merge"')
    env = agent_with_issue(cli, "alice", "MG-1")
    head = branch(repo, "agent/MG-1", {"mg": "1\n"})
    (repo / "side.txt").write_text("side\n")
    git(repo, "add", "side.txt")
    git(repo, "commit", "-q", "-m", "side")
    assert 0 == cli("land", "agent/MG-1", env=env).returncode
    parents = git(repo, "log", "-1", "--format=%P", "main").split()
    assert 2 == len(parents)
    assert head == parents[1]


def test_cancel_takes_a_waiting_entry_out(repo: Path, cli: Cli) -> None:
    settings(repo)
    env = agent_with_issue(cli, "alice", "X-1")
    branch(repo, "agent/X-1", {"x": "x\n"})
    entry = cli.json("land", "agent/X-1", "--queue-only", env=env)
    assert 1 == entry["position"] if "position" in entry else True
    assert 3 == cli("queue", "cancel", entry["id"], env=cli.register("bob")).returncode
    cancelled = cli.json("queue", "cancel", entry["id"], env=env)
    assert "cancelled" == cancelled["state"]
    again = cli("queue", "cancel", entry["id"], "--as-operator")
    assert 3 == again.returncode  # not waiting any more
    assert "x" not in main_files(repo)


def test_batch_bisection_finds_the_one_bad_branch_among_eight(repo: Path, cli: Cli) -> None:
    """Eight entries tested together: the culprit leaves, the seven land, in far fewer than
    eight gate runs, and the result equals landing them one by one."""
    settings(repo, 'tests = "test ! -f bad-5"')
    envs = {}
    for n in range(8):
        envs[n] = agent_with_issue(cli, f"a{n}", f"B-{n}")
        branch(repo, f"agent/B-{n}", {f"{'bad' if n == 5 else 'good'}-{n}": f"{n}\n"})
        assert 0 == cli("land", f"agent/B-{n}", "--queue-only", env=envs[n]).returncode
    out = cli("land", "agent/B-0", "--batch", "8", "--json", env=envs[0])
    assert 0 == out.returncode, out.stdout + out.stderr
    runs = json.loads(out.stdout)["gate_runs"]
    entries = {e["branch"]: e for e in cli.json("queue")}
    states = [entries[f"agent/B-{n}"]["state"] for n in range(8)]
    assert ["landed"] * 5 + ["failed"] + ["landed"] * 2 == states
    assert runs < 8
    order = git(repo, "log", "--reverse", "--format=%s", "main").split("\n")
    landed = [line for line in order if line.startswith("work on")]
    assert [f"work on agent/B-{n}" for n in range(8) if n != 5] == landed
    assert "bad-5" not in main_files(repo)


def test_conflicts_are_predicted_pairwise_before_anyone_lands(repo: Path, cli: Cli) -> None:
    settings(repo)
    cli.register("alice")
    branch(repo, "agent/P-1", {"shared.txt": "one\n"})
    branch(repo, "agent/P-2", {"shared.txt": "two\n"})
    branch(repo, "agent/P-3", {"alone.txt": "three\n"})
    branch(repo, "agent/P-4", {"README.md": "rewritten\n"})
    (repo / "README.md").write_text("main rewrote it too\n")
    git(repo, "commit", "-q", "-am", "main")
    out = cli("conflicts", "--json")
    assert 3 == out.returncode
    report = json.loads(out.stdout)
    pairs = {(c["a"], c["b"]): c["files"] for c in report["conflicts"]}
    assert {
        ("agent/P-1", "agent/P-2"): ["shared.txt"],
        ("agent/P-4", "main"): ["README.md"],
    } == pairs
    assert ["agent/P-1", "agent/P-2", "agent/P-3", "agent/P-4"] == report["branches"]


def test_landing_pushes_to_a_remote_with_a_lease(repo: Path, cli: Cli, tmp_path: Path) -> None:
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    settings(repo, merge='remote = "origin"')
    git(repo, "push", "-q", "origin", "main")
    env = agent_with_issue(cli, "alice", "O-1")
    branch(repo, "agent/O-1", {"o": "o\n"})
    out = cli("land", "agent/O-1", "--json", env=env)
    assert 0 == out.returncode, out.stdout + out.stderr
    commit = json.loads(out.stdout)["commit"]
    assert commit == git(remote, "rev-parse", "main").strip()
    assert commit == git(repo, "rev-parse", "main").strip()


def test_init_offers_union_merge_for_jsonl_logs(repo: Path, cli: Cli) -> None:
    out = cli("init", "--union-merge")
    assert 0 == out.returncode, out.stderr
    assert "*.jsonl merge=union" in (repo / ".gitattributes").read_text()
    assert 0 == cli("init", "--union-merge").returncode
    assert 1 == (repo / ".gitattributes").read_text().count("merge=union")


# Processes --------------------------------------------------------------------------------


def test_several_processes_land_at_once(repo: Path, cli: Cli) -> None:
    """Eight agents run `dibs land` at the same moment: one processes at a time, every entry
    is handled exactly once, and main only ever moves forward, losing no commit."""
    settings(repo, 'tests = "true"')
    envs = [agent_with_issue(cli, f"p{n}", f"L-{n}") for n in range(8)]
    for n in range(8):
        branch(repo, f"agent/L-{n}", {f"l{n}.txt": f"{n}\n"})
    procs = [
        subprocess.Popen(
            [str(BIN / "dibs"), "land", f"agent/L-{n}", "--json"],
            cwd=repo,
            env={**cli.env, **envs[n]},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [0] * 8 == [p.returncode for p in procs], results
    assert {f"l{n}.txt" for n in range(8)} <= main_files(repo)
    events = cli.jsonl("log", "--since", "0")
    done = [e["key"] for e in events if e["op"] == "land-done"]
    assert len(done) == len(set(done)) == 8
    starts = [e for e in events if e["op"] == "land-start"]
    assert len({e["value"]["processor"] for e in starts}) >= 1
    reflog = git(repo, "reflog", "--format=%H", "main").split()[::-1]
    for old, new in itertools.pairwise(reflog):
        assert old == git(repo, "merge-base", old, new).strip()  # only forward


def test_a_land_waiting_behind_a_live_processor_writes_nothing_to_learn_it(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """While one `dibs land` processes the queue (its gate running), another waits for its own
    entry: it reads that the lock is held and makes no agent of its own to try for it (each
    try registered and unregistered one before: two durable writes, every half second)."""
    flag = tmp_path / "gate-started"
    settings(repo, f'tests = "touch {flag}; sleep 4"')
    alice = agent_with_issue(cli, "alice", "W-1")
    bob = agent_with_issue(cli, "bob", "W-2")
    branch(repo, "agent/W-1", {"w1.txt": "1\n"})
    branch(repo, "agent/W-2", {"w2.txt": "2\n"})
    first = background(cli, "land", "agent/W-1", "--json", env=alice)
    try:
        until(flag.exists, "the gate's start", first)
        waiting = cli("land", "agent/W-2", "--wait", "2", "--json", env=bob)
        assert 0 != waiting.returncode
        assert "still" in waiting.stdout + waiting.stderr
        out, err = first.communicate(timeout=120)  # it lands W-2 too: the queue empties
    finally:
        first.kill()
    assert 0 == first.returncode, out + err
    assert {"w1.txt", "w2.txt"} <= main_files(repo)
    landers = [
        e["agent"]
        for e in cli.jsonl("log", "--since", "0")
        if e["op"] == "register" and e["agent"].startswith("lander-")
    ]
    assert 1 == len(landers), landers


def test_a_killed_processor_is_taken_over(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """kill -9 of the processor in the middle of a gate: the next `dibs land` sees the lock
    holder is dead, takes the queue over and lands the entry; nothing is left behind."""
    flag = tmp_path / "gate-started"
    settings(repo, f'tests = "touch {flag}; if [ ! -f {tmp_path}/go ]; then sleep 60; fi"')
    env = agent_with_issue(cli, "alice", "K-1")
    branch(repo, "agent/K-1", {"k": "k\n"})
    first = background(cli, "land", "agent/K-1", env=env, session=True)
    try:
        until(flag.exists, "the gate's start", first)
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    (tmp_path / "go").write_text("")
    out = cli("land", "agent/K-1", "--json", env=env)
    assert 0 == out.returncode, out.stdout + out.stderr
    assert "k" in main_files(repo)
    assert [] == [p.name for p in (repo / ".git" / "dibs-land").iterdir()]
    assert 1 == git(repo, "worktree", "list").count("\n")


@pytest.mark.parametrize("mode", [("--parallel", "1"), ("--batch", "2")])
def test_a_killed_processors_gate_is_stopped_before_the_entry_is_tested_again(
    repo: Path, cli: Cli, tmp_path: Path, mode: tuple[str, str]
) -> None:
    """kill -9 of the processor while its gate runs a child that ticks into a file: the gate
    (a session of its own) survives it; the next `dibs land` stops that gate's whole process
    group, says so, and lands the entry exactly once."""
    from dibs.ground.host import process_alive, process_start

    go, leader, child, marker = (tmp_path / n for n in ("go", "leader", "child", "marker"))
    gate = (
        f"if [ -f {go} ]; then exit 0; fi; echo $$ > {leader}; "
        f"(while :; do echo tick >> {marker}; sleep 0.1; done) & echo $! > {child}; wait"
    )
    settings(repo, f"tests = {json.dumps(gate)}")
    env = agent_with_issue(cli, "alice", "O-1")
    branch(repo, "agent/O-1", {"o": "o\n"})
    first = subprocess.Popen(
        [str(BIN / "dibs"), "land", "agent/O-1", *mode],
        cwd=repo,
        env={**cli.env, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    orphans: list[tuple[int, int | None]] = []
    try:
        deadline = time.monotonic() + 60
        while not (marker.exists() and child.exists() and child.read_text().strip()):
            assert time.monotonic() < deadline, "the gate never started"
            time.sleep(0.05)
        orphans = [(int(p.read_text()), None) for p in (leader, child)]
        orphans = [(pid, process_start(pid)) for pid, _ in orphans]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert all(process_alive(pid, start) for pid, start in orphans)  # SIGKILL spared them
        go.write_text("")
        out = cli("land", "agent/O-1", *mode, "--json", env=env)
        assert 0 == out.returncode, out.stdout + out.stderr
        deadline = time.monotonic() + 60
        while any(process_alive(pid, start) for pid, start in orphans):
            assert time.monotonic() < deadline, "the orphaned gate still runs"
            time.sleep(0.05)
        assert "stopped gate tests of entry " in out.stderr
        assert f"(process group {orphans[0][0]})" in out.stderr
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        for pid, start in orphans:
            if process_alive(pid, start):
                os.kill(pid, signal.SIGKILL)
    assert "landed" == json.loads(out.stdout)["state"]
    assert "o" in main_files(repo)
    done = [e["key"] for e in cli.jsonl("log", "--since", "0") if e["op"] == "land-done"]
    assert 1 == len(done)
    assert [] == [p.name for p in (repo / ".git" / "dibs-land").iterdir()]
    assert 1 == git(repo, "worktree", "list").count("\n")


def test_python_api(repo: Path) -> None:
    from dibs import Coordinator
    from dibs.integrations import queue

    settings(repo, 'tests = "true"')
    dibs = Coordinator.open(repo)
    dibs.register("api")
    dibs.claim(["issue:API-1"])
    branch(repo, "agent/API-1", {"api": "1\n"})
    entry: dict[str, Any] = queue.land(dibs, "agent/API-1")
    assert "landed" == entry["state"]
    assert 1 == entry["gate_runs"]
    assert [] == queue.conflicts(dibs)["conflicts"]
    dibs.close()


@pytest.mark.parametrize("strategy", ["rebase", "merge"])
def test_nothing_new_lands_as_a_no_op(repo: Path, cli: Cli, strategy: str) -> None:
    settings(repo, merge=f'strategy = "{strategy}"')
    env = agent_with_issue(cli, "alice", "N-1")
    git(repo, "branch", "agent/N-1", "main")
    before = git(repo, "rev-parse", "main").strip()
    out = cli("land", "agent/N-1", "--json", env=env)
    assert 0 == out.returncode, out.stdout + out.stderr
    assert before == git(repo, "rev-parse", "main").strip()
