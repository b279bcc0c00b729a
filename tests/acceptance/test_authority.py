"""Who may do what (issue 14, items 1, 2, 3 and 8): every act on an agent's claims, worktree,
branch, gates or documents is done by a verified identity, on real repositories with the
installed CLI and real processes."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli, git

PERSON = f"{pwd.getpwuid(os.geteuid()).pw_name}@{os.uname().nodename}"


@pytest.fixture
def cli(repo: Path) -> Cli:
    out = Cli(repo)
    assert 0 == out("init").returncode
    git(repo, "add", "dibs.toml")
    git(repo, "commit", "-q", "-m", "dibs settings")
    return out


def start(cli: Cli, issue: str, agent: str) -> tuple[dict[str, Any], dict[str, str]]:
    """`dibs start ISSUE --agent AGENT`; the result and the environment acting as AGENT."""
    out = cli("start", issue, "--agent", agent, "--json")
    assert 0 == out.returncode, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result, {"DIBS_AGENT": agent, "DIBS_TOKEN": result["token"]}


def commit_in(path: str, name: str, text: str) -> None:
    """Commit file *name* in the worktree at *path*."""
    Path(path, name).write_text(text)
    git(path, "add", name)
    git(path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", f"add {name}")


def held(cli: Cli) -> set[tuple[str, str]]:
    return {(c["resource"], c["agent"]) for c in cli.json("claims")}


def ops(cli: Cli, op: str) -> list[dict[str, Any]]:
    return cli.jsonl("log", "--op", op)


# 1. finish, evict, land, doc write, limits, pool give, plan drop ---------------------------


def test_finish_without_a_token_changes_nothing(repo: Path, cli: Cli) -> None:
    """`dibs finish ISSUE` with no identity (or --force) exits 1; worktree, branch, claims stay."""
    started, _ = start(cli, "F-1", "alice")
    for extra in ([], ["--force"]):
        out = cli("finish", "F-1", *extra)
        assert 1 == out.returncode, out.stderr
        assert "no agent given" in out.stderr
    guessed = cli("finish", "F-1", env={"DIBS_AGENT": "alice", "DIBS_TOKEN": "guess"})
    assert 1 == guessed.returncode
    assert Path(started["path"]).is_dir()
    assert "agent/F-1" in git(repo, "branch", "--list", "agent/F-1")
    assert {("issue:F-1", "alice")} == held(cli)
    assert [] == ops(cli, "force-evict")


def test_finish_of_another_agents_worktree_exits_3(repo: Path, cli: Cli) -> None:
    """bob, with his own valid token, cannot finish alice's worktree (exit 3)."""
    started, _ = start(cli, "F-2", "alice")
    bob = cli.register("bob")
    out = cli("finish", "F-2", "--force", env=bob)
    assert 3 == out.returncode, out.stderr
    assert "alice's work" in out.stderr
    assert "--as-operator" in out.stderr
    assert Path(started["path"]).is_dir()
    assert {("issue:F-2", "alice")} == held(cli)


def test_an_operator_finish_keeps_work_and_is_logged_as_the_os_user(repo: Path, cli: Cli) -> None:
    """--as-operator refuses to lose work without --force; with it, the branch stays and the
    evictions name the OS user and host."""
    started, _ = start(cli, "F-3", "alice")
    commit_in(started["path"], "work.txt", "unlanded\n")
    Path(started["path"], "draft.txt").write_text("uncommitted\n")
    refused = cli("finish", "F-3", "--as-operator")
    assert 3 == refused.returncode, refused.stderr
    assert "would lose work" in refused.stderr
    assert Path(started["path"], "draft.txt").exists()
    out = cli("finish", "F-3", "--as-operator", "--force", "--json")
    assert 0 == out.returncode, out.stderr
    done = json.loads(out.stdout)
    assert (False, True) == (done["deleted_branch"], done["kept_branch"])
    assert "agent/F-3" in git(repo, "branch", "--list", "agent/F-3")
    evicted = ops(cli, "force-evict")
    assert [("issue:F-3", "alice", PERSON)] == [
        (e["resource"], e["agent"], e["by"]) for e in evicted
    ]


def test_evict_records_the_os_user_and_rejects_a_typed_name(repo: Path, cli: Cli) -> None:
    """`dibs evict --by NAME` is refused (exit 2, nothing evicted); evict logs user@host."""
    alice = cli.register("alice")
    assert 0 == cli("claim", "issue:E-1", env=alice).returncode
    typed = cli("evict", "issue:E-1", "--reason", "stuck", "--by", "boss")
    assert 2 == typed.returncode
    assert {("issue:E-1", "alice")} == held(cli)
    assert 0 == cli("evict", "issue:E-1", "--reason", "stuck").returncode
    assert [PERSON] == [e["by"] for e in ops(cli, "force-evict")]


