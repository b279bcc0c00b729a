"""The swarm hears itself: inboxes and stuck agents, with the installed CLI on both stores.

Every test runs on the local store and on PostgreSQL (`swarm`). Nothing here measures time:
the stuck tests poll, with a generous give-up, until dibs says what it must say.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.acceptance.test_queue import agent_with_issue, branch, settings
from tests.conftest import Cli

#: How long a poll goes on before the test fails (far longer than anything takes).
GIVE_UP = 60.0


@pytest.fixture(params=["local", pytest.param("postgres", marks=pytest.mark.postgres)])
def swarm(request: pytest.FixtureRequest, repo: Path) -> Cli:
    """The CLI on either store."""
    cli = Cli(repo)
    if request.param == "postgres":
        database = request.getfixturevalue("pg_database")
        assert 0 == cli("init", "--store", database).returncode
    return cli


def inbox(cli: Cli, env: dict[str, str], *extra: str) -> list[dict[str, Any]]:
    """The messages `dibs inbox` returns as *env*'s agent."""
    messages: list[dict[str, Any]] = cli.json("inbox", *extra, env=env)["messages"]
    return messages


def hook(
    cli: Cli, env: dict[str, str], payload: dict[str, Any], host: str = "claude"
) -> dict[str, Any]:
    """What `dibs guard HOST` answers the host for *payload*, as *env*'s agent."""
    full = {"session_id": "session-1", "cwd": str(cli.cwd), **payload}
    out = cli("guard", host, env=env, stdin=json.dumps(full))
    assert 0 == out.returncode, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    return answer


def test_an_eviction_reaches_the_inbox_and_the_next_claude_code_tool_call(swarm: Cli) -> None:
    """A person's eviction is told to the evicted agent (resource, who, why) in the
    additionalContext of its next tool call, once: reading acknowledges it."""
    alice = swarm.register("alice")
    assert 0 == swarm("claim", "path:src/auth/**", env=alice).returncode
    assert 0 == swarm("evict", "path:src/auth/**", "--reason", "hotfix needs auth").returncode
    answer = hook(
        swarm,
        alice,
        {"hook_event_name": "PostToolUse", "tool_name": "Read", "tool_input": {"file_path": "x"}},
    )
    context = answer["hookSpecificOutput"]["additionalContext"]
    assert "PostToolUse" == answer["hookSpecificOutput"]["hookEventName"]
    assert "[evicted]" in context
    assert "path:src/auth/**" in context
    assert "hotfix needs auth" in context
    assert "@" in context.split("by ", 1)[1]  # by user@host: the person, from the OS
    assert [] == inbox(swarm, alice)
    again = hook(
        swarm,
        alice,
        {"hook_event_name": "PostToolUse", "tool_name": "Read", "tool_input": {"file_path": "x"}},
    )
    assert {} == again


def test_a_message_rides_on_an_allowed_edit_of_claude_code(swarm: Cli) -> None:
    """On a guarded PreToolUse the edit is allowed and the message is its additionalContext."""
    alice, bob = swarm.register("alice"), swarm.register("bob")
    assert 0 == swarm("send", "alice", "rebase on main before landing", env=bob).returncode
    answer = hook(
        swarm,
        alice,
        {
            "hook_event_name": "PreToolUse",
            "tool_name": "Write",
            "tool_input": {"file_path": str(swarm.cwd / "new.txt"), "content": "x"},
        },
    )
    output = answer["hookSpecificOutput"]
    assert "permissionDecision" not in output
    assert "[message] from bob: rebase on main before landing" in output["additionalContext"]


def test_gemini_hears_its_inbox_after_an_allowed_call_and_in_a_refusal(swarm: Cli) -> None:
    """Gemini CLI drops the context of a BeforeTool reply that allows the call: the guard
    leaves the message unread there, and AfterTool carries it. A refusal's reason does reach
    the model (and no AfterTool follows it), so a refused call carries it."""
    alice, bob = swarm.register("alice"), swarm.register("bob")
    assert 0 == swarm("claim", "path:held.txt", env=bob).returncode
    write = {"hook_event_name": "BeforeTool", "tool_name": "write_file"}
    assert 0 == swarm("send", "alice", "rebase on main", env=bob).returncode
    allowed = hook(
        swarm, alice, {**write, "tool_input": {"file_path": "new.txt", "content": "x"}}, "gemini"
    )
    assert {} == allowed
    after = hook(
        swarm,
        alice,
        {"hook_event_name": "AfterTool", "tool_name": "write_file", "tool_input": {}},
        "gemini",
    )
    assert "[message] from bob: rebase on main" in after["hookSpecificOutput"]["additionalContext"]
    assert 0 == swarm("send", "alice", "and land soon", env=bob).returncode
    refused = hook(
        swarm, alice, {**write, "tool_input": {"file_path": "held.txt", "content": "x"}}, "gemini"
    )
    assert "deny" == refused["decision"]
    assert "held.txt is held by bob" in refused["reason"]
    assert "[message] from bob: and land soon" in refused["reason"]
    assert [] == inbox(swarm, alice)


