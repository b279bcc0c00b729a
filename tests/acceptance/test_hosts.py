"""The edit guard as each agent host runs it: the installed hook command, host JSON on stdin.

Every test runs the command `dibs hooks install` wrote into the host's own file, through
``sh -c`` in the payload's folder, exactly as Claude Code, Codex, Gemini CLI and Cursor do.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli, git

FILES = {
    "src/app.py": "a = 1\n",
    "src/cfg.py": "".join(f"line {n}\n" for n in range(1, 11)),
    "src/free.py": "free = 1\n",
    "src/twice.py": "x = 1\ny = 2\n" + "pad\n" * 6 + "x = 1\n",
}
ON_PATH = f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"
HOOK_FILES = {
    "claude": (".claude/settings.json", "PreToolUse"),
    "codex": (".codex/hooks.json", "PreToolUse"),
    "gemini": (".gemini/settings.json", "BeforeTool"),
    "cursor": (".cursor/hooks.json", "preToolUse"),
}


def installed_command(repo: Path, host: str, event: str | None = None) -> str:
    """The command of dibs's entry in *host*'s hook file, for *event* (default: pre-tool)."""
    path, default = HOOK_FILES[host]
    data = json.loads((repo / path).read_text())
    [entry] = data["hooks"][event or default]
    return str(entry["hooks"][0]["command"] if "hooks" in entry else entry["command"])


def run_hook(
    command: str,
    payload: dict[str, Any],
    cwd: Path,
    env: dict[str, str] | None = None,
    path: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a hook command as a host does: ``sh -c COMMAND`` with the payload on stdin."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    full["PATH"] = path if path is not None else ON_PATH
    full.update(env or {})
    return subprocess.run(
        ["/bin/sh", "-c", command],
        input=json.dumps(payload),
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def denied(out: subprocess.CompletedProcess[str], host: str = "claude") -> str | None:
    """The reason the hook refused the call with, or None when it let it through."""
    assert 0 == out.returncode, out.stderr
    if not out.stdout.strip():
        return None
    reply = json.loads(out.stdout)
    if host == "cursor":
        return reply["agent_message"] if reply["permission"] == "deny" else None
    if host == "gemini":
        return reply["reason"] if reply.get("decision") == "deny" else None
    specific = reply.get("hookSpecificOutput", {})
    if specific.get("permissionDecision") == "deny":
        assert reply["decision"] == "block"
        assert reply["reason"] == specific["permissionDecisionReason"]
        return str(reply["reason"])
    return None


@pytest.fixture
def work(repo: Path, cli: Cli) -> dict[str, Any]:
    """Files, every host's guard installed, and agents: a2 holds app.py and cfg.py#L1-3."""
    for name, text in FILES.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(text)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "files")
    a1, a2 = cli.register("a1"), cli.register("a2")
    out = cli("claim", "path:src/app.py", "path:src/cfg.py#L1-3", "path:src/twice.py#L9", env=a2)
    assert 0 == out.returncode, out.stderr
    out = cli("hooks", "install", "--claude", "--codex", "--gemini", "--cursor")
    assert 0 == out.returncode, out.stderr
    return {"a1": a1, "a2": a2}


def claude_payload(
    repo: Path, tool: str, tool_input: dict[str, Any], session: str = "s-1", **extra: Any
) -> dict[str, Any]:
    return {
        "session_id": session,
        "transcript_path": str(repo.parent / "t.jsonl"),
        "cwd": str(repo),
        "permission_mode": "default",
        "hook_event_name": "PreToolUse",
        "tool_name": tool,
        "tool_input": tool_input,
        **extra,
    }


def claude_edit(repo: Path, path: str, old: str, **more: Any) -> dict[str, Any]:
    return claude_payload(
        repo, "Edit", {"file_path": path, "old_string": old, "new_string": "z", **more}
    )


# Claude Code ------------------------------------------------------------------------------


def test_claude_refusal_is_a_json_deny_the_model_reads(repo: Path, work: dict[str, Any]) -> None:
    """A held file's Edit is refused with permissionDecision deny and the holder's name."""
    out = run_hook(
        installed_command(repo, "claude"),
        claude_edit(repo, str(repo / "src/app.py"), "a = 1"),
        repo,
        env=work["a1"],
    )
    reason = denied(out)
    assert reason is not None
    assert "src/app.py is held by a2 (path:src/app.py, expires in" in reason


