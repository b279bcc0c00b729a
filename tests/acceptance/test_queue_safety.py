"""The merge queue never lands over someone else's claim, nor over a person's uncommitted work.

Claims are the queue's last gate (checked with the fence, just before the compare-and-swap),
and the worktree that has the target checked out is carried forward or the landing refused.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.test_queue import agent_with_issue, branch, main_files, settings
from tests.conftest import BIN, Cli, git


def start(cli: Cli, issue: str, agent: str, *files: str) -> Cli:
    """``dibs start ISSUE --agent AGENT [--files ...]``; a CLI running in its worktree."""
    extra = ["--files", *files] if files else []
    out = cli("start", issue, "--agent", agent, *extra, "--json")
    assert 0 == out.returncode, out.stderr
    return Cli(Path(json.loads(out.stdout)["path"]))


def commit_all(cwd: Path, message: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """``git add -A && git commit`` in *cwd*, without dibs' environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    git(cwd, "add", "-A")
    return subprocess.run(
        ["git", "commit", "-q", "-m", message, *flags],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def numbered(count: int, changed: dict[int, str] | None = None) -> str:
    """A file of *count* numbered lines, some replaced by *changed*."""
    lines = {n: f"line {n}" for n in range(1, count + 1)} | (changed or {})
    return "".join(lines[n] + "\n" for n in range(1, count + 1))


def test_a_no_verify_commit_of_a_held_file_is_refused_naming_file_and_holder(
    repo: Path, cli: Cli
) -> None:
    """The issue's reproduction: `dibs check` says held, and the queue refuses too (exit 3)."""
    assert 0 == cli("init").returncode
    assert 0 == cli("hooks", "install", "--git").returncode
    git(repo, "add", "dibs.toml")
    git(repo, "commit", "-q", "-m", "dibs settings", "--no-verify")
    alice = start(cli, "H-1", "alice", "own.txt")
    bob = start(cli, "H-2", "bob", "src/auth/**")
    carol = cli.register("carol")
    assert 0 == cli("claim", "--shared", "path:shared.txt", env=carol).returncode
    work = alice.cwd
    (work / "src" / "auth").mkdir(parents=True)
    (work / "src" / "auth" / "login.py").write_text("stolen = True\n")
    (work / "own.txt").write_text("mine\n")
    (work / "shared.txt").write_text("read by carol\n")
    assert 0 != commit_all(work, "the guard stops this").returncode
    assert 0 == commit_all(work, "around the guard", "--no-verify").returncode
    assert 3 == alice("check").returncode  # dibs check says HELD
    before = git(repo, "rev-parse", "main").strip()
    out = alice("land")
    assert 3 == out.returncode, out.stdout + out.stderr
    assert "src/auth/login.py is held by bob (path:src/auth/**" in out.stdout
    assert "own.txt" not in out.stdout
    assert "shared.txt" not in out.stdout
    assert before == git(repo, "rev-parse", "main").strip()
    entry = alice.json("queue")[0]
    assert (["src/auth/login.py"], ["bob"]) == (
        entry["files"],
        [h["holder"] for h in entry["held"]],
    )
    assert 0 == bob("release", "path:src/auth/**").returncode
    out = alice("land")  # own and shared claims never stand in the way
    assert 0 == out.returncode, out.stdout + out.stderr
    assert {"src/auth/login.py", "own.txt", "shared.txt"} <= main_files(repo)


def test_a_diff_overlapping_a_held_line_range_is_refused_and_one_beside_it_lands(
    repo: Path, cli: Cli
) -> None:
    """Changed lines 15 of 30 meet bob's #L10-20; a change of line 2 lands beside it."""
    (repo / "app.py").write_text(numbered(30))
    git(repo, "add", "app.py")
    settings(repo)
    bob = cli.register("bob")
    assert 0 == cli("claim", "path:app.py#L10-20", env=bob).returncode
    inside = agent_with_issue(cli, "alice", "L-1")
    beside = agent_with_issue(cli, "carol", "L-2")
    branch(repo, "agent/L-1", {"app.py": numbered(30, {15: "changed"})})
    branch(repo, "agent/L-2", {"app.py": numbered(30, {2: "changed"})})
    out = cli("land", "agent/L-1", "--json", env=inside)
    assert 3 == out.returncode, out.stdout + out.stderr
    entry = json.loads(out.stdout)
    assert "app.py#L10-20 is held by bob" in entry["reason"]
    assert [[10, 20]] == [h["lines"] for h in entry["held"]]
    assert numbered(30) == git(repo, "show", "main:app.py")
    out = cli("land", "agent/L-2", env=beside)
    assert 0 == out.returncode, out.stdout + out.stderr
    assert numbered(30, {2: "changed"}) == git(repo, "show", "main:app.py")


def test_deleting_the_first_line_of_a_held_range_is_refused(repo: Path, cli: Cli) -> None:
    """A deletion-only hunk at line 10 of bob's #L10-20 meets the range (git numbers it 9)."""
    (repo / "app.py").write_text(numbered(30))
    git(repo, "add", "app.py")
    settings(repo)
    bob = cli.register("bob")
    assert 0 == cli("claim", "path:app.py#L10-20", env=bob).returncode
    env = agent_with_issue(cli, "alice", "L-3")
    branch(repo, "agent/L-3", {"app.py": numbered(30).replace("line 10\n", "")})
    out = cli("land", "agent/L-3", "--json", env=env)
    assert 3 == out.returncode, out.stdout + out.stderr
    assert "app.py#L10-20 is held by bob" in json.loads(out.stdout)["reason"]
    assert numbered(30) == git(repo, "show", "main:app.py")


def test_a_claim_taken_while_the_gates_run_still_stops_the_landing(repo: Path, cli: Cli) -> None:
    """Claims are the last gate: bob claims the file during the gate run, and main stays."""
    bob = cli.register("bob")
    claim = repo.parent / "bob-claims.sh"
    claim.write_text(
        "#!/bin/sh\n"
        f"cd {repo} && DIBS_AGENT={bob['DIBS_AGENT']} DIBS_TOKEN={bob['DIBS_TOKEN']} "
        f"{BIN / 'dibs'} claim path:late.txt >/dev/null\n"
    )
    claim.chmod(0o755)
    settings(repo, f'tests = "{claim}"')
    env = agent_with_issue(cli, "alice", "G-1")
    branch(repo, "agent/G-1", {"late.txt": "x\n"})
    before = git(repo, "rev-parse", "main").strip()
    out = cli("land", "agent/G-1", "--json", env=env)
    assert 3 == out.returncode, out.stdout + out.stderr
    entry = json.loads(out.stdout)
    assert "late.txt is held by bob" in entry["reason"]
    assert "passed" == cli.json("gates", "G-1")["gates"][0]["state"]  # the gates had passed
    assert before == git(repo, "rev-parse", "main").strip()


def test_in_a_batch_only_the_entry_touching_a_held_file_fails(repo: Path, cli: Cli) -> None:
    """Three entries tested together: the one over bob's claim leaves, the two others land."""
    settings(repo, 'tests = "true"')
    bob = cli.register("bob")
    assert 0 == cli("claim", "path:held/**", env=bob).returncode
    envs = {n: agent_with_issue(cli, f"agent-{n}", f"B-{n}") for n in range(3)}
    branch(repo, "agent/B-0", {"free0.txt": "0\n"})
    branch(repo, "agent/B-1", {"held/x.txt": "1\n"})
    branch(repo, "agent/B-2", {"free2.txt": "2\n"})
    for n in range(3):
        assert 0 == cli("land", f"agent/B-{n}", "--queue-only", env=envs[n]).returncode
    assert 0 == cli("land", "agent/B-0", "--batch", "3", env=envs[0]).returncode
    states = {e["branch"]: e["state"] for e in cli.json("queue")}
    assert {"agent/B-0": "landed", "agent/B-1": "failed", "agent/B-2": "landed"} == states
    assert {"free0.txt", "free2.txt"} <= main_files(repo)
    assert "held/x.txt" not in main_files(repo)


# The target's checkout ---------------------------------------------------------------------


def _staged(repo: Path) -> str:
    return git(repo, "diff", "--cached", "--name-status")


@pytest.mark.parametrize("local", ["unstaged", "staged", "untracked"])
def test_landing_over_uncommitted_work_in_the_main_checkout_is_refused(
    repo: Path, cli: Cli, local: str
) -> None:
    """The main checkout's uncommitted change to a landed file: exit 3 naming it, main stays,
    the change is intact and nothing is staged that would revert anything."""
    settings(repo)
    env = agent_with_issue(cli, "alice", "D-1")
    branch(repo, "agent/D-1", {"README.md": "landed\n", "new.txt": "landed\n"})
    before = git(repo, "rev-parse", "main").strip()
    path = "new.txt" if local == "untracked" else "README.md"
    (repo / path).write_text("a person's work in progress\n")
    if local == "staged":
        git(repo, "add", path)
    status = git(repo, "status", "--porcelain")
    out = cli("land", "agent/D-1", "--json", env=env)
    assert 3 == out.returncode, out.stdout + out.stderr
    entry = json.loads(out.stdout)
    assert [path] == entry["files"]
    assert f"uncommitted changes to {path}" in entry["reason"]
    assert str(repo) in entry["reason"]
    assert before == git(repo, "rev-parse", "main").strip()
    assert "a person's work in progress\n" == (repo / path).read_text()
    assert status == git(repo, "status", "--porcelain")


def test_the_main_checkout_is_carried_forward_around_unrelated_local_changes(
    repo: Path, cli: Cli
) -> None:
    """After a refusal the person commits their edit; the next landing moves the checkout to
    the new tip keeping their other, unrelated changes, and its next commit keeps the landing."""
    (repo / "notes.txt").write_text("notes\n")
    git(repo, "add", "notes.txt")
    settings(repo)
    env = agent_with_issue(cli, "alice", "D-2")
    branch(repo, "agent/D-2", {"README.md": "landed\n"})
    (repo / "README.md").write_text("mine\n")
    (repo / "notes.txt").write_text("notes, edited\n")
    (repo / "scratch.txt").write_text("scratch\n")
    out = cli("land", "agent/D-2", env=env)
    assert 3 == out.returncode, out.stdout + out.stderr
    git(repo, "checkout", "README.md")  # the person gives up their README edit
    git(repo, "add", "scratch.txt")
    out = cli("land", "agent/D-2", env=env)
    assert 0 == out.returncode, out.stdout + out.stderr
    assert "landed\n" == (repo / "README.md").read_text()
    assert "notes, edited\n" == (repo / "notes.txt").read_text()
    assert "A  scratch.txt\n" == _staged(repo).replace("\t", "  ")
    assert " M notes.txt" in git(repo, "status", "--porcelain")
    git(repo, "commit", "-q", "-am", "the person's next commit")
    assert "landed\n" == git(repo, "show", "main:README.md")


def test_python_api_refusal_keeps_the_queue_going(repo: Path, cli: Cli) -> None:
    """Through the Python API: the refused entry fails with its fields, the next one lands."""
    from dibs import Coordinator
    from dibs.integrations import queue

    settings(repo)
    env = agent_with_issue(cli, "alice", "P-1")
    env2 = agent_with_issue(cli, "bob", "P-2")
    branch(repo, "agent/P-1", {"README.md": "landed\n"})
    branch(repo, "agent/P-2", {"other.txt": "other\n"})
    (repo / "README.md").write_text("wip\n")
    assert 0 == cli("land", "agent/P-1", "--queue-only", env=env).returncode
    assert 0 == cli("land", "agent/P-2", "--queue-only", env=env2).returncode
    dibs = Coordinator.open(repo)
    try:
        outcome = queue.process(dibs)
    finally:
        dibs.close()
    assert outcome is not None
    handled = {e["branch"]: e for e in outcome.handled}
    assert "failed" == handled["agent/P-1"]["state"]
    assert ["README.md"] == handled["agent/P-1"]["files"]
    assert "landed" == handled["agent/P-2"]["state"]
    assert "wip\n" == (repo / "README.md").read_text()
    assert (repo / "other.txt").exists()
    assert "" == _staged(repo)


def test_with_a_remote_a_dirty_checkout_here_stays_behind_unharmed(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """The remote is the target: the landing happens there; the local main and its checkout
    (which has an uncommitted edit of the landed file) stay where they were."""
    remote = tmp_path / "remote.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    git(repo, "remote", "add", "origin", str(remote))
    settings(repo, merge='remote = "origin"')
    git(repo, "push", "-q", "origin", "main")
    env = agent_with_issue(cli, "alice", "O-1")
    branch(repo, "agent/O-1", {"README.md": "landed\n"})
    before = git(repo, "rev-parse", "main").strip()
    (repo / "README.md").write_text("wip\n")
    out = cli("land", "agent/O-1", "--json", env=env)
    assert 0 == out.returncode, out.stdout + out.stderr
    assert json.loads(out.stdout)["commit"] == git(remote, "rev-parse", "main").strip()
    assert before == git(repo, "rev-parse", "main").strip()
    assert " M README.md\n" == git(repo, "status", "--porcelain", "--untracked-files=no")
    assert "wip\n" == (repo / "README.md").read_text()


def test_a_checkout_edited_between_the_checks_and_the_swap_puts_the_target_back(
    repo: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instant between the last gate and the swap: the checkout cannot follow, so main is
    moved back and the entry fails; nothing is staged and the person's edit is kept."""
    from dibs import Coordinator
    from dibs.integrations import queue

    settings(repo)
    env = agent_with_issue(cli, "alice", "E-1")
    branch(repo, "agent/E-1", {"README.md": "landed\n"})
    before = git(repo, "rev-parse", "main").strip()
    assert 0 == cli("land", "agent/E-1", "--queue-only", env=env).returncode
    looked = queue._Processor._uncommitted

    def then_a_save(self: Any, checkout: str) -> set[str]:
        found = looked(self, checkout)  # the last gate looks at the checkout; then a save
        (repo / "README.md").write_text("saved just now\n")
        return found

    monkeypatch.setattr(queue._Processor, "_uncommitted", then_a_save)
    dibs = Coordinator.open(repo)
    try:
        outcome = queue.process(dibs)
    finally:
        dibs.close()
    assert outcome is not None
    (entry,) = outcome.handled
    assert ("failed", ["README.md"]) == (entry["state"], entry["files"])
    assert before == git(repo, "rev-parse", "main").strip()
    assert "" == _staged(repo)
    assert "saved just now\n" == (repo / "README.md").read_text()
    reflog = git(repo, "reflog", "-2", "--format=%gs", "main")
    assert "back to" in reflog.splitlines()[0]