def test_land_needs_the_token_of_the_agent_holding_the_issue(repo: Path, cli: Cli) -> None:
    """No identity: exit 1; another agent: exit 3; main stays; a person lands with
    --as-operator, recorded as user@host."""
    started, _ = start(cli, "L-1", "alice")
    commit_in(started["path"], "landed.txt", "done\n")
    before = git(repo, "rev-parse", "main").strip()
    nobody = cli("land", "agent/L-1")
    assert 1 == nobody.returncode, nobody.stdout + nobody.stderr
    named = cli("land", "agent/L-1", env={"DIBS_AGENT": "alice"})
    assert 1 == named.returncode
    bob = cli.register("bob")
    other = cli("land", "agent/L-1", env=bob)
    assert 3 == other.returncode, other.stderr
    assert "alice's work" in other.stderr
    assert before == git(repo, "rev-parse", "main").strip()
    assert [] == cli.json("queue")
    out = cli("land", "agent/L-1", "--as-operator", "--json")
    assert 0 == out.returncode, out.stdout + out.stderr
    entry = json.loads(out.stdout)
    assert ("landed", "alice", PERSON) == (entry["state"], entry["agent"], entry["by"])


def test_doc_write_needs_a_verified_identity(repo: Path, cli: Cli) -> None:
    """No agent, or an agent named without its token, cannot write a document (exit 1)."""
    for env in ({}, {"DIBS_AGENT": "boss"}):
        out = cli("doc", "write", "notes.md", "--if-version", "0", stdin="hi\n", env=env)
        assert 1 == out.returncode, out.stderr
    assert not (repo / "notes.md").exists()
    assert [] == ops(cli, "doc-write")
    alice = cli.register("alice")
    out = cli("doc", "write", "notes.md", "--if-version", "0", stdin="hi\n", env=alice)
    assert 0 == out.returncode, out.stderr
    assert ["alice"] == [e["value"]["by"] for e in ops(cli, "doc-write")]


def test_limit_set_and_update_need_a_verified_identity(repo: Path, cli: Cli) -> None:
    """Reshaping a shared bucket needs an agent's token or --as-operator (logged by)."""
    assert 1 == cli("limit", "set", "api", "--capacity", "5", "--per", "60").returncode
    assert [] == cli.json("limit", "status")
    out = cli("limit", "set", "api", "--capacity", "5", "--per", "60", "--as-operator")
    assert 0 == out.returncode, out.stderr
    update = ("limit", "update", "api", "--remaining", "0", "--reset-at", "4000000000")
    assert 1 == cli(*update, env={"DIBS_AGENT": "boss"}).returncode
    assert 5 == cli.json("limit", "status")[0]["tokens"]
    assert 0 == cli(*update, env=cli.register("alice")).returncode
    assert [PERSON, "alice"] == [e["by"] for e in ops(cli, "limit-set") + ops(cli, "limit-update")]


def test_pool_give_of_another_agents_slot_is_refused(repo: Path, cli: Cli) -> None:
    """bob cannot give back alice's slot (exit 3), nobody can without a token (exit 1)."""
    assert 0 == cli("pool", "init", "1").returncode
    alice = cli.register("alice")
    assert 0 == cli("pool", "take", env=alice).returncode
    slot = repo / ".worktrees" / "pool" / "1"
    (slot / "draft.txt").write_text("alice's work\n")
    assert 1 == cli("pool", "give", "1", "--force").returncode
    assert 3 == cli("pool", "give", "1", "--force", env=cli.register("bob")).returncode
    assert (slot / "draft.txt").exists()
    assert {("worktree:1", "alice")} == held(cli)
    assert 0 == cli("pool", "give", "1", "--force", "--as-operator").returncode
    assert [PERSON] == [e["by"] for e in ops(cli, "force-evict")]


def test_plan_drop_of_another_agents_plan_is_refused(repo: Path, cli: Cli) -> None:
    """Dropping a plan needs its agent's token (or --as-operator): exit 1 without, 3 for bob."""
    alice = cli.register("alice")
    assert 0 == cli("plan", "add", "src/**", env=alice).returncode
    assert 1 == cli("plan", "drop", "--plan-of", "alice").returncode
    assert 3 == cli("plan", "drop", "--plan-of", "alice", env=cli.register("bob")).returncode
    assert ["alice"] == [p["agent"] for p in cli.json("plan", "list")]
    assert 0 == cli("plan", "drop", env=alice).returncode
    assert [] == cli.json("plan", "list")