def test_a_failed_landing_reaches_the_author(swarm: Cli) -> None:
    """The author of a branch whose gate failed reads the gate, its exit and output tail."""
    settings(swarm.cwd, 'tests = "echo boom; exit 7"')
    alice = agent_with_issue(swarm, "alice", "G-1")
    branch(swarm.cwd, "agent/G-1", {"broken": "x\n"})
    assert 3 == swarm("land", "agent/G-1", env=alice).returncode
    [told] = inbox(swarm, alice)
    assert ("land-failed", "tests", 7) == (told["kind"], told["gate"], told["exit"])
    assert "boom" in told["tail"]
    watchers = swarm.json("inbox", "--watch")["messages"]
    assert ["land-failed"] == [m["kind"] for m in watchers]


def test_send_to_the_holder_of_a_glob_reaches_only_the_holder(swarm: Cli) -> None:
    """`send --holder path:src/auth/**` reaches whoever holds a file under it, nobody else."""
    alice, bob, carol = swarm.register("alice"), swarm.register("bob"), swarm.register("carol")
    assert 0 == swarm("claim", "path:src/auth/login.py", env=alice).returncode
    assert 0 == swarm("claim", "path:docs/**", env=carol).returncode
    sent = swarm.json("send", "--holder", "path:src/auth/**", "auth is being rewritten", env=bob)
    assert ["alice"] == sent["to"]
    [told] = inbox(swarm, alice)
    assert ("message", "bob", "auth is being rewritten") == (
        told["kind"],
        told["from"],
        told["text"],
    )
    assert [] == inbox(swarm, carol)
    assert 1 == swarm("send", "--holder", "path:lib/**", "anyone?", env=bob).returncode


def test_reading_is_at_least_once_in_order_and_only_by_the_agent(swarm: Cli) -> None:
    """Peeking leaves messages unread; reading returns them in order and marks them; another
    agent's token reads nothing of it; a person reads it only with --as-operator."""
    alice, bob = swarm.register("alice"), swarm.register("bob")
    for text in ("one", "two", "three"):
        assert 0 == swarm("send", "alice", text, env=bob).returncode
    assert ["one", "two", "three"] == [m["text"] for m in inbox(swarm, alice, "--peek")]
    wrong = {"DIBS_AGENT": "alice", "DIBS_TOKEN": bob["DIBS_TOKEN"]}
    assert 1 == swarm("inbox", env=wrong).returncode
    assert 1 == swarm("inbox", "--agent", "alice").returncode
    person = swarm.json("inbox", "--agent", "alice", "--as-operator", "--peek", "--limit", "1")
    assert ["one"] == [m["text"] for m in person["messages"]]
    assert ["one", "two"] == [m["text"] for m in inbox(swarm, alice, "--limit", "2")]
    assert ["three"] == [m["text"] for m in inbox(swarm, alice)]
    assert [] == inbox(swarm, alice)
    reads = [e for e in swarm.jsonl("log", "--op", "inbox-read") if e["agent"] == "alice"]
    assert ["alice", "alice"] == [e["by"] for e in reads]


def test_bad_messages_are_refused_before_the_store_is_touched(swarm: Cli) -> None:
    """An empty, overlong or non-UTF-8 message, or an unknown recipient, changes nothing."""
    bob = swarm.register("bob")
    seq = swarm.json("status")["seq"]
    assert 2 == swarm("send", "bob", "   ", env=bob).returncode
    assert 2 == swarm("send", "bob", "x" * 4001, env=bob).returncode
    assert 2 == swarm("send", "Not A Name", "hi", env=bob).returncode
    assert 2 == swarm("send", "hello", env=bob).returncode  # text, but to whom?
    assert 1 == swarm("send", "nobody", "hi", env=bob).returncode
    assert seq == swarm.json("status")["seq"]


def stuck_env(action: str) -> dict[str, str]:
    """Test-sized stuck settings: one second without progress."""
    return {"DIBS_STUCK_AFTER": "1", "DIBS_ON_STUCK": action}