def test_claude_warn_mode_reaches_the_model_as_context(
    repo: Path, work: dict[str, Any], cli: Cli
) -> None:
    """Warn mode lets the edit through and says why in additionalContext (stderr is dropped)."""
    assert 0 == cli("hooks", "install", "--claude", "--mode", "warn").returncode
    out = run_hook(
        installed_command(repo, "claude"),
        claude_edit(repo, str(repo / "src/app.py"), "a = 1"),
        repo,
        env=work["a1"],
    )
    assert denied(out) is None
    context = json.loads(out.stdout)["hookSpecificOutput"]["additionalContext"]
    assert "src/app.py is held by a2" in context


def test_blocked_edit_is_logged_as_a_refuse_event(
    repo: Path, work: dict[str, Any], cli: Cli
) -> None:
    """A refused edit counts in the conflict rate like a refused claim."""
    run_hook(
        installed_command(repo, "claude"),
        claude_edit(repo, "src/app.py", "a = 1"),
        repo,
        env=work["a1"],
    )
    [event] = [e for e in cli.jsonl("log") if e["op"] == "refuse"]
    assert ("a1", "path:src/app.py", "a2", "claude:Edit") == (
        event["agent"],
        event["resource"],
        event["by"],
        event["tool"],
    )


def test_replace_all_is_checked_against_every_occurrence(repo: Path, work: dict[str, Any]) -> None:
    """a2 holds line 9 of twice.py: replacing every ``x = 1`` is refused, the first alone not."""
    command = installed_command(repo, "claude")
    one = claude_edit(repo, str(repo / "src/twice.py"), "x = 1")
    every = claude_edit(repo, str(repo / "src/twice.py"), "x = 1", replace_all=True)
    assert denied(run_hook(command, one, repo, env=work["a1"])) is None
    reason = denied(run_hook(command, every, repo, env=work["a1"]))
    assert reason is not None
    assert "src/twice.py#L9-9 is held by a2" in reason


def test_paths_into_any_worktree_or_the_main_checkout_are_guarded(
    repo: Path, work: dict[str, Any], tmp_path: Path
) -> None:
    """From bob's worktree, alice's file through her worktree, the main checkout, a relative
    path or a symlink is the same held file."""
    bob, alice = tmp_path / "bob", tmp_path / "alice"
    git(repo, "worktree", "add", "-q", str(bob), "-b", "bob")
    git(repo, "worktree", "add", "-q", str(alice), "-b", "alice")
    (tmp_path / "link.py").symlink_to(alice / "src" / "app.py")
    (bob / "alias").symlink_to(repo)
    command = installed_command(repo, "claude")
    for path in (
        str(alice / "src/app.py"),
        str(repo / "src/app.py"),
        "../alice/src/app.py",
        str(tmp_path / "link.py"),
        "alias/src/app.py",
    ):
        payload = claude_edit(bob, path, "a = 1")
        payload["cwd"] = str(bob)
        reason = denied(run_hook(command, payload, bob, env=work["a1"]))
        assert reason is not None, path
        assert "src/app.py is held by a2" in reason


def test_session_started_in_a_subfolder_is_guarded(repo: Path, work: dict[str, Any]) -> None:
    """A relative path from a session whose folder is src/ resolves against that folder."""
    payload = claude_edit(repo, "app.py", "a = 1")
    payload["cwd"] = str(repo / "src")
    assert denied(run_hook(installed_command(repo, "claude"), payload, repo / "src")) is not None


def test_shell_writes_onto_held_files_are_refused(repo: Path, work: dict[str, Any]) -> None:
    """Best effort: >, >>, tee, sed -i, mv, cp, rm (also of a folder) of a held file."""
    command = installed_command(repo, "claude")
    for line in (
        "echo b > src/app.py",
        "echo b >> src/app.py",
        "date | tee -a src/app.py",
        "sed -i s/a/b/ src/app.py",
        "mv src/app.py old.py",
        "cp src/free.py src/app.py",
        "rm -rf src",
    ):
        payload = claude_payload(repo, "Bash", {"command": line})
        assert denied(run_hook(command, payload, repo, env=work["a1"])) is not None, line
    for line in ("cat src/app.py", "echo b > src/free.py", "ls > /dev/null"):
        payload = claude_payload(repo, "Bash", {"command": line})
        assert denied(run_hook(command, payload, repo, env=work["a1"])) is None, line


