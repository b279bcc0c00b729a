"""Leases and agents as faces show them: plain JSON-ready dicts with seconds left and status."""

from __future__ import annotations

from dibs.core import rules
from dibs.core.leases import agent_status, expires_in
from dibs.core.state import NS
from dibs.core.tables import WORKTREES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import AgentRecord, LeaseRecord, State
    from dibs.ground.now import Now


def lease_view(lease: LeaseRecord, now: Now) -> dict[str, Any]:
    """A lease as faces show it, with seconds left (``expires_in``)."""
    return rules.lease_view(lease, ttl=lease["ttl"], expires_in=round(expires_in(lease, now), 3))


def agent_view(agent: AgentRecord, state: State, ctx: Context) -> dict[str, Any]:
    """An agent as faces show it: status, seconds since last sign of life, claim count."""
    seen = (ctx.now.mono - agent["seen"]) / NS if agent["seen_boot"] == ctx.now.boot else None
    view: dict[str, Any] = {
        "name": agent["name"],
        "status": agent_status(agent, ctx),
        "host": agent["host"],
        "pid": agent["pid"],
        "ttl": agent["ttl"],
        "registered": agent["registered"],
        "last_seen": agent["seen_wall"],
        "seen_ago": None if seen is None else round(seen, 3),
        "claims": len(state.leases_of(agent["name"])),
    }
    for key in ("worktree", "branch"):
        if key in agent:
            view[key] = agent.get(key)
    for path, record in state.tables.get(WORKTREES, {}).items():
        if record.get("agent") == agent["name"]:
            view.update(worktree=path, branch=record.get("branch"), issue=record.get("issue"))
    return view
