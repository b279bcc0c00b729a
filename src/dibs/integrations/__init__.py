"""Integrations: the capabilities built on the service and git.

One module or sub-package per capability: `worktrees` (a worktree and branch per agent, the
pool, reconciliation, ``dibs run``), `queue` (the merge queue), `tasks` (task sources: beads,
markdown, CCPM), `plans`, `limits` (shared rate limits), `documents` (versioned documents),
`guard` (edit and commit guards, which lines a tool call writes, ``dibs check``), `sessions`
(one dibs agent per host session), `setup` (``dibs init``, git hooks, agent hosts' hook files)
and `metrics` (figures from the log). They reach the store only through the service.
"""