# Codex --------------------------------------------------------------------------------------


def codex_payload(repo: Path, tool: str, command: str, cwd: Path | None = None) -> dict[str, Any]:
    return {
        "session_id": "codex-session",
        "turn_id": "t1",
        "transcript_path": None,
        "cwd": str(cwd or repo),
        "hook_event_name": "PreToolUse",
        "model": "gpt-test",
        "permission_mode": "default",
        "tool_name": tool,
        "tool_use_id": "call-1",
        "tool_input": {"command": command},
    }


PATCH = """*** Begin Patch
*** Add File: src/new.py
+n = 1
*** Update File: {target}
@@
-{old}
+changed
*** End Patch
"""


def test_codex_patch_touching_a_held_file_is_refused(repo: Path, work: dict[str, Any]) -> None:
    """Every file of an apply_patch counts: one held file refuses the whole patch."""
    command = installed_command(repo, "codex")
    held = PATCH.format(target="src/app.py", old="a = 1")
    free = PATCH.format(target="src/free.py", old="free = 1")
    reason = denied(run_hook(command, codex_payload(repo, "apply_patch", held), repo))
    assert reason is not None
    assert "src/app.py is held by a2" in reason
    assert denied(run_hook(command, codex_payload(repo, "apply_patch", free), repo)) is None


def test_codex_moves_deletes_relative_paths_and_shell_heredocs(
    repo: Path, work: dict[str, Any]
) -> None:
    """Move to / Delete File of a held file, a path relative to a subfolder, and a patch sent
    through the shell are refused; lines outside a range claim are not."""
    command = installed_command(repo, "codex")
    moved = "*** Begin Patch\n*** Update File: src/free.py\n*** Move to: src/app.py\n*** End Patch"
    deleted = "*** Begin Patch\n*** Delete File: app.py\n*** End Patch"
    heredoc = "apply_patch <<'EOF'\n" + PATCH.format(target="src/app.py", old="a = 1") + "EOF\n"
    outside = "*** Begin Patch\n*** Update File: src/cfg.py\n@@\n-line 8\n+LINE 8\n*** End Patch"
    inside = "*** Begin Patch\n*** Update File: src/cfg.py\n@@\n-line 2\n+LINE 2\n*** End Patch"
    cases = [
        (codex_payload(repo, "apply_patch", moved), True),
        (codex_payload(repo, "apply_patch", deleted, cwd=repo / "src"), True),
        (codex_payload(repo, "Bash", heredoc), True),
        (codex_payload(repo, "apply_patch", inside), True),
        (codex_payload(repo, "apply_patch", outside), False),
    ]
    for payload, refused in cases:
        out = run_hook(command, payload, Path(payload["cwd"]))
        assert refused == (denied(out) is not None), payload["tool_input"]


# Gemini CLI -------------------------------------------------------------------------------


def gemini_payload(repo: Path, tool: str, tool_input: dict[str, Any]) -> dict[str, Any]:
    return {
        "session_id": "gemini-session",
        "transcript_path": "",
        "cwd": str(repo),
        "hook_event_name": "BeforeTool",
        "timestamp": "2026-12-01T00:00:00Z",
        "tool_name": tool,
        "tool_input": tool_input,
    }


def test_gemini_write_replace_and_shell_are_guarded(repo: Path, work: dict[str, Any]) -> None:
    """write_file and replace with relative paths, and run_shell_command in dir_path."""
    command = installed_command(repo, "gemini")
    refused = [
        gemini_payload(repo, "write_file", {"file_path": "src/app.py", "content": "x"}),
        gemini_payload(
            repo, "replace", {"file_path": "src/twice.py", "old_string": "x = 1", "new_string": "y"}
        ),
        gemini_payload(
            repo, "run_shell_command", {"command": "echo x > app.py", "dir_path": "src"}
        ),
    ]
    for payload in refused:
        reason = denied(run_hook(command, payload, repo), "gemini")
        assert reason is not None, payload
        assert "held by a2" in reason
    free = gemini_payload(repo, "write_file", {"file_path": "src/free.py", "content": "x"})
    assert denied(run_hook(command, free, repo), "gemini") is None
    read = gemini_payload(repo, "read_file", {"file_path": "src/app.py"})
    assert denied(run_hook(command, read, repo), "gemini") is None


