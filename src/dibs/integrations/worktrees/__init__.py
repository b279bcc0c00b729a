"""Worktrees and the agent lifecycle: start, finish, the pool, and agreeing with git.

`start` gives an agent its issue, its own worktree and branch in one step, all or nothing;
`finish` cleans up without ever destroying work; the pool keeps reusable worktrees that agents
take and give back. Each worktree `start` makes knows its agent: the identity is written to the
worktree's own git dir (``dibs-agent.json``, mode 0600), so commands run inside it need no
flags.

The store remembers worktrees in table ``worktrees`` (key: the path relative to the
repository root) and pool slots in table ``pool`` (key: the slot number), through ``record``
events; `reconcile` (``dibs doctor``) compares both with git's own list and the processes on
this host.

The parts: `common` (shared helpers), `lifecycle` (start, adopt, finish), `pool`, `doctor`
(listing, reconcile), `running` (``dibs run``); `decide` holds the pure decisions.
"""

from __future__ import annotations

from dibs.integrations.worktrees.common import (
    POOL,
    POOL_FOLDER,
    TABLE,
    branch_for,
    lost_work,
    write_identity,
)
from dibs.integrations.worktrees.doctor import listing, reconcile
from dibs.integrations.worktrees.lifecycle import finish, start
from dibs.integrations.worktrees.pool import pool_give, pool_init, pool_status, pool_take
from dibs.integrations.worktrees.running import run

__all__ = [
    "POOL",
    "POOL_FOLDER",
    "TABLE",
    "branch_for",
    "finish",
    "listing",
    "lost_work",
    "pool_give",
    "pool_init",
    "pool_status",
    "pool_take",
    "reconcile",
    "run",
    "start",
    "write_identity",
]
