"""Guards, as git and Claude Code call them: real commits, hook JSON on stdin."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli, git


@pytest.fixture
def work(repo: Path, cli: Cli) -> dict[str, Any]:
    """A repository with files, the guards installed, and two agents; a2 holds some files."""
    (repo / "src").mkdir()
    (repo / "src" / "app.py").write_text("a = 1\n")
    (repo / "src" / "cfg.py").write_text("".join(f"line {n}\n" for n in range(1, 11)))
    (repo / "src" / "free.py").write_text("free = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "files")
    a1, a2 = cli.register("a1"), cli.register("a2")
    out = cli("claim", "path:src/app.py", "path:src/cfg.py#L1-3", env=a2)
    assert 0 == out.returncode, out.stderr
    assert 0 == cli("hooks", "install").returncode
    git(repo, "add", ".claude/settings.json")
    git(repo, "commit", "-q", "-m", "guards", "--no-verify")
    return {"a1": a1, "a2": a2}


def commit(
    repo: Path, env: dict[str, str], path: str, text: str
) -> subprocess.CompletedProcess[str]:
    (repo / path).write_text(text)
    git(repo, "add", path)
    full = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    return subprocess.run(
        ["git", "commit", "-q", "-m", f"edit {path}"],
        cwd=repo,
        env={**full, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_commit_of_a_held_file_is_refused(repo: Path, work: dict[str, Any]) -> None:
    """a1 cannot commit a file a2 holds; the message names the file, holder and expiry."""
    out = commit(repo, work["a1"], "src/app.py", "a = 2\n")
    assert 0 != out.returncode
    assert "src/app.py is held by a2 (path:src/app.py, expires in" in out.stderr
    assert "a = 1\n" == git(repo, "show", "HEAD:src/app.py")


def test_holder_and_free_files_commit_normally(repo: Path, work: dict[str, Any]) -> None:
    """The holder commits its file; anyone commits a file nobody holds."""
    assert 0 == commit(repo, work["a2"], "src/app.py", "a = 3\n").returncode
    assert 0 == commit(repo, work["a1"], "src/free.py", "free = 2\n").returncode


def test_line_range_claims_refuse_only_overlapping_hunks(repo: Path, work: dict[str, Any]) -> None:
    """a2 holds lines 1-3 of cfg.py: a1 may change line 8 but not line 2."""
    text = (repo / "src" / "cfg.py").read_text()
    assert 0 == commit(repo, work["a1"], "src/cfg.py", text.replace("line 8", "LINE 8")).returncode
    text = (repo / "src" / "cfg.py").read_text()
    out = commit(repo, work["a1"], "src/cfg.py", text.replace("line 2", "LINE 2"))
    assert 0 != out.returncode
    assert "src/cfg.py#L1-3 is held by a2" in out.stderr


def test_unknown_committer_of_a_held_file_is_refused(repo: Path, work: dict[str, Any]) -> None:
    """Without an identity the guard cannot tell who commits, and says so (block mode)."""
    out = commit(repo, {}, "src/app.py", "a = 4\n")
    assert 0 != out.returncode
    assert "dibs cannot tell which agent is committing (no agent is set)" in out.stderr
    wrong = commit(repo, {"DIBS_AGENT": "a2", "DIBS_TOKEN": "guess"}, "src/app.py", "a = 5\n")
    assert "the session token for a2 is wrong" in wrong.stderr


def test_existing_hook_is_kept_and_still_runs(repo: Path, cli: Cli) -> None:
    """Installing chains to the hook that was there; a failing old hook still stops commits."""
    hook = repo / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho old-hook-ran >&2\n[ ! -e STOP ]\n")
    hook.chmod(0o755)
    assert 0 == cli("hooks", "install", "--git").returncode
    out = commit(repo, {}, "README.md", "changed\n")
    assert 0 == out.returncode
    assert "old-hook-ran" in out.stderr
    (repo / "STOP").write_text("")
    assert 0 != commit(repo, {}, "README.md", "changed again\n").returncode
    assert 0 == cli("hooks", "uninstall", "--git").returncode
    assert "old-hook-ran" in hook.read_text()


def test_guard_works_from_every_worktree(repo: Path, work: dict[str, Any], tmp_path: Path) -> None:
    """Worktrees share the hook: a commit in a linked worktree is guarded too."""
    other = tmp_path / "other"
    git(repo, "worktree", "add", "-q", str(other), "-b", "feature")
    out = commit(other, work["a1"], "src/app.py", "a = 9\n")
    assert 0 != out.returncode
    assert "held by a2" in out.stderr


def test_warn_mode_commits_and_says_why(repo: Path, work: dict[str, Any], cli: Cli) -> None:
    """In warn mode the commit goes through and the warning is printed."""
    assert 0 == cli("hooks", "install", "--git", "--mode", "warn").returncode
    out = commit(repo, work["a1"], "src/app.py", "a = 6\n")
    assert 0 == out.returncode
    assert "src/app.py is held by a2" in out.stderr


def hook_input(repo: Path, tool: str, tool_input: dict[str, Any], session: str = "s-1") -> str:
    """A PreToolUse payload exactly as Claude Code sends it."""
    return json.dumps(
        {
            "session_id": session,
            "transcript_path": str(repo.parent / "transcript.jsonl"),
            "cwd": str(repo),
            "permission_mode": "default",
            "hook_event_name": "PreToolUse",
            "tool_name": tool,
            "tool_input": tool_input,
        }
    )


def claude(cli: Cli, payload: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return cli("guard", "claude", *args, env=env, stdin=payload)


def refusal(out: subprocess.CompletedProcess[str]) -> str:
    """The reason a Claude Code hook reply refuses with ("" when it allows the call)."""
    assert 0 == out.returncode, out.stderr
    if not out.stdout.strip():
        return ""
    specific = json.loads(out.stdout).get("hookSpecificOutput", {})
    return str(specific.get("permissionDecisionReason", ""))


def test_claude_edit_of_a_held_file_is_blocked(repo: Path, work: dict[str, Any], cli: Cli) -> None:
    """A JSON deny with a one-line reason, which Claude Code shows the agent as it is."""
    payload = hook_input(
        repo,
        "Edit",
        {"file_path": str(repo / "src/app.py"), "old_string": "a = 1", "new_string": "x"},
    )
    reason = refusal(claude(cli, payload, env=work["a1"]))
    assert 1 == len(reason.splitlines())
    assert "src/app.py is held by a2" in reason


def test_claude_edits_allowed_where_nobody_else_holds(
    repo: Path, work: dict[str, Any], cli: Cli
) -> None:
    """Own files, free files, lines outside a range claim, reads and files outside the repo."""

    def edit(path: str, old: str) -> str:
        return hook_input(
            repo, "Edit", {"file_path": str(repo / path), "old_string": old, "new_string": "x"}
        )

    assert "" == refusal(claude(cli, edit("src/app.py", "a = 1"), env=work["a2"]))
    assert "" == refusal(claude(cli, edit("src/free.py", "free"), env=work["a1"]))
    assert "" == refusal(claude(cli, edit("src/cfg.py", "line 7"), env=work["a1"]))
    assert "" != refusal(claude(cli, edit("src/cfg.py", "line 2"), env=work["a1"]))
    read = hook_input(repo, "Read", {"file_path": str(repo / "src/app.py")})
    assert "" == refusal(claude(cli, read, env=work["a1"]))
    outside = hook_input(repo, "Write", {"file_path": str(repo.parent / "x.txt"), "content": ""})
    assert "" == refusal(claude(cli, outside, env=work["a1"]))


def test_claude_auto_claim_keeps_sessions_apart(repo: Path, work: dict[str, Any], cli: Cli) -> None:
    """With auto-claim, a session's first edit of a free file claims it for that session."""

    def write(session: str) -> str:
        return hook_input(
            repo, "Write", {"file_path": str(repo / "src/new.py"), "content": "x"}, session
        )

    assert "" == refusal(claude(cli, write("session-one"), "--auto-claim"))
    [claim] = [c for c in cli.json("claims") if c["resource"] == "path:src/new.py"]
    assert claim["agent"].startswith("claude-")
    blocked = refusal(claude(cli, write("session-two"), "--auto-claim"))
    assert f"src/new.py is held by {claim['agent']}" in blocked
    assert "" == refusal(claude(cli, write("session-one"), "--auto-claim"))