def test_gemini_warn_mode_is_told_by_the_calls_after_tool_hook(
    repo: Path, work: dict[str, Any], cli: Cli
) -> None:
    """Gemini CLI drops what an allowed BeforeTool reply adds: the warning is kept for the
    same call's AfterTool, which says it once (Gemini appends it to the tool's result)."""
    assert 0 == cli("hooks", "install", "--gemini", "--mode", "warn").returncode
    write = gemini_payload(repo, "write_file", {"file_path": "src/app.py", "content": "x"})
    out = run_hook(installed_command(repo, "gemini"), write, repo, env=work["a1"])
    assert denied(out, "gemini") is None
    after = {**write, "hook_event_name": "AfterTool", "tool_response": {"llmContent": "ok"}}
    command = installed_command(repo, "gemini", "AfterTool")
    told = json.loads(run_hook(command, after, repo, env=work["a1"]).stdout)
    assert "src/app.py is held by a2" in told["hookSpecificOutput"]["additionalContext"]
    assert "AfterTool" == told["hookSpecificOutput"]["hookEventName"]
    assert {} == json.loads(run_hook(command, after, repo, env=work["a1"]).stdout)


# Cursor -----------------------------------------------------------------------------------


def test_cursor_refusal_uses_permission_deny(repo: Path, work: dict[str, Any]) -> None:
    """Cursor's preToolUse reply: permission deny with agent and user messages."""
    payload = {
        "conversation_id": "cursor-conv",
        "generation_id": "g1",
        "hook_event_name": "preToolUse",
        "workspace_roots": [str(repo)],
        "tool_name": "Write",
        "tool_input": {"file_path": str(repo / "src/app.py"), "content": "x"},
    }
    out = run_hook(installed_command(repo, "cursor"), payload, repo)
    reply = json.loads(out.stdout)
    assert "deny" == reply["permission"]
    assert "src/app.py is held by a2" in reply["user_message"]
    payload["tool_input"]["file_path"] = str(repo / "src/free.py")
    assert (
        "allow"
        == json.loads(run_hook(installed_command(repo, "cursor"), payload, repo).stdout)[
            "permission"
        ]
    )


def test_cursor_deletes_are_guarded_and_reads_pass(repo: Path, work: dict[str, Any]) -> None:
    """A Delete or a Shell write of a held file is denied; a Read of it is allowed."""
    command = installed_command(repo, "cursor")

    def call(tool: str, tool_input: dict[str, Any]) -> str:
        payload = {
            "conversation_id": "cursor-conv",
            "hook_event_name": "preToolUse",
            "workspace_roots": [str(repo)],
            "tool_name": tool,
            "tool_input": tool_input,
        }
        return str(json.loads(run_hook(command, payload, repo).stdout)["permission"])

    assert "deny" == call("Delete", {"path": "src/app.py"})
    assert "deny" == call("Shell", {"command": "rm src/app.py"})
    assert "allow" == call("Read", {"path": "src/app.py"})


# Failing closed -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["claude", "codex", "gemini", "cursor"])
def test_missing_dibs_refuses_with_how_to_fix(repo: Path, work: dict[str, Any], host: str) -> None:
    """With dibs nowhere to be found the committed hook refuses, saying how to fix it."""
    payload = claude_edit(repo, str(repo / "src/free.py"), "free = 1")
    payload["hook_event_name"] = HOOK_FILES[host][1]
    payload["conversation_id"] = "c"
    out = run_hook(installed_command(repo, host), payload, repo, path="/usr/bin:/bin")
    reason = denied(out, "claude" if host in ("codex", "gemini") else host)
    assert reason is not None
    assert "dibs was not found" in reason
    assert "pip install dibs" in reason


