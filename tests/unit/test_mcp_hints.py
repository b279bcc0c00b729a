"""Hints written for the CLI, phrased for an MCP client (tools and arguments, not flags)."""

from __future__ import annotations

from dibs.faces.mcp.server import mcp_hint


def test_flags_become_arguments_with_their_units() -> None:
    """`--wait` is the `wait` argument, in seconds; flags with no MCP argument stay."""
    assert "wait for it with the `wait` argument (seconds), or pick other work" == mcp_hint(
        "wait for it with --wait, or pick other work"
    )
    assert "wait longer (the `wait` argument (seconds)) or pick other work" == mcp_hint(
        "wait longer (--wait SECONDS) or pick other work"
    )
    assert "see --json" == mcp_hint("see --json")


def test_commands_become_tools() -> None:
    """`dibs VERB ...` names the tool; commands with no tool are left as they are."""
    assert "name the issue: `finish`" == mcp_hint("name the issue: dibs finish ISSUE")
    assert "commit and land it (`land`)" == mcp_hint("commit and land it (dibs land)")
    assert "see `dibs queue`" == mcp_hint("see `dibs queue`")


def test_identity_hints_say_register() -> None:
    """Hints about --agent/DIBS_AGENT tell an MCP client to call `register` instead."""
    said = mcp_hint(
        "pass --agent NAME --token TOKEN, or set DIBS_AGENT and DIBS_TOKEN "
        "(see `dibs agent register NAME --eval`)"
    )
    assert "call `register` with a name first (the server keeps the session token)" == said
