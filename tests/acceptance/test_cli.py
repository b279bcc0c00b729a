"""The installed ``dibs`` command, used the way an agent or a person uses it."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from dibs.faces.cli import COMMANDS
from tests.conftest import BIN, Cli, make_repo, store_dir


def log_seq(repo: Path) -> int:
    """The last seq in the store (0 when there is none)."""
    from dibs.store.local import LocalStore

    return LocalStore(store_dir(repo)).read()[0].seq


def test_help_lists_every_command(cli: Cli) -> None:
    """`dibs --help` lists the commands, quickly, with exit 0."""
    out = cli("--help")
    assert 0 == out.returncode
    for name in COMMANDS:
        assert f"  {name} " in out.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(cli: Cli, name: str) -> None:
    """`dibs COMMAND --help` works for every command."""
    out = cli(name, "--help")
    assert 0 == out.returncode, out.stderr
    assert f"usage: dibs {name}" in out.stdout


def test_unknown_command_is_a_usage_error(cli: Cli) -> None:
    """A typo gets exit 2 and a suggestion."""
    out = cli("claimm", "issue:X")
    assert 2 == out.returncode
    assert "did you mean `dibs claim`" in out.stderr


def test_init_sets_up_the_repository(cli: Cli, repo: Path) -> None:
    """init writes dibs.toml, creates the store and excludes the worktree folder; twice is fine."""
    out = cli("init")
    assert 0 == out.returncode, out.stderr
    assert "wrote" in out.stdout
    settings = (repo / "dibs.toml").read_text()
    assert 'target = "main"' in settings
    assert "ttl = 90" in settings
    assert (store_dir(repo) / "lock").exists()
    assert "/.worktrees/" in (repo / ".git" / "info" / "exclude").read_text()
    again = cli("init")
    assert 0 == again.returncode
    assert "kept" in again.stdout
    assert 1 == (repo / ".git" / "info" / "exclude").read_text().count("/.worktrees/")


def test_claim_lifecycle(cli: Cli) -> None:
    """register, claim, see it, renew, release, with human and JSON output."""
    me = cli.register("agent-1")
    out = cli("claim", "issue:ROOSE-158", "path:src/auth/**", "--note", "auth work", env=me)
    assert 0 == out.returncode, out.stderr
    assert "claimed issue:ROOSE-158 (token 1, exclusive, expires in 90 s)" in out.stdout
    listed = cli.json("claims")
    assert ["issue:ROOSE-158", "path:src/auth/**"] == [c["resource"] for c in listed]
    assert {"agent-1"} == {c["agent"] for c in listed}
    assert 0 == cli("renew", "issue:ROOSE-158", "--ttl", "300", env=me).returncode
    assert 300 == cli.json("claims", "--kind", "issue")[0]["ttl"]
    out = cli("release", "issue:ROOSE-158", env=me)
    assert "released issue:ROOSE-158 (token 1)" in out.stdout
    assert 0 == cli("release", "--all", env=me).returncode
    assert [] == cli.json("claims")


def test_conflict_exits_3_naming_holder_and_expiry(cli: Cli) -> None:
    """A held resource is refused with exit 3, saying who holds it and until when."""
    a1, a2 = cli.register("agent-1"), cli.register("agent-2")
    cli("claim", "path:src/**/test_*.py", env=a1)
    out = cli("claim", "path:src/foo/*.py", env=a2)
    assert 3 == out.returncode
    assert "path:src/foo/*.py is held by agent-1 (via path:src/**/test_*.py)" in out.stderr
    # The 90 s ttl, counted down by however long the second call took to start on a busy
    # machine: said in whole seconds, never more than the ttl.
    left = re.search(r"expires in (\d+) s", out.stderr)
    assert left is not None, out.stderr
    assert 0 < int(left.group(1)) <= 90
    assert "hint: wait for it with --wait" in out.stderr
    err = json.loads(cli("claim", "path:src/foo/*.py", "--json", env=a2).stdout)
    assert ("conflict", 3, "agent-1") == (
        err["error"],
        err["exit_code"],
        err["holders"][0]["agent"],
    )


def test_wait_gets_the_resource_when_it_is_released(cli: Cli, repo: Path) -> None:
    """--wait retries until the holder lets go, and the wait is recorded."""
    a1, a2 = cli.register("agent-1"), cli.register("agent-2")
    cli("claim", "lock:deploy", env=a1)
    waiter = subprocess.Popen(
        [str(BIN / "dibs"), "claim", "lock:deploy", "--wait", "20", "--json"],
        cwd=repo,
        env={**cli.env, **a2},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.7)
        assert waiter.poll() is None
        cli("release", "lock:deploy", env=a1)
        out, _ = waiter.communicate(timeout=20)
    finally:
        waiter.kill()
        waiter.communicate()
    assert 0 == waiter.returncode
    assert "agent-2" == json.loads(out)[0]["agent"]
    acquire = [e for e in cli.jsonl("log", "--op", "acquire") if e["agent"] == "agent-2"]
    assert acquire[0]["waited"] > 0.5


def test_wait_times_out_with_exit_3(cli: Cli) -> None:
    """A wait that runs out is refused like a conflict, saying how long it waited."""
    a1, a2 = cli.register("agent-1"), cli.register("agent-2")
    cli("claim", "lock:deploy", env=a1)
    out = cli("claim", "lock:deploy", "--wait", "0.5", env=a2)
    assert 3 == out.returncode
    assert "gave up after waiting" in out.stderr


def test_wrong_token_exits_1_and_changes_nothing(cli: Cli, repo: Path) -> None:
    """Nobody acts as another agent by naming it."""
    cli.register("agent-1")
    seq = log_seq(repo)
    out = cli("claim", "issue:X", env={"DIBS_AGENT": "agent-1", "DIBS_TOKEN": "guess"})
    assert 1 == out.returncode
    assert "wrong or missing session token for agent 'agent-1'" in out.stderr
    missing = cli("claim", "issue:X", env={"DIBS_AGENT": "agent-1"})
    assert 1 == missing.returncode
    assert "no session token" in missing.stderr
    assert seq == log_seq(repo)


def test_lease_lost_exits_4(cli: Cli) -> None:
    """After a force-evict, the holder's renew and release exit 4."""
    me = cli.register("agent-1")
    cli("claim", "issue:X", env=me)
    out = cli("evict", "issue:X", "--reason", "stuck for an hour")
    assert "evicted issue:X from agent-1" in out.stdout
    person = f"{pwd.getpwuid(os.geteuid()).pw_name}@{os.uname().nodename}"
    renew = cli("renew", "issue:X", env=me)
    assert 4 == renew.returncode
    assert f"issue:X (stuck for an hour by {person}" in renew.stderr
    assert 4 == cli("release", "issue:X", env=me).returncode
    event = cli.jsonl("log", "--op", "force-evict")[0]
    assert (person, "stuck for an hour") == (event["by"], event["reason"])