def test_claude_unknown_agent_and_broken_input(repo: Path, work: dict[str, Any], cli: Cli) -> None:
    """No identity and a held file: blocked, saying why; unreadable input blocks, never passes."""
    payload = json.loads(
        hook_input(repo, "Write", {"file_path": str(repo / "src/app.py"), "content": ""})
    )
    del payload["session_id"]
    assert "cannot tell which agent is editing" in refusal(claude(cli, json.dumps(payload)))
    assert "the edit guard could not check" in refusal(claude(cli, "{not json"))
    assert "" == refusal(claude(cli, "{not json", "--mode", "warn"))


def test_claude_settings_are_merged_never_clobbered(repo: Path, cli: Cli) -> None:
    """Other settings and hooks survive install and uninstall; bad JSON is left alone."""
    settings = repo / ".claude" / "settings.json"
    settings.parent.mkdir()
    theirs = {
        "model": "opus",
        "hooks": {
            "PreToolUse": [{"matcher": "Bash", "hooks": [{"type": "command", "command": "x"}]}]
        },
    }
    settings.write_text(json.dumps(theirs))
    assert 0 == cli("hooks", "install", "--claude").returncode
    assert 0 == cli("hooks", "install", "--claude").returncode  # twice is the same
    data = json.loads(settings.read_text())
    assert "opus" == data["model"]
    matchers = [e["matcher"] for e in data["hooks"]["PreToolUse"]]
    assert ["Bash", "Edit|Write|MultiEdit|NotebookEdit|Bash"] == matchers
    command = data["hooks"]["PreToolUse"][1]["hooks"][0]["command"]
    assert command.endswith(" guard claude --mode block")
    assert str(BIN) not in command
    assert 0 == cli("hooks", "uninstall", "--claude").returncode
    assert theirs == json.loads(settings.read_text())
    settings.write_text("{broken")
    out = cli("hooks", "install", "--claude")
    assert 2 == out.returncode
    assert "is not valid JSON" in out.stderr
    assert "{broken" == settings.read_text()


def test_hooks_status(repo: Path, cli: Cli) -> None:
    """status says what is installed and how."""
    assert not cli.json("hooks", "status")["git"]["installed"]
    cli("hooks", "install", "--mode", "warn")
    found = cli.json("hooks", "status")
    assert ("warn", "warn") == (found["git"]["mode"], found["claude"]["project"]["mode"])


def test_check_reports_unclaimed_and_held_edits(repo: Path, work: dict[str, Any], cli: Cli) -> None:
    """check lists unclaimed edits, and exits 3 for edits of files another agent holds."""
    git(repo, "checkout", "-q", "-b", "agent/a1")
    cli("claim", "path:src/free.py", env=work["a1"])
    (repo / "src" / "free.py").write_text("free = 3\n")
    (repo / "notes.md").write_text("unclaimed\n")
    clean = cli.json("check", env=work["a1"])
    assert ["notes.md"] == clean["unclaimed"]
    assert [] == clean["held_by_others"]
    (repo / "src" / "app.py").write_text("a = 7\n")
    out = cli("check", env=work["a1"])
    assert 3 == out.returncode
    assert "HELD       src/app.py  by a2" in out.stdout
    assert "UNCLAIMED  notes.md" in out.stdout