def test_failing_dibs_refuses(repo: Path, work: dict[str, Any], tmp_path: Path) -> None:
    """A dibs that crashes (exit 1) refuses the edit instead of letting it through."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dibs").write_text("#!/bin/sh\necho boom >&2\nexit 1\n")
    (fake / "dibs").chmod(0o755)
    out = run_hook(
        installed_command(repo, "claude"),
        claude_edit(repo, str(repo / "src/free.py"), "free = 1"),
        repo,
        path=f"{fake}:/usr/bin:/bin",
    )
    reason = denied(out)
    assert reason is not None
    assert "dibs failed (exit 1)" in reason


def test_internal_error_refuses_with_how_to_get_unstuck(repo: Path, work: dict[str, Any]) -> None:
    """An unexpected error inside the guard refuses (never exit 1, which hosts let through)."""
    (repo / ".git" / "dibs" / "sessions").write_text("not a folder")
    out = run_hook(
        installed_command(repo, "claude"),
        claude_edit(repo, str(repo / "src/free.py"), "free = 1"),
        repo,
        env={"DIBS_AUTO_CLAIM": "1"},
    )
    reason = denied(out)
    assert reason is not None
    assert "the edit guard could not check this call" in reason
    assert "to get unstuck" in reason


def test_broken_store_settings_refuse_for_every_host(repo: Path, work: dict[str, Any]) -> None:
    """A store dibs cannot open refuses the edit in each host's own protocol."""
    for host in HOOK_FILES:
        payload = claude_payload(repo, "Write", {"file_path": "src/free.py", "content": "x"})
        payload["hook_event_name"] = HOOK_FILES[host][1]
        payload["tool_name"] = "write_file" if host == "gemini" else "Write"
        out = run_hook(
            installed_command(repo, host), payload, repo, env={"DIBS_AUTO_CLAIM": "maybe"}
        )
        assert denied(out, host) is not None, host


# Sessions -----------------------------------------------------------------------------------


SESSION_AGENT = (
    "import json, sys; from dibs.service import Coordinator; "
    "from dibs.integrations.sessions import session_agent; "
    "d = Coordinator.open(sys.argv[1]); found = session_agent(d); "
    "print(json.dumps(found[0] if found else None))"
)


def mcp_side(repo: Path) -> str | None:
    """What an MCP server started by this process (the test is the client) acts as."""
    out = subprocess.run(
        [sys.executable, "-c", SESSION_AGENT, str(repo)],
        capture_output=True,
        text=True,
        check=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("DIBS_")},
    )
    found: str | None = json.loads(out.stdout)
    return found


def test_hook_and_mcp_of_one_client_are_one_agent(
    repo: Path, work: dict[str, Any], cli: Cli
) -> None:
    """The session's auto-claiming edit and the client's MCP server act as the same agent."""
    command = installed_command(repo, "claude")
    write = claude_payload(repo, "Write", {"file_path": "src/new.py", "content": "n"}, "sess-a")
    assert denied(run_hook(command, write, repo, env={"DIBS_AUTO_CLAIM": "1"})) is None
    [claim] = [c for c in cli.json("claims") if c["resource"] == "path:src/new.py"]
    assert claim["agent"] == mcp_side(repo)


def test_mcp_first_then_hook_adopts_its_agent(repo: Path, work: dict[str, Any], cli: Cli) -> None:
    """What the MCP server claimed before any hook ran, the session's edits may change (a
    second session of the same client is another agent)."""
    agent = mcp_side(repo)
    assert agent is not None
    token = json.loads((repo / ".git/dibs/sessions" / f"{agent}.json").read_text())["token"]
    assert (
        0
        == cli(
            "claim", "path:src/mine.py", env={"DIBS_AGENT": agent, "DIBS_TOKEN": token}
        ).returncode
    )
    command = installed_command(repo, "claude")
    write = claude_payload(repo, "Write", {"file_path": "src/mine.py", "content": "n"}, "sess-b")
    assert denied(run_hook(command, write, repo)) is None
    other = claude_payload(repo, "Write", {"file_path": "src/mine.py", "content": "n"}, "sess-c")
    assert denied(run_hook(command, other, repo)) is not None  # another session: another agent
    elsewhere = subprocess.run(
        [
            sys.executable,
            "-c",
            "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)",
            "/bin/sh",
            "-c",
            command,
        ],
        input=json.dumps(write),
        cwd=repo,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}, "PATH": ON_PATH},
        capture_output=True,
        text=True,
        check=False,
    )
    assert denied(elsewhere) is None  # the session id was adopted: any client process of it


