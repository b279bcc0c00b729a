"""``dibs check``: what an agent's branch changed, against what it claimed.

Two kinds of finding, after the seed's "Handling Violations": an *unclaimed edit* (a changed
file none of the agent's claims covers: a planning gap, fix it with a retroactive claim) and an
*edit of a file another agent holds* (critical: revert it, or settle it with the holder).
"""

from __future__ import annotations

import os

from dibs.core.leases import eviction_reason
from dibs.core.resources import covers_file
from dibs.ground.errors import UsageError
from dibs.ground.git.run import git
from dibs.integrations.guard import blockers, identity

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.service import Coordinator


def changed_files(root: str, base: str) -> list[str]:
    """Files that differ from *base* in the work tree (committed or not), plus untracked ones."""
    fork = git(root, "merge-base", base, "HEAD").strip()
    tracked = git(root, "diff", "--name-only", "-z", "--no-renames", fork)
    untracked = git(root, "ls-files", "--others", "--exclude-standard", "-z")
    return sorted({p for p in (tracked + untracked).split("\0") if p})


def check(coord: Coordinator, *, base: str | None = None) -> dict[str, Any]:
    """Compare the current worktree's changes since *base* with the acting agent's claims."""
    repo = coord.repo
    if repo is None:
        raise UsageError("dibs check needs a git repository")
    agent, _ = identity(repo, os.environ, coord.agent, coord.token)
    if agent is None:
        raise UsageError(
            "which agent's changes? no agent is set",
            hint="pass --agent NAME, set DIBS_AGENT, or run inside the agent's worktree",
        )
    base = base or coord.settings["merge.target"]
    changed = changed_files(repo.root, base)
    state, now = coord.read()
    ctx = coord.context(now)
    mine = [
        (lease, resource)
        for path in changed
        for lease, resource in state.path_candidates(path)
        if lease["agent"] == agent and eviction_reason(state, lease, ctx) is None
    ]
    unclaimed = [
        path for path in changed if not any(covers_file(resource, path) for _, resource in mine)
    ]
    held = [
        block.to_json() for path in changed for block in blockers(state, ctx, path, agent=agent)
    ]
    return {
        "agent": agent,
        "base": base,
        "changed": changed,
        "unclaimed": unclaimed,
        "held_by_others": held,
    }
