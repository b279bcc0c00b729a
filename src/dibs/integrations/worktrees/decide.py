"""The worktree integration's decisions, as pure functions of the state and the time.

Who may take a pool slot, whose worktree may be adopted, which claims finishing releases, how
healthy a worktree is: each is decided here from a `State` and a `Context` (its ``now`` and
liveness), with no git, file or store, so `tests/unit/test_worktree_decisions.py` checks them
directly. The modules around them do the I/O.
"""

from __future__ import annotations

import os

from dibs.core.leases import agent_status, eviction_reason
from dibs.core.tables import POOL, WORKTREES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.integrations.worktrees.common import WorktreeRecord


def owner_status(state: State, ctx: Context, agent: str) -> str:
    """*agent*'s status: ``live``, ``stale`` or ``dead`` (`agent_status`), or ``gone`` when
    it is no longer registered."""
    info = state.agents.get(agent)
    return "gone" if info is None else agent_status(info, ctx)


def may_adopt(state: State, ctx: Context, owner: str, record: Mapping[str, Any]) -> bool:
    """Whether another agent may take over *owner*'s worktree on disk (described by
    *record*, empty when dibs has none): unless the owner is live and has not let it go
    (``dibs finish --keep-worktree`` marks it ``finished``)."""
    return owner_status(state, ctx, owner) != "live" or bool(record.get("finished"))


def free_slots(state: State, ctx: Context, agent: str) -> list[str]:
    """The pool slots *agent* may take, in order: the ones it holds already, or else every
    slot no one holds a live claim on."""
    slots = sorted(state.tables.get(POOL, {}), key=int)
    mine = [s for s in slots if agent in state.claims.get(f"worktree:{s}", {})]
    return mine or [
        s
        for s in slots
        if not any(
            not eviction_reason(state, lease, ctx)
            for lease in state.claims.get(f"worktree:{s}", {}).values()
        )
    ]


def claims_to_release(state: State, record: WorktreeRecord) -> list[str]:
    """What finishing the worktree *record* releases: its agent's claims, except those of
    its other tasks (other issues, and the files of its other worktrees)."""
    agent = record["agent"]
    others = {
        claim
        for other in state.tables.get(WORKTREES, {}).values()
        if other["agent"] == agent and other["issue"] != record["issue"]
        for claim in other.get("files") or ()
    }
    return [
        lease["resource"]
        for lease in state.leases_of(agent)
        if lease["resource"] not in others
        and not (
            lease["resource"].startswith("issue:")
            and lease["resource"] != f"issue:{record['issue']}"
        )
    ]


def health(state: State, ctx: Context, record: Mapping[str, Any]) -> str:
    """A remembered worktree's health as `listing` shows it: ``free`` (a pool slot no one
    has), ``ok`` (its agent is live), or ``agent stale|dead|gone``."""
    agent = record.get("agent")
    if agent is None:
        return "free"
    status = owner_status(state, ctx, agent)
    return "ok" if status == "live" else f"agent {status}"


def half_made(state: State, ctx: Context, rel: str, entry: dict[str, Any], folder: str) -> bool:
    """Whether git's *entry* (at *rel*) is a worktree under *folder* whose `git worktree add`
    died half-way (still locked ``initializing``, no commit checked out), made for an agent
    that is not live."""
    if entry.get("locked") != "initializing" or set(str(entry.get("HEAD", "0"))) != {"0"}:
        return False
    if not rel.startswith(folder + os.sep):
        return False
    owner = state.agents.get(rel[len(folder) + 1 :].split(os.sep, maxsplit=1)[0])
    return owner is None or agent_status(owner, ctx) != "live"