def test_subagents_are_kept_apart_and_see_their_parents_claims(
    repo: Path, work: dict[str, Any], cli: Cli
) -> None:
    """Sibling subagents block each other; the parent's claim does not block its subagent."""
    command = installed_command(repo, "claude")
    auto = {"DIBS_AUTO_CLAIM": "1"}

    def write(path: str, sub: str | None) -> dict[str, Any]:
        extra = {"agent_id": sub, "agent_type": "general-purpose"} if sub else {}
        return claude_payload(repo, "Write", {"file_path": path, "content": "n"}, "sess-p", **extra)

    assert denied(run_hook(command, write("src/one.py", "sub-1"), repo, env=auto)) is None
    reason = denied(run_hook(command, write("src/one.py", "sub-2"), repo, env=auto))
    assert reason is not None
    assert "-sub-" in reason
    assert denied(run_hook(command, write("src/parent.py", None), repo, env=auto)) is None
    out = run_hook(command, write("src/parent.py", "sub-2"), repo, env=auto)
    assert denied(out) is None
    assert (
        "held by your parent session"
        in json.loads(out.stdout)["hookSpecificOutput"]["additionalContext"]
    )
    agents = {c["resource"]: c["agent"] for c in cli.json("claims")}
    assert agents["path:src/one.py"].startswith(agents["path:src/parent.py"] + "-sub-")


def test_session_end_and_dead_clients_leave_status(
    repo: Path, work: dict[str, Any], cli: Cli
) -> None:
    """SessionEnd unregisters the session's agent; one whose client exited is swept away."""
    command = installed_command(repo, "claude")
    auto = {"DIBS_AUTO_CLAIM": "1"}
    write = claude_payload(repo, "Write", {"file_path": "src/e.py", "content": "n"}, "sess-e")
    assert denied(run_hook(command, write, repo, env=auto)) is None
    end = {"session_id": "sess-e", "cwd": str(repo), "hook_event_name": "SessionEnd"}
    quiet = installed_command(repo, "claude", "SessionEnd")
    assert 0 == run_hook(quiet, end, repo).returncode
    names = {a["name"] for a in cli.json("status")["agents"]}
    assert {"a1", "a2"} == names
    # A client that exits right after its session's first edit.
    client = (
        "import json, os, subprocess, sys; "
        "subprocess.run(['/bin/sh', '-c', sys.argv[1]], input=sys.argv[2], text=True, "
        "check=True, stdout=subprocess.DEVNULL)"
    )
    write = claude_payload(repo, "Write", {"file_path": "src/d.py", "content": "n"}, "sess-d")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    env.update(auto, PATH=f"{BIN}:{env.get('PATH', '')}")
    subprocess.run(
        [sys.executable, "-c", client, command, json.dumps(write)], cwd=repo, env=env, check=True
    )
    assert any(a["status"] == "dead" for a in cli.json("status")["agents"])
    other = claude_payload(repo, "Write", {"file_path": "src/free.py", "content": "n"}, "sess-x")
    run_hook(command, other, repo)
    names = {a["name"] for a in cli.json("status")["agents"]}
    assert {"a1", "a2"} == names


# Install and status -------------------------------------------------------------------------


def test_hook_files_name_no_machine_paths(repo: Path, work: dict[str, Any]) -> None:
    """Committed hook files run a launcher: no absolute path, no venv of the installer."""
    for path, _event in HOOK_FILES.values():
        text = (repo / path).read_text()
        assert str(BIN) not in text
        assert str(repo) not in text
        assert "guard " in text
    gemini = json.loads((repo / ".gemini/settings.json").read_text())
    assert 30000 == gemini["hooks"]["BeforeTool"][0]["hooks"][0]["timeout"]
    assert 1 == json.loads((repo / ".cursor/hooks.json").read_text())["version"]