def test_register_eval_prints_exports(cli: Cli) -> None:
    """--eval prints a line a shell can eval."""
    out = cli("agent", "register", "agent-9", "--eval")
    assert out.stdout.startswith("export DIBS_AGENT=agent-9 DIBS_TOKEN=")
    assert 3 == cli("agent", "register", "agent-9").returncode


def test_agent_list_show_unregister(cli: Cli) -> None:
    """Agents are listed with their status and claims; unregister releases everything."""
    me = cli.register("agent-1")
    cli("claim", "issue:X", "lock:y", env=me)
    agents = cli.json("agent", "list")
    assert [("agent-1", "live", 2)] == [(a["name"], a["status"], a["claims"]) for a in agents]
    shown = cli.json("agent", "show", "agent-1")
    assert ["issue:X", "lock:y"] == [c["resource"] for c in shown["holding"]]
    out = cli("agent", "unregister", env=me)
    assert "unregistered agent-1 (released 2 claims)" in out.stdout
    assert [] == cli.json("agent", "list")


def test_status_summary_and_log(cli: Cli) -> None:
    """status has a one-line summary on top; log shows the last events."""
    me = cli.register("agent-1")
    cli("claim", "issue:X", env=me)
    out = cli("status")
    assert out.stdout.startswith("1 agents live; 1 claims")
    assert "issue:X" in out.stdout
    log = cli("log", "-n", "1")
    assert "acquire" in log.stdout
    assert "issue:X" in log.stdout
    assert "token=1" in log.stdout


