"""The guard as the real agent hosts run it: Claude Code, Codex and Gemini CLI, installed from
npm (`make hosts`), each driven through one scripted turn by a model server on loopback
(tests/hosts/). Each test asserts on the file on disk, on dibs's claims, and on what the
model was told. See docs/howto/host-tests.md."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli, git
from tests.hosts import clients
from tests.hosts.model_server import Call, ModelServer, Observe, Say, Step

#: The per-host adapters (``dibs guard codex|gemini``, ``hooks install --codex|--gemini|
#: --user``, JSON deny answers, one session identity across hook and MCP) come from branch h17.

HELD = "other"
#: A real client's turn is a few seconds, but on a loaded machine (CI, many agents on two
#: cores) starting node, the client and its dibs hooks can take minutes.
pytestmark = pytest.mark.timeout(600)


#: Tests that run on both stores take the project as ``STORES`` (indirect): on PostgreSQL
#: every hook call of the client goes through the CLI helper to the database.
STORES = pytest.mark.parametrize(
    "project", ["local", pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)


@pytest.fixture
def project(repo: Path, cli: Cli, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A repository with dibs set up, guard.auto_claim on, and src/held.py held by `other`;
    the local store, or a PostgreSQL one when the test asks for it (`STORES`)."""
    (repo / "src").mkdir()
    (repo / "src" / "held.py").write_text("held = 1\n")
    (repo / "src" / "free.py").write_text("free = 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "files")
    shared = getattr(request, "param", "local") == "postgresql"
    out = cli(
        "init", *(["--store", request.getfixturevalue("pg_empty_database")] if shared else [])
    )
    assert 0 == out.returncode, out.stderr
    toml = repo / "dibs.toml"
    toml.write_text(toml.read_text().replace("auto_claim = false", "auto_claim = true", 1))
    other = cli.register(HELD, "--ttl", "3600")
    out = cli("claim", "path:src/held.py", "--ttl", "3600", env=other)
    assert 0 == out.returncode, out.stderr
    return {"other": other}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def claims(cli: Cli) -> dict[str, str]:
    """Who holds each claimed resource."""
    return {c["resource"]: c["agent"] for c in cli.json("claims")}


class Snapshot:
    """An `Observe` step that records dibs's claims mid-session (while the client runs: a
    session agent's claims go when its client does)."""

    def __init__(self, cli: Cli):
        self.cli = cli
        self.claims: dict[str, str] | None = None

    def step(self) -> Observe:
        return Observe(self.take)

    def take(self) -> None:
        self.claims = claims(self.cli)


def said(server: ModelServer) -> str:
    return "\n".join(server.tool_results())


def ran(out: Any) -> str:
    return f"exit {out.returncode}\nstdout: {out.stdout[-3000:]}\nstderr: {out.stderr[-3000:]}"


# Claude Code --------------------------------------------------------------------------------


def claude_edit(path: Path, old: str, new: str) -> list[Step]:
    """Read then Edit (Claude Code refuses to edit a file the session has not read)."""
    return [
        Call("Read", {"file_path": str(path)}),
        Call("Edit", {"file_path": str(path), "old_string": old, "new_string": new}),
    ]


@STORES
def test_claude_code_edit_of_a_held_file_is_blocked_and_the_model_is_told_why(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """The guard as installed today (`dibs hooks install --claude`) stops the real Claude
    Code from editing a file another agent holds: the file is unchanged and the tool result
    the model reads names the holder."""
    assert 0 == cli("hooks", "install", "--claude").returncode
    held = repo / "src" / "held.py"
    with ModelServer([*claude_edit(held, "held = 1", "held = 2"), Say("stopped")]) as server:
        out = clients.claude(repo, home, server.url)
        assert 0 == out.returncode, ran(out)
        assert "held = 1\n" == held.read_text()
        assert "src/held.py is held by other" in said(server)
        assert not server.left
    assert {"path:src/held.py": HELD} == claims(cli)


def test_claude_code_first_edit_of_a_free_file_claims_it_for_the_session(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """With guard.auto_claim, the session's first edit of a free file goes through and claims
    the file for the session's own agent (`claude-…`), which other agents then cannot edit."""
    assert 0 == cli("hooks", "install", "--claude").returncode
    free = repo / "src" / "free.py"
    seen = Snapshot(cli)

    def other_is_refused() -> None:
        refused = cli("claim", "path:src/free.py", env=project["other"])
        assert 3 == refused.returncode, refused.stderr

    script = [*claude_edit(free, "free = 1", "free = 2"), seen.step(), Observe(other_is_refused)]
    with ModelServer([*script, Say("done")]) as server:
        out = clients.claude(repo, home, server.url)
        assert 0 == out.returncode, ran(out)
    assert "free = 2\n" == free.read_text()
    assert seen.claims is not None
    assert seen.claims["path:src/free.py"].startswith("claude-")


@STORES
def test_claude_code_sessions_racing_for_one_file_exactly_one_wins(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """Four Claude Code sessions write the same new file at the same moment: the first edit
    claims it and the others are refused, so the file holds exactly one session's text."""
    assert 0 == cli("hooks", "install", "--claude").returncode
    race = repo / "src" / "race.py"
    # All four sessions are given their Write at once (none can see another's file yet).
    together = threading.Barrier(4, timeout=120)

    def script(n: int) -> list[Step]:
        write = Call("Write", {"file_path": str(race), "content": f"by = {n}\n"})
        return [Call("Glob", {"pattern": "src/*"}), Observe(together.wait), write, Say("ok")]

    servers = [ModelServer(script(n)) for n in range(4)]
    try:
        with ThreadPoolExecutor(4) as pool:
            runs = list(
                pool.map(lambda n: clients.claude(repo, home / str(n), servers[n].url), range(4))
            )
        for out in runs:
            assert 0 == out.returncode, ran(out)
        results = [server.tool_results()[-1] for server in servers]
    finally:
        for server in servers:
            server.close()
    won = [n for n, result in enumerate(results) if "created successfully" in result]
    assert 1 == len(won), results
    assert f"by = {won[0]}\n" == race.read_text()
    refused = [result for n, result in enumerate(results) if n != won[0]]
    assert all("held by" in r or "not been read" in r for r in refused), refused
    assert any("src/race.py is held by claude-" in r for r in refused), refused


def test_claude_code_without_dibs_on_path_refuses_edits_and_says_how_to_fix_it(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """A teammate's machine without dibs: the committed hook cannot run dibs, and instead of
    letting every edit through (Claude Code treats "command not found" as go ahead) it
    refuses, telling the model that dibs is missing."""
    assert 0 == cli("hooks", "install", "--claude").returncode
    free = repo / "src" / "free.py"
    with ModelServer([*claude_edit(free, "free = 1", "free = 2"), Say("stopped")]) as server:
        out = clients.claude(repo, home, server.url, dibs=False)
        assert 0 == out.returncode, ran(out)
        told = said(server)
    assert "free = 1\n" == free.read_text()
    assert "dibs" in told.split("1\tfree = 1", 1)[-1]


def test_claude_code_deny_reaches_the_model_as_a_clean_reason_and_is_logged(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """A blocked edit comes back to the model as the guard's reason (the JSON deny answer),
    not as a "hook error" naming the command line, and the refusal is in dibs's log."""
    assert 0 == cli("hooks", "install", "--claude").returncode
    held = repo / "src" / "held.py"
    with ModelServer([*claude_edit(held, "held = 1", "held = 2"), Say("stopped")]) as server:
        out = clients.claude(repo, home, server.url)
        assert 0 == out.returncode, ran(out)
        told = said(server)
    assert "held = 1\n" == held.read_text()
    assert "src/held.py is held by other" in told
    assert "hook error" not in told
    assert str(BIN) not in told
    assert any(e["op"] == "refuse" for e in cli.jsonl("log"))


def test_claude_code_warn_mode_tells_the_model(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """In warn mode the edit goes through and the warning reaches the model (Claude Code
    drops a hook's stderr on exit 0; additionalContext arrives)."""
    assert 0 == cli("hooks", "install", "--claude", "--mode", "warn").returncode
    held = repo / "src" / "held.py"
    with ModelServer([*claude_edit(held, "held = 1", "held = 2"), Say("done")]) as server:
        out = clients.claude(repo, home, server.url)
        assert 0 == out.returncode, ran(out)
        told = server.told()
    assert "held = 2\n" == held.read_text()
    assert "src/held.py is held by other" in told


def test_claude_code_hears_of_an_eviction_on_its_next_tool_call(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """A person evicts the session's claim mid-session: the next tool call's PostToolUse hook
    puts the eviction (resource, who, why) into what the real Claude Code sends the model."""
    assert 0 == cli("hooks", "install", "--claude").returncode
    free = repo / "src" / "free.py"

    def evict() -> None:
        out = cli("evict", "path:src/free.py", "--reason", "hotfix needs it")
        assert 0 == out.returncode, out.stderr

    script = [
        *claude_edit(free, "free = 1", "free = 2"),
        Observe(evict),
        Call("Read", {"file_path": str(free)}),
        Say("done"),
    ]
    with ModelServer(script) as server:
        out = clients.claude(repo, home, server.url)
        assert 0 == out.returncode, ran(out)
        told = server.told()
    assert "was evicted (hotfix needs it, by " in told
    assert "path:src/free.py" in told


def test_claude_code_started_in_a_subfolder_is_guarded_by_the_user_hook(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """Claude Code reads project hooks only from the folder it starts in; the user-level hook
    (`dibs hooks install --claude --user`) guards a session started in src/ too."""
    out = cli("hooks", "install", "--claude", "--user", env={"HOME": str(home)})
    assert 0 == out.returncode, out.stderr
    held = repo / "src" / "held.py"
    with ModelServer([*claude_edit(held, "held = 1", "held = 2"), Say("stopped")]) as server:
        out = clients.claude(repo / "src", home, server.url)
        assert 0 == out.returncode, ran(out)
        assert "src/held.py is held by other" in said(server)
    assert "held = 1\n" == held.read_text()


@STORES
def test_claude_code_mcp_claim_and_edit_act_as_one_agent(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path, tmp_path: Path
) -> None:
    """In one session the model claims a file through the dibs MCP server and then edits it:
    the hook lets the edit through (the MCP tools and the hook are one agent), the claim is
    the session's, and nobody else may take it."""
    assert 0 == cli("hooks", "install", "--claude").returncode
    config = tmp_path / "mcp.json"
    config.write_text(cli("mcp", "--print-config").stdout)
    free = repo / "src" / "free.py"
    seen = Snapshot(cli)
    script = [
        Call("mcp__dibs__claim", {"resources": ["path:src/free.py"]}),
        *claude_edit(free, "free = 1", "free = 2"),
        seen.step(),
        Say("done"),
    ]
    with ModelServer(script) as server:
        out = clients.claude(
            repo,
            home,
            server.url,
            "--mcp-config",
            str(config),
            "--allowedTools",
            "mcp__dibs",
        )
        assert 0 == out.returncode, ran(out)
        told = said(server)
        assert "held by" not in told, told
        assert "path:src/free.py" in told  # the claim's result
    assert "free = 2\n" == free.read_text()
    assert seen.claims is not None
    mine = {resource: agent for resource, agent in seen.claims.items() if agent != HELD}
    assert ["path:src/free.py"] == list(mine)  # claimed once, by the session's one agent


# Codex --------------------------------------------------------------------------------------


def codex_setup(
    repo: Path, cli: Cli, home: Path, server: ModelServer, *, mode: str = "block"
) -> None:
    """Codex with the guard in the project's .codex/hooks.json, project and hook trusted."""
    folder = clients.codex_home(home, server.url, [repo])
    env = {"HOME": str(home), "CODEX_HOME": str(folder)}
    out = cli("hooks", "install", "--codex", "--mode", mode, env=env)
    assert 0 == out.returncode, out.stderr
    hooks = repo / ".codex" / "hooks.json"
    assert hooks.exists()
    clients.trust_codex_hooks(folder, hooks)


def patch(*sections: str) -> str:
    return "*** Begin Patch\n" + "".join(sections) + "*** End Patch\n"


@STORES
def test_codex_patch_touching_a_held_file_is_blocked_and_the_model_is_told_why(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """One apply_patch that changes a free file and a held one (paths relative to cwd, as
    the model writes them) is refused as a whole: neither file changes, the model reads why."""
    text = patch(
        "*** Update File: src/free.py\n@@\n-free = 1\n+free = 2\n",
        "*** Update File: src/held.py\n@@\n-held = 1\n+held = 2\n",
    )
    with ModelServer([Call("apply_patch", text), Say("stopped")]) as server:
        codex_setup(repo, cli, home, server)
        out = clients.codex(repo, home)
        assert 0 == out.returncode, ran(out)
        told = said(server)
    assert "held = 1\n" == (repo / "src" / "held.py").read_text()
    assert "free = 1\n" == (repo / "src" / "free.py").read_text()
    assert "src/held.py is held by other" in told


def test_codex_patch_adding_a_free_file_claims_it_for_the_session(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """apply_patch adding a new file goes through and claims it for the session's agent."""
    text = patch("*** Add File: src/new.py\n+new = 1\n")
    seen = Snapshot(cli)
    with ModelServer([Call("apply_patch", text), seen.step(), Say("done")]) as server:
        codex_setup(repo, cli, home, server)
        out = clients.codex(repo, home)
        assert 0 == out.returncode, ran(out)
        assert "held by" not in said(server)
    assert "new = 1\n" == (repo / "src" / "new.py").read_text()
    assert seen.claims is not None
    assert seen.claims["path:src/new.py"].startswith("codex-")


def test_codex_warn_mode_tells_the_model(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """In warn mode a patch of a held file goes through and the warning (additionalContext
    of PreToolUse) reaches the model."""
    text = patch("*** Update File: src/held.py\n@@\n-held = 1\n+held = 2\n")
    with ModelServer([Call("apply_patch", text), Say("done")]) as server:
        codex_setup(repo, cli, home, server, mode="warn")
        out = clients.codex(repo, home)
        assert 0 == out.returncode, ran(out)
        told = server.told()
    assert "held = 2\n" == (repo / "src" / "held.py").read_text()
    assert "src/held.py is held by other" in told


def test_codex_runs_a_hook_only_once_it_is_trusted(repo: Path, home: Path, tmp_path: Path) -> None:
    """The harness's own check of Codex's hook trust: a hook in hooks.json is skipped until
    config.toml trusts it (`trust_codex_hooks` writes what Codex's /hooks screen would)."""
    seen = tmp_path / "payload.json"
    hook = tmp_path / "deny.sh"
    hook.write_text(f"#!/bin/sh\ncat > {seen}\necho 'denied by the test hook' >&2\nexit 2\n")
    hook.chmod(0o755)
    (repo / "a.txt").write_text("a\n")
    text = patch("*** Update File: a.txt\n@@\n-a\n+b\n")
    entry = {"matcher": "apply_patch", "hooks": [{"type": "command", "command": str(hook)}]}
    with ModelServer([Call("apply_patch", text), Say("done")]) as server:
        folder = clients.codex_home(home, server.url, [repo])
        hooks = folder / "hooks.json"
        hooks.write_text(json.dumps({"hooks": {"PreToolUse": [entry]}}))
        out = clients.codex(repo, home)
        assert 0 == out.returncode, ran(out)
    assert not seen.exists()
    assert "b\n" == (repo / "a.txt").read_text()
    (repo / "a.txt").write_text("a\n")
    with ModelServer([Call("apply_patch", text), Say("done")]) as server:
        clients.codex_home(home, server.url, [repo])
        assert [f"{hooks}:pre_tool_use:0:0"] == clients.trust_codex_hooks(folder, hooks)
        out = clients.codex(repo, home)
        assert 0 == out.returncode, ran(out)
        assert "denied by the test hook" in said(server)
    assert "a\n" == (repo / "a.txt").read_text()
    payload = json.loads(seen.read_text())
    assert "apply_patch" == payload["tool_name"]
    assert text == payload["tool_input"]["command"]


# Gemini CLI ---------------------------------------------------------------------------------


def gemini_setup(repo: Path, cli: Cli, home: Path) -> None:
    clients.gemini_home(home, [repo])
    out = cli("hooks", "install", "--gemini", env={"HOME": str(home)})
    assert 0 == out.returncode, out.stderr


@STORES
def test_gemini_write_of_a_held_file_is_blocked_and_the_model_is_told_why(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """write_file on a held file (a path relative to cwd) is refused; the model reads why."""
    gemini_setup(repo, cli, home)
    step = Call("write_file", {"file_path": "src/held.py", "content": "held = 2\n"})
    with ModelServer([step, Say("stopped")]) as server:
        out = clients.gemini(repo, home, server.url)
        assert 0 == out.returncode, ran(out)
        told = said(server)
    assert "held = 1\n" == (repo / "src" / "held.py").read_text()
    assert "src/held.py is held by other" in told


def test_gemini_replace_in_a_free_file_claims_it_for_the_session(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """replace in a free file goes through and claims it for the session's agent."""
    gemini_setup(repo, cli, home)
    step = Call(
        "replace",
        {
            "file_path": str(repo / "src" / "free.py"),
            "old_string": "free = 1",
            "new_string": "free = 2",
            "instruction": "bump free",
        },
    )
    seen = Snapshot(cli)
    with ModelServer([step, seen.step(), Say("done")]) as server:
        out = clients.gemini(repo, home, server.url)
        assert 0 == out.returncode, ran(out)
        assert "held by" not in said(server)
    assert "free = 2\n" == (repo / "src" / "free.py").read_text()
    assert seen.claims is not None
    assert seen.claims["path:src/free.py"].startswith("gemini-")


def evict_free(cli: Cli) -> Observe:
    """An `Observe` step: a person force-evicts the session's claim on src/free.py."""

    def evict() -> None:
        out = cli("evict", "path:src/free.py", "--reason", "hotfix needs it")
        assert 0 == out.returncode, out.stderr

    return Observe(evict)


@pytest.mark.parametrize(
    "step",
    [Call("get_goal", {}), Call("exec_command", {"cmd": "cat src/free.py"})],
    ids=["unguarded", "guarded"],
)
def test_codex_hears_of_an_eviction_on_its_next_tool_call(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path, step: Call
) -> None:
    """A person evicts the session's claim mid-session: the next tool call's hook (PostToolUse;
    for a guarded call, PreToolUse) puts the eviction (resource, who, why) into what the real
    Codex sends the model (a developer message after the call)."""
    text = patch("*** Update File: src/free.py\n@@\n-free = 1\n+free = 2\n")
    script = [Call("apply_patch", text), evict_free(cli), step, Say("done")]
    with ModelServer(script) as server:
        codex_setup(repo, cli, home, server)
        out = clients.codex(repo, home)
        assert 0 == out.returncode, ran(out)
        told = server.told()
        assert not server.left
    assert "free = 2\n" == (repo / "src" / "free.py").read_text()
    assert "was evicted (hotfix needs it, by " in told
    assert "path:src/free.py" in told


@pytest.mark.parametrize(
    "step",
    [
        Call("read_file", {"file_path": "src/free.py"}),
        Call("run_shell_command", {"command": "cat src/free.py"}),
    ],
    ids=["unguarded", "guarded"],
)
def test_gemini_hears_of_an_eviction_on_its_next_tool_call(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path, step: Call
) -> None:
    """A person evicts the session's claim mid-session: the next tool call's hook puts the
    eviction (resource, who, why) into what the real Gemini CLI sends the model, whether
    or not the guard checks that call first (Gemini CLI drops the context of a BeforeTool
    reply, so the guard must leave the inbox to AfterTool)."""
    gemini_setup(repo, cli, home)
    edit = Call(
        "replace",
        {
            "file_path": str(repo / "src" / "free.py"),
            "old_string": "free = 1",
            "new_string": "free = 2",
            "instruction": "bump free",
        },
    )
    script = [edit, evict_free(cli), step, Say("done")]
    with ModelServer(script) as server:
        out = clients.gemini(repo, home, server.url)
        assert 0 == out.returncode, ran(out)
        told = server.told()
        assert not server.left
    assert "free = 2\n" == (repo / "src" / "free.py").read_text()
    assert "was evicted (hotfix needs it, by " in told
    assert "path:src/free.py" in told


def test_gemini_warn_mode_tells_the_model(
    repo: Path, cli: Cli, project: dict[str, Any], home: Path
) -> None:
    """In warn mode the edit of a held file goes through and the warning reaches the model
    (Gemini CLI drops an allowed BeforeTool's additionalContext: the AfterTool hook says it)."""
    clients.gemini_home(home, [repo])
    out = cli("hooks", "install", "--gemini", "--mode", "warn", env={"HOME": str(home)})
    assert 0 == out.returncode, out.stderr
    step = Call("write_file", {"file_path": "src/held.py", "content": "held = 2\n"})
    with ModelServer([step, Say("done")]) as server:
        out = clients.gemini(repo, home, server.url)
        assert 0 == out.returncode, ran(out)
        told = server.told()
    assert "held = 2\n" == (repo / "src" / "held.py").read_text()
    assert "src/held.py is held by other" in told