def test_user_install_covers_every_folder(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """--user writes each host's user file (HOME, CODEX_HOME); uninstall removes only ours."""
    home = tmp_path / "home"
    (home / ".claude").mkdir(parents=True)
    (home / ".claude" / "settings.json").write_text('{"model": "opus"}')
    env = {"HOME": str(home), "CODEX_HOME": str(home / "codex"), "PATH": ON_PATH}
    out = cli("hooks", "install", "--user", "--claude", "--codex", "--gemini", env=env)
    assert 0 == out.returncode, out.stderr
    settings = json.loads((home / ".claude" / "settings.json").read_text())
    assert "opus" == settings["model"]
    assert "PreToolUse" in settings["hooks"]
    assert (home / "codex" / "hooks.json").exists()
    assert (home / ".gemini" / "settings.json").exists()
    found = cli.json("hooks", "status", env=env)
    assert found["claude"]["user"]["installed"]
    assert not found["claude"]["project"]["installed"]
    assert found["claude"]["reachable"], found["claude"]["problem"]
    assert 0 == cli("hooks", "uninstall", "--user", "--claude", env=env).returncode
    assert {"model": "opus"} == json.loads((home / ".claude" / "settings.json").read_text())


def test_status_says_reachable_and_codex_trust(
    repo: Path, work: dict[str, Any], cli: Cli, tmp_path: Path
) -> None:
    """status runs each installed hook; Codex is trusted once its hash is in config.toml."""
    env = {"CODEX_HOME": str(tmp_path / "codex"), "PATH": ON_PATH}
    found = cli.json("hooks", "status", env=env)
    assert all(found[h]["reachable"] for h in HOOK_FILES)
    assert not found["codex"]["trusted"]
    how = found["codex"]["how_to_trust"]
    assert "/hooks" in how
    config = how.split(":\n", 1)[1]
    (tmp_path / "codex").mkdir()
    (tmp_path / "codex" / "config.toml").write_text(
        config + f'\n[projects."{repo}"]\ntrust_level = "trusted"\n'
    )
    found = cli.json("hooks", "status", env=env)
    assert found["codex"]["trusted"]
    assert found["codex"]["project_trusted"]
    broken = cli.json("hooks", "status", env={**env, "PATH": "/usr/bin:/bin"})
    assert not broken["claude"]["reachable"]
    assert "dibs was not found" in broken["claude"]["problem"]


def test_install_trust_records_what_codex_checks(
    repo: Path, work: dict[str, Any], cli: Cli, tmp_path: Path
) -> None:
    """--trust writes the hook's hash into config.toml, keeping what was there; a reinstall in
    another mode replaces the hash."""
    home = tmp_path / "codex"
    home.mkdir()
    (home / "config.toml").write_text('model = "m"\n')
    env = {"CODEX_HOME": str(home), "PATH": ON_PATH}
    assert 0 == cli("hooks", "install", "--codex", "--trust", env=env).returncode
    assert cli.json("hooks", "status", env=env)["codex"]["trusted"]
    assert 0 == cli("hooks", "install", "--codex", "--trust", "--mode", "warn", env=env).returncode
    found = cli.json("hooks", "status", env=env)["codex"]
    assert found["trusted"]
    text = (home / "config.toml").read_text()
    assert text.startswith('model = "m"\n')
    # One trust entry per hook group: the guard, and the inbox after tools and prompts.
    assert 3 == text.count("[hooks.state.")
    assert 1 == text.count(":pre_tool_use:")


def test_plugin_files_are_the_generated_ones() -> None:
    """The committed Claude Code plugin matches what dibs generates, and the marketplace
    lists it."""
    from dibs.integrations.setup.host_hooks import plugin_files

    root = Path(__file__).resolve().parents[2]
    for path, text in plugin_files().items():
        assert text == (root / "plugin" / path).read_text(), path
    manifest = json.loads((root / "plugin" / ".claude-plugin" / "plugin.json").read_text())
    market = json.loads((root / ".claude-plugin" / "marketplace.json").read_text())
    assert [manifest["name"]] == [p["name"] for p in market["plugins"]]
    assert importlib.metadata.version("dibs") == manifest["version"]
    assert "./plugin" == market["plugins"][0]["source"]