# 2. manual gates ------------------------------------------------------------------------------


def test_a_gate_cannot_be_passed_by_the_agent_whose_work_it_judges(repo: Path, cli: Cli) -> None:
    """alice cannot pass review on her own branch (exit 3, even claiming to be a person), an
    unverified name cannot (exit 1); bob can, and then alice lands."""
    toml = (repo / "dibs.toml").read_text()
    (repo / "dibs.toml").write_text(toml.replace("[gates]\n", '[gates]\nrequired = ["review"]\n'))
    git(repo, "commit", "-q", "-am", "review required")
    started, alice = start(cli, "G-1", "alice")
    commit_in(started["path"], "g.txt", "g\n")
    inside = Cli(Path(started["path"]))  # the worktree's own identity: alice
    assert 3 == inside("gate", "pass", "G-1", "review").returncode
    assert 3 == cli("gate", "pass", "G-1", "review", env=alice).returncode
    assert 3 == cli("gate", "pass", "G-1", "review", "--as-operator", env=alice).returncode
    boss = cli("gate", "pass", "G-1", "review", env={"DIBS_AGENT": "boss"})
    assert 1 == boss.returncode
    assert [] == ops(cli, "gate")
    assert 3 == cli("land", "agent/G-1", env=alice).returncode
    bob = cli.register("bob")
    assert 0 == cli("gate", "pass", "G-1", "review", env=bob).returncode
    out = cli("land", "agent/G-1", "--json", env=alice)
    assert 0 == out.returncode, out.stdout
    assert ["bob"] == [e["value"]["review"]["by"] for e in ops(cli, "gate")]


# 3. re-registering a name --------------------------------------------------------------------


def test_a_quiet_agent_with_live_leases_is_not_re_registered_without_its_token(
    repo: Path, cli: Cli
) -> None:
    """alice's registration went stale (ttl 1 s) while her lease runs 600 s: her name is not
    taken (exit 3) and nothing is evicted; with her token it is, the lease going as
    ``replaced``."""
    alice = cli.register("alice", "--ttl", "1")
    assert 0 == cli("claim", "issue:R-1", "--ttl", "600", env=alice).returncode
    deadline = time.monotonic() + 30
    while next(a for a in cli.json("agent", "list") if a["name"] == "alice")["status"] != "stale":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    taken = cli("agent", "register", "alice")
    assert 3 == taken.returncode, taken.stderr
    assert "live lease" in taken.stderr
    assert {("issue:R-1", "alice")} == held(cli)
    assert [] == ops(cli, "auto-evict")
    assert 0 == cli("renew", "issue:R-1", env=alice).returncode
    again = cli("agent", "register", "alice", "--token", alice["DIBS_TOKEN"])
    assert 0 == again.returncode, again.stderr
    assert ["replaced"] == [e["reason"] for e in ops(cli, "auto-evict")]


def test_a_replaced_holder_whose_lease_really_expired_gets_exit_4(repo: Path, cli: Cli) -> None:
    """When alice's leases really expired, her name may be registered again; they are logged
    as ``expired``, and alice's old session is told its lease is lost (exit 4)."""
    alice = cli.register("alice", "--ttl", "1")
    assert 0 == cli("claim", "issue:R-2", env=alice).returncode
    deadline = time.monotonic() + 30
    while cli.json("claims"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert 0 == cli("agent", "register", "alice").returncode
    assert ["expired"] == [e["reason"] for e in ops(cli, "auto-evict")]
    renew = cli("renew", "issue:R-2", env=alice)
    assert 4 == renew.returncode, renew.stderr
    assert "lease lost" in renew.stderr


# 8. documents ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [".git/config", ".git/dibs/log/00000000000000000001.jsonl", ".git/hooks/pre-commit"],
)
def test_doc_write_never_writes_into_the_git_dir(repo: Path, cli: Cli, target: str) -> None:
    """A document path under .git (git's config, dibs' own log) is a usage error; unchanged."""
    alice = cli.register("alice")
    path = repo / target
    before = path.read_bytes() if path.exists() else None
    out = cli("doc", "write", target, "--if-version", "0", stdin="[core]\n", env=alice)
    assert 2 == out.returncode, out.stderr
    assert before == (path.read_bytes() if path.exists() else None)
    assert [] == ops(cli, "doc-write")


