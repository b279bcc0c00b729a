"""start, finish, run, the pool and doctor, on real repositories with real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli, git


@pytest.fixture
def cli(repo: Path) -> Cli:
    out = Cli(repo)
    assert 0 == out("init").returncode
    git(repo, "add", "dibs.toml")
    git(repo, "commit", "-q", "-m", "dibs settings")
    return out


def start(cli: Cli, *args: str) -> dict[str, Any]:
    out = cli("start", *args, "--json")
    assert 0 == out.returncode, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def in_tree(path: str) -> Cli:
    return Cli(Path(path))


def test_start_makes_worktree_branch_and_identity_and_finish_cleans_up(
    repo: Path, cli: Cli
) -> None:
    result = start(cli, "ROOSE-1", "--agent", "alice", "--files", "src/**")
    path = Path(result["path"])
    assert path == repo / ".worktrees" / "alice" / "ROOSE-1"
    assert "agent/ROOSE-1" == git(path, "branch", "--show-current").strip()
    assert {"issue:ROOSE-1", "path:src/**"} == {c["resource"] for c in cli.json("claims")}
    identity = Path(git(path, "rev-parse", "--absolute-git-dir").strip()) / "dibs-agent.json"
    assert 0o600 == identity.stat().st_mode & 0o777
    inside = in_tree(str(path))  # no flags, no environment: the worktree knows its agent
    claimed = inside.json("claim", "path:docs/**")
    assert "alice" == claimed[0]["agent"]
    assert "/.worktrees/" in (repo / ".git" / "info" / "exclude").read_text()
    assert "" == git(repo, "status", "--porcelain")
    status = cli.json("status")
    alice = next(a for a in status["agents"] if a["name"] == "alice")
    assert ("agent/ROOSE-1", "ROOSE-1") == (alice["branch"], alice["issue"])
    out = inside("finish", "--json")
    assert 0 == out.returncode, out.stderr
    done = json.loads(out.stdout)
    assert done["removed_worktree"]
    assert done["deleted_branch"]
    assert not path.exists()
    assert [] == cli.json("claims")
    assert "" == git(repo, "branch", "--list", "agent/ROOSE-1")


def test_start_again_resumes(repo: Path, cli: Cli) -> None:
    first = start(cli, "R-2", "--agent", "bob")
    env = {"DIBS_AGENT": "bob", "DIBS_TOKEN": first["token"]}
    again = cli("start", "R-2", "--json", env=env)
    assert 0 == again.returncode, again.stderr
    second = json.loads(again.stdout)
    assert second["resumed"]
    assert first["path"] == second["path"]
    assert first["claims"][0]["token"] == second["claims"][0]["token"]


def test_refusals_leave_nothing_half_made(repo: Path, cli: Cli) -> None:
    start(cli, "R-3", "--agent", "alice", "--files", "src/**")
    taken = cli("start", "R-4", "--agent", "bob", "--files", "src/app.py")
    assert 3 == taken.returncode
    assert "held by alice" in taken.stderr
    git(repo, "branch", "agent/R-5")
    git(repo, "worktree", "add", "-q", str(repo.parent / "elsewhere"), "agent/R-5")
    busy = cli("start", "R-5", "--agent", "carol")
    assert 3 == busy.returncode
    assert "already checked out in" in busy.stderr
    assert "elsewhere" in busy.stderr
    (repo / ".worktrees" / "dave" / "R-6").mkdir(parents=True)
    exists = cli("start", "R-6", "--agent", "dave")
    assert 3 == exists.returncode
    assert "already exists" in exists.stderr
    holders = {c["agent"] for c in cli.json("claims")}
    assert {"alice"} == holders  # bob, carol and dave hold nothing
    assert "agent/R-6" not in git(repo, "branch")
    branches = {line[2:] for line in git(repo, "branch").splitlines()}
    assert {"main", "agent/R-3", "agent/R-5"} == branches
    bad = cli("start", "no/../good", "--agent", "erin")
    assert 2 == bad.returncode


def test_finish_refuses_to_lose_work(repo: Path, cli: Cli) -> None:
    result = start(cli, "R-7", "--agent", "alice")
    path = Path(result["path"])
    (path / "new.txt").write_text("work\n")
    inside = in_tree(str(path))
    out = inside("finish")
    assert 3 == out.returncode
    assert "1 uncommitted: new.txt" in out.stderr
    git(path, "add", "new.txt")
    git(path, "commit", "-q", "-m", "work")
    out = inside("finish")
    assert 3 == out.returncode
    assert "1 commits not on main" in out.stderr
    assert path.exists()
    assert 2 == len(cli.json("claims")) + 1
    forced = inside("finish", "--force", "--json")
    assert 0 == forced.returncode, forced.stderr
    result = json.loads(forced.stdout)
    assert result["kept_branch"]
    assert not result["deleted_branch"]
    assert "agent/R-7" in git(repo, "branch")  # the commits are still there
    assert not path.exists()


def test_finish_after_landing_deletes_the_rebased_branch(repo: Path, cli: Cli) -> None:
    result = start(cli, "R-8", "--agent", "alice")
    path = Path(result["path"])
    (path / "f.txt").write_text("f\n")
    git(path, "add", "f.txt")
    git(path, "commit", "-q", "-m", "f")
    (repo / "main.txt").write_text("main\n")
    git(repo, "add", "main.txt")
    git(repo, "commit", "-q", "-m", "main moved")  # so the landing rebases
    inside = in_tree(str(path))
    assert 0 == inside("land").returncode
    out = inside("finish", "--json")
    assert 0 == out.returncode, out.stderr
    assert json.loads(out.stdout)["deleted_branch"]


def run_dibs(repo: Path, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    return subprocess.Popen(
        [str(BIN / "dibs"), *args],
        cwd=repo,
        env={**env, **kwargs.pop("env", {})},
        **{"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **kwargs},
    )


def test_run_gives_the_command_its_agent_and_worktree_and_releases(repo: Path, cli: Cli) -> None:
    script = "import os; print(os.environ['DIBS_AGENT'], os.environ['DIBS_WORKTREE'], os.getcwd())"
    proc = run_dibs(
        repo, "run", "--agent", "r1", "--issue", "R-9", "--", sys.executable, "-c", script
    )
    out, err = proc.communicate(timeout=60)
    assert 0 == proc.returncode, err
    agent, worktree, cwd = out.split()
    assert "r1" == agent
    assert worktree == cwd == str(repo / ".worktrees" / "r1" / "R-9")
    assert [] == cli.json("claims")
    assert "r1" not in {a["name"] for a in cli.json("agent", "list")}


def test_run_exits_with_the_command_code(repo: Path, cli: Cli) -> None:
    proc = run_dibs(
        repo, "run", "--files", "x/**", "--", sys.executable, "-c", "raise SystemExit(7)"
    )
    proc.communicate(timeout=60)
    assert 7 == proc.returncode
    assert [] == cli.json("claims")


def test_run_passes_sigint_on_and_releases(repo: Path, cli: Cli, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    script = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *a: sys.exit(42))\n"
        f"pathlib.Path({str(ready)!r}).write_text('')\n"
        "time.sleep(60)\n"
    )
    proc = run_dibs(
        repo, "run", "--agent", "r2", "--files", "y/**", "--", sys.executable, "-c", script
    )
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    assert 1 == len(cli.json("claims"))
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert 42 == proc.returncode
    assert [] == cli.json("claims")


def test_run_killed_with_sigkill_is_evicted_without_waiting(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    script = (
        f"import os, pathlib, time; pathlib.Path({str(ready)!r}).write_text(str(os.getpid()));"
        " time.sleep(60)"
    )
    proc = run_dibs(
        repo,
        "run",
        "--agent",
        "r3",
        "--files",
        "z/**",
        "--",
        sys.executable,
        "-c",
        script,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # dibs run only: its command lives on
        proc.communicate(timeout=60)
        other = cli.register("other")
        out = cli("claim", "path:z/file.txt", env=other)  # the ttl is 90 s: no waiting
        assert 0 == out.returncode, out.stderr
        evictions = [e for e in cli.jsonl("log", "-n", "50") if e["op"] == "auto-evict"]
        assert ["holder-dead"] == [e["reason"] for e in evictions]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
        if ready.exists() and ready.read_text():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(ready.read_text()), signal.SIGKILL)


def test_eight_processes_take_pool_slots_at_once(repo: Path, cli: Cli) -> None:
    assert 0 == cli("pool", "init", "6").returncode
    procs = [run_dibs(repo, "pool", "take", "--agent", f"p{n}", "--json") for n in range(8)]
    results = [p.communicate(timeout=120) for p in procs]
    taken = [
        json.loads(out)["slot"]
        for (out, _), p in zip(results, procs, strict=True)
        if p.returncode == 0
    ]
    refused = [p for p in procs if p.returncode == 3]
    assert len(taken) == len(set(taken)) == 6
    assert 2 == len(refused)
    assert all(
        "every one of 6 pool slots is busy" in err
        for (_, err), p in zip(results, procs, strict=True)
        if p.returncode == 3
    )
    status = cli.json("pool", "status")
    assert 6 == sum(1 for s in status if s["agent"])


def test_pool_take_waits_for_a_slot_and_give_resets_it(repo: Path, cli: Cli) -> None:
    assert 0 == cli("pool", "init", "1").returncode
    first = cli.json("pool", "take", "--agent", "w1")
    path = Path(first["path"])
    assert "pool/1/w1" == git(path, "branch", "--show-current").strip()
    waiter = run_dibs(repo, "pool", "take", "--agent", "w2", "--wait", "60", "--json")
    time.sleep(0.3)
    inside = in_tree(str(path))
    assert 0 == inside("pool", "give").returncode  # the identity file names w1
    out, err = waiter.communicate(timeout=60)
    assert 0 == waiter.returncode, err
    second = json.loads(out)
    assert ("1", "w2") == (second["slot"], second["agent"])
    assert second["waited"] > 0
    (path / "dirty.txt").write_text("x\n")
    give = cli("pool", "give", "1", env={"DIBS_AGENT": "w2", "DIBS_TOKEN": second["token"]})
    assert 3 == give.returncode
    assert "would lose work" in give.stderr


def test_doctor_finds_and_repairs_drift(repo: Path, cli: Cli) -> None:
    gone = start(cli, "D-1", "--agent", "alice")
    git(repo, "worktree", "remove", "--force", gone["path"])  # behind dibs's back
    git(repo, "worktree", "add", "-q", "--detach", str(repo / ".worktrees" / "stray"))
    pruned = repo.parent / "pruned"
    git(repo, "worktree", "add", "-q", "--detach", str(pruned))
    import shutil

    shutil.rmtree(pruned)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = cli.register("ghost", "--pid", str(sleeper.pid))
        assert 0 == cli("claim", "issue:D-2", env=dead).returncode
    finally:
        sleeper.kill()
        sleeper.wait()
    report = cli("doctor", "--json")
    assert 1 == report.returncode
    kinds = sorted(f["kind"] for f in json.loads(report.stdout)["findings"])
    assert ["dead-agent", "orphan-worktree", "prunable", "worktree-gone"] == kinds
    repaired = cli("doctor", "--repair", "--json")
    assert 0 == repaired.returncode, repaired.stdout
    assert [] == cli.json("claims")
    assert 0 == cli("doctor").returncode
    repairs = [
        e
        for e in cli.jsonl("log", "-n", "50")
        if e.get("op") == "force-evict" and e["reason"].startswith("doctor --repair: ")
    ]
    # A person's repair: logged as the OS user and host, never as a name an agent could hold.
    assert [] == [e["by"] for e in repairs if "@" not in e["by"]]
    assert {"worktree gone", "holder-dead"} == {
        e["reason"].removeprefix("doctor --repair: ") for e in repairs
    }
    assert "stray" not in git(repo, "worktree", "list")


def test_python_api(repo: Path, cli: Cli) -> None:
    from dibs import Coordinator
    from dibs.integrations import worktrees

    with Coordinator.open(repo) as dibs:
        started = worktrees.start(dibs, "API-1", agent="api")
        assert os.path.isdir(started["path"])
        assert [started["path"]] == [
            r["path"] for r in worktrees.listing(dibs) if r["issue"] == "API-1"
        ]
        finished = worktrees.finish(dibs, "API-1")
        assert finished["removed_worktree"]
