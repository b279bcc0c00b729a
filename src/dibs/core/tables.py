"""The integrations' tables that more than one layer reads, named once.

Integrations keep their state as ``record`` events into named tables
(``State.tables[name][key]``). The service shows some of them in `Coordinator.status` and the
agent view (the merge queue's open entries, the pool, the worktrees); it may not import the
integrations (they stand above it), so the names and the one fact it needs about them (which
queue entries are open) live here, below both.
"""

from __future__ import annotations

#: Worktrees `dibs start` made, by path relative to the repository root.
WORKTREES = "worktrees"
#: Reusable pool worktrees, by slot number.
POOL = "pool"
#: Merge queue entries, by id.
QUEUE = "queue"
#: Queue entries still to be handled (the others have landed, failed or been cancelled).
QUEUE_OPEN = ("queued", "running")