def test_doc_write_never_writes_a_worktrees_git_dir_or_through_a_symlink_out(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """From a linked worktree: not its gitfile, not the common dir (via ../); a symlink out of
    the tree is not followed; a folder is not a document."""
    started, alice = start(cli, "D-1", "alice")
    inside = Cli(Path(started["path"]))
    gitfile = Path(started["path"], ".git")
    before = gitfile.read_text()
    outside = tmp_path / "outside"
    outside.mkdir()
    (repo / "out").symlink_to(outside)
    (repo / "folder").mkdir()
    attempts = [
        (inside, ".git"),
        (inside, "../../../.git/config"),
        (cli, ".worktrees/alice/D-1/.git"),
        (cli, ".worktrees/alice/D-1/notes.md"),
        (cli, "out/notes.md"),
        (cli, "folder"),
    ]
    for runner, target in attempts:
        out = runner("doc", "write", target, "--if-version", "0", stdin="x\n", env=alice)
        assert 2 == out.returncode, (target, out.stderr)
    assert before == gitfile.read_text()
    assert [] == list(outside.iterdir())
    assert [] == ops(cli, "doc-write")


def test_binary_input_is_refused_before_anything_is_recorded(repo: Path, cli: Cli) -> None:
    """Undecodable or NUL-holding stdin, or a name that is not UTF-8: exit 2, no version
    recorded, no file, no temp file."""
    alice = cli.register("alice")
    env = {**cli.env, **alice}
    for data in (b"\xff\xfe\x00bin", b"text\x00with a NUL"):
        out = subprocess.run(
            [str(BIN / "dibs"), "doc", "write", "notes.txt", "--if-version", "0"],
            cwd=repo,
            env=env,
            input=data,
            capture_output=True,
            check=False,
        )
        assert 2 == out.returncode, out.stderr
        assert b"internal error" not in out.stderr
    undecodable = subprocess.run(
        [os.fsencode(BIN / "dibs"), b"doc", b"write", b"notes-\xff.md", b"--if-version", b"0"],
        cwd=repo,
        env=env,
        input=b"text\n",
        capture_output=True,
        check=False,
    )
    assert 2 == undecodable.returncode, undecodable.stderr
    assert [] == ops(cli, "doc-write")
    assert [] == [p.name for p in repo.iterdir() if p.name.startswith("notes")]


PAUSED_WRITER = """
import os, signal, sys
from dibs.integrations import documents
from dibs.ground.errors import DibsError
from dibs.service import Coordinator

with Coordinator.open(".", agent=os.environ["DIBS_AGENT"], token=os.environ["DIBS_TOKEN"]) as dibs:
    real = dibs.transact
    def paused(decide):
        # Stop right before the write's own transaction: the lock lease lapses meanwhile.
        dibs.transact = real
        os.kill(os.getpid(), signal.SIGSTOP)
        return real(decide)
    dibs.transact = paused
    try:
        print(documents.write(dibs, "notes.txt", "from a\\n", if_version=0)["version"])
    except DibsError as exc:
        print(exc.code)
        sys.exit(exc.exit_code)
"""


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        return f.read().rsplit(")", 1)[1].split()[0] == "T"


def test_a_writer_whose_lock_lapsed_gets_exit_4_and_writes_nothing(
    repo: Path, cli: Cli, procs: list[subprocess.Popen[Any]]
) -> None:
    """Writer A pauses before its write; its lock is evicted and B writes version 1. A resumes:
    exit 4, B's content stays, one version 1 in the log."""
    a = cli.register("writer-a")
    b = cli.register("writer-b")
    writer = subprocess.Popen(
        [sys.executable, "-c", PAUSED_WRITER],
        cwd=repo,
        env={**cli.env, **a},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(writer)
    deadline = time.monotonic() + 30
    while not _stopped(writer.pid):
        assert writer.poll() is None, writer.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert 0 == cli("evict", "lock:doc:notes.txt", "--reason", "writer paused").returncode
    out = cli("doc", "write", "notes.txt", "--if-version", "0", stdin="from b\n", env=b)
    assert 0 == out.returncode, out.stderr
    os.kill(writer.pid, signal.SIGCONT)
    stdout, stderr = writer.communicate(timeout=60)
    assert 4 == writer.returncode, stdout + stderr
    assert "lease-lost" == stdout.strip()
    assert "from b\n" == (repo / "notes.txt").read_text()
    assert [1] == [e["value"]["version"] for e in ops(cli, "doc-write")]
    assert [] == [p.name for p in repo.iterdir() if p.name.endswith(".tmp")]