def heartbeat_until_stuck(cli: Cli, env: dict[str, str]) -> dict[str, Any]:
    """Heartbeat as *env*'s agent until `dibs status` shows it stuck; its agent view."""
    give_up = time.monotonic() + GIVE_UP
    while True:
        cli("heartbeat", env=env)
        status = cli.json("status", env=env)
        found = {a["name"]: a for a in status["agents"]}[env["DIBS_AGENT"]]
        if found["status"] == "stuck":
            return found
        assert time.monotonic() < give_up, f"never stuck: {found}"
        time.sleep(0.2)


def test_a_heartbeating_agent_without_progress_is_stuck_and_told(swarm: Cli) -> None:
    """Heartbeats are no progress: the agent shows as stuck (status, metrics view) and it and
    the watchers are told once; under notify its claims stay."""
    alice = swarm.register("alice")
    assert 0 == swarm("claim", "issue:A", env=alice).returncode
    knobs = {**alice, **stuck_env("notify")}
    found = heartbeat_until_stuck(swarm, knobs)
    assert found["idle"] >= 1
    assert 0 == swarm("heartbeat", env=knobs).returncode  # a step meets it: it is told
    assert 0 == swarm("heartbeat", env=knobs).returncode  # once per stretch
    [told] = inbox(swarm, alice)
    assert ("stuck", "notify") == (told["kind"], told["action"])
    assert ["stuck"] == [m["kind"] for m in swarm.json("inbox", "--watch")["messages"]]
    assert ["issue:A"] == [c["resource"] for c in swarm.json("claims", env=knobs)]


def test_a_stuck_agent_is_evicted_under_on_stuck_evict(swarm: Cli) -> None:
    """Under on_stuck = evict its claims are freed with reason stuck, logged, and it hears why;
    another agent then gets the resource."""
    alice, bob = swarm.register("alice"), swarm.register("bob")
    assert 0 == swarm("claim", "issue:A", "path:src/**", env=alice).returncode
    heartbeat_until_stuck(swarm, {**alice, **stuck_env("notify")})
    out = swarm("heartbeat", env={**alice, **stuck_env("evict")})
    assert 4 == out.returncode
    assert "stuck" in out.stderr
    evictions = [e for e in swarm.jsonl("log", "--op", "auto-evict") if e["agent"] == "alice"]
    assert {("issue:A", "stuck"), ("path:src/**", "stuck")} == {
        (e["resource"], e["reason"]) for e in evictions
    }
    assert [] == swarm.json("claims", "--agent", "alice")
    kinds = sorted(m["kind"] for m in inbox(swarm, alice))
    assert ["evicted", "evicted", "stuck"] == kinds
    assert 0 == swarm("claim", "issue:A", env=bob).returncode


def test_a_gave_up_waiter_hears_when_the_resource_is_free(swarm: Cli) -> None:
    """A --wait claim that ran out is remembered: the release of what it wanted tells it."""
    alice, bob = swarm.register("alice"), swarm.register("bob")
    assert 0 == swarm("claim", "issue:A", env=alice).returncode
    assert 3 == swarm("claim", "issue:A", "--wait", "0.3", env=bob).returncode
    assert [] == inbox(swarm, bob)
    assert 0 == swarm("release", "issue:A", env=alice).returncode
    [told] = inbox(swarm, bob)
    assert ("free", "issue:A") == (told["kind"], told["resource"])


def test_overlapping_plans_tell_both_agents(swarm: Cli) -> None:
    """A plan that overlaps another's reaches both agents' inboxes."""
    alice, bob = swarm.register("alice"), swarm.register("bob")
    assert 0 == swarm("plan", "add", "src/auth/**", env=alice).returncode
    assert 0 == swarm("plan", "add", "src/auth/login.py", env=bob).returncode
    assert ["plan-overlap"] == [m["kind"] for m in inbox(swarm, alice)]
    assert ["plan-overlap"] == [m["kind"] for m in inbox(swarm, bob)]


def test_a_guarded_edit_is_progress_and_a_shell_call_writing_nothing_is_not(swarm: Cli) -> None:
    """The edit guard writes a `progress` event for an allowed edit by a stuck agent (ending
    its stretch), and none for a shell command that writes no file."""
    alice = swarm.register("alice")
    knobs = {**alice, **stuck_env("notify")}
    heartbeat_until_stuck(swarm, knobs)
    shell = {"hook_event_name": "PreToolUse", "tool_name": "Bash", "tool_input": {"command": "ls"}}
    hook(swarm, knobs, shell)
    assert [] == swarm.jsonl("log", "--op", "progress")
    write = {
        "hook_event_name": "PreToolUse",
        "tool_name": "Write",
        "tool_input": {"file_path": str(swarm.cwd / "notes.txt"), "content": "x"},
    }
    hook(swarm, knobs, write)
    [progress] = swarm.jsonl("log", "--op", "progress")
    assert ("alice", "edit") == (progress["agent"], progress["reason"])