def test_log_follow_streams_new_events(cli: Cli, repo: Path) -> None:
    """log --follow prints events as other processes append them."""
    me = cli.register("agent-1")
    follower = subprocess.Popen(
        [str(BIN / "dibs"), "log", "-n", "0", "--follow", "--json"],
        cwd=repo,
        env=cli.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(0.5)
        cli("claim", "issue:followed", env=me)
        assert follower.stdout is not None
        event = json.loads(follower.stdout.readline())
    finally:
        follower.kill()
        follower.communicate()
    assert ("acquire", "issue:followed") == (event["op"], event["resource"])


def test_doctor_reports_healthy_store(cli: Cli) -> None:
    """doctor says ok on a healthy store and exits 0."""
    cli("claim", "issue:X", env=cli.register("agent-1"))
    out = cli("doctor")
    assert 0 == out.returncode
    assert "is healthy" in out.stdout


def test_doctor_rebuilds_a_deleted_index(cli: Cli, repo: Path) -> None:
    """Deleting the index loses nothing: doctor --repair rebuilds it from the log."""
    me = cli.register("agent-1")
    for n in range(5):
        cli("claim", f"issue:{n}", env=me)

    def claims() -> list[tuple[str, int]]:
        return [(c["resource"], c["token"]) for c in cli.json("claims")]

    before = claims()
    (store_dir(repo) / "checkpoint").unlink(missing_ok=True)
    assert before == claims()
    assert 0 == cli("doctor", "--repair").returncode
    assert (store_dir(repo) / "checkpoint").exists()
    assert before == claims()


def test_directory_flag_runs_elsewhere(tmp_path: Path) -> None:
    """-C DIR acts on DIR's repository, from anywhere."""
    other = make_repo(tmp_path / "other")
    cli = Cli(tmp_path)
    me = cli.register("agent-1", "-C", str(other))
    out = cli("claim", "issue:X", "-C", str(other), env=me)
    assert 0 == out.returncode, out.stderr
    assert (other / ".git" / "dibs" / "lock").exists()


def test_outside_a_repository_is_a_clear_error(tmp_path: Path) -> None:
    """Running outside git says so and how to fix it."""
    out = Cli(tmp_path)("status")
    assert 1 == out.returncode
    assert "is not inside a git repository" in out.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["claim", ""], 2, "empty resource"),
        (["claim", "ROOSE-158"], 2, "'ROOSE-158' has no kind"),
        (["claim", "ticket:1"], 2, "unknown kind 'ticket'"),
        (["claim", "issue:" + "x" * 300], 2, "the limit is 200"),
        (["claim", "issue:a\x01b"], 2, "control character"),
        (["claim", "path:/etc/passwd"], 2, "is an absolute path"),
        (["claim", "path:../outside"], 2, "contains '..'"),
        (["claim", "path:src/app.py#L9-3"], 2, "empty line range"),
        (["claim", "path:src/*.py#L1-3"], 2, "puts a line range on a pattern"),
        (["claim", "issue:X", "--ttl", "0"], 2, "ttl 0.0 is out of range"),
        (["claim", "issue:X", "--ttl", "1e9"], 2, "is out of range"),
        (["claim", "issue:X", "--note", "n" * 1001], 2, "the limit is 1000"),
        (["claim", "issue:X", "--wait", "-1"], 2, "cannot be negative"),
        (["claim", "issue:ok", "path:.git/HEAD"], 2, "inside .git"),
        (["release", "issue:X", "--all"], 2, "not both"),
        (["evict", "issue:X", "--reason", " "], 2, "the reason is empty"),
        (["agent", "register", "Agent One"], 2, "not a valid agent name"),
        (["agent", "register", "a1", "--pid", "999999999"], 2, "is not running"),
        (["claims", "--kind", "ticket"], 2, "invalid choice"),
        (["log", "-n", "-3"], 2, "cannot be negative"),
    ],
)
def test_bad_input_is_refused_clearly_and_changes_nothing(
    cli: Cli, repo: Path, args: list[str], code: int, message: str
) -> None:
    """Every refusal says what was wrong, exits with the documented code, and writes nothing."""
    me = cli.register("agent-1")
    cli("claim", "issue:held", env=me)
    seq = log_seq(repo)
    out = cli(*args, env=me)
    assert code == out.returncode, (out.stdout, out.stderr)
    assert message in out.stderr
    assert seq == log_seq(repo)
    assert ["issue:held"] == [c["resource"] for c in cli.json("claims")]


def test_json_errors_are_machine_readable(cli: Cli) -> None:
    """With --json, an error is a JSON object on stdout as well as a message on stderr."""
    out = cli("claim", "ticket:1", "--json", env=cli.register("agent-1"))
    data: dict[str, Any] = json.loads(out.stdout)
    assert ("invalid-resource", 2) == (data["error"], data["exit_code"])
    assert "unknown kind" in data["message"]
