"""Git's list of worktrees, and a worktree's own git dir: read one way for every caller.

``git worktree list --porcelain`` prints one block per worktree, separated by a blank line:
``worktree <path>``, then ``HEAD <sha>``, ``branch refs/heads/<name>`` or ``detached``, and
flags such as ``locked [reason]`` and ``prunable [reason]``.
"""

from __future__ import annotations

import os

from dibs.ground.git.discover import read_gitfile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def parse_worktree_list(text: str) -> list[dict[str, Any]]:
    """The blocks of ``git worktree list --porcelain`` as dicts: each line's first word is a
    key, the rest its value (``True`` for a bare flag such as ``detached``)."""
    entries: list[dict[str, Any]] = []
    for block in text.split("\n\n"):
        entry: dict[str, Any] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            entry[key] = value or True
        if "worktree" in entry:
            entries.append(entry)
    return entries


def worktree_list(root: str) -> list[dict[str, Any]]:
    """Every worktree of the repository at *root*, as `parse_worktree_list` shapes them."""
    from dibs.ground.git.run import git

    return parse_worktree_list(git(root, "worktree", "list", "--porcelain"))


def checked_out(entries: list[dict[str, Any]]) -> dict[str, str]:
    """branch name -> path of every worktree in *entries* that has a branch checked out."""
    prefix = "refs/heads/"
    return {
        str(e["branch"])[len(prefix) :]: str(e["worktree"])
        for e in entries
        if str(e.get("branch", "")).startswith(prefix)
    }


def git_dir_of(path: str) -> str:
    """The git dir of the work tree at *path*: a linked worktree's own (read from its ``.git``
    file as git does), or, for a main checkout, what git says."""
    linked = read_gitfile(os.path.join(path, ".git"))
    if linked is not None:
        return linked
    from dibs.ground.git.run import git

    return git(path, "rev-parse", "--absolute-git-dir").strip()
