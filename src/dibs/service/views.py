"""Leases and agents as faces show them: plain JSON-ready dicts with seconds left and status."""

from __future__ import annotations

from dibs.core.leases import agent_status, expires_in, idle_for, stuck_for
from dibs.core.state import NS

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import AgentRecord, LeaseRecord, State
    from dibs.ground.now import Now


def lease_view(lease: LeaseRecord, now: Now) -> dict[str, Any]:
    """A lease as faces show it, with seconds left (``expires_in``)."""
    view: dict[str, Any] = {
        "resource": lease["resource"],
        "agent": lease["agent"],
        "mode": lease["mode"],
        "token": lease["token"],
        "ttl": lease["ttl"],
        "acquired": lease["acquired"],
        "expires_in": round(expires_in(lease, now), 3),
    }
    if "note" in lease:
        view["note"] = lease["note"]
    return view


def agent_view(agent: AgentRecord, state: State, ctx: Context) -> dict[str, Any]:
    """An agent as faces show it: status (``live``, ``stuck``: live without progress for
    ``agents.stuck_after``, ``stale``, ``dead``), seconds since its last sign of life and
    since its last progress (``idle``), claim count."""
    seen = (ctx.now.mono - agent["seen"]) / NS if agent["seen_boot"] == ctx.now.boot else None
    status = agent_status(agent, ctx)
    if status == "live" and stuck_for(agent, ctx) is not None:
        status = "stuck"
    idle = idle_for(agent, ctx.now)
    view: dict[str, Any] = {
        "name": agent["name"],
        "status": status,
        "idle": None if idle is None else round(idle, 3),
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
    for path, record in state.tables.get("worktrees", {}).items():
        if record.get("agent") == agent["name"]:
            view.update(worktree=path, branch=record.get("branch"), issue=record.get("issue"))
    return view
