"""Conflict prediction: which live agent branches would clash with each other or the target.

Nothing is checked out or written: each pair is merged in memory by ``git merge-tree``.
"""

from __future__ import annotations

from dibs.ground.errors import NotFound
from dibs.integrations.queue.entries import _entries, _repo, _target, issue_of_branch

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.service import Coordinator


def conflicts(coord: Coordinator) -> dict[str, Any]:
    """Predicted conflicts among live agent branches, and of each with the target.

    Live branches: those of waiting queue entries, of registered agents, and every branch
    named by the ``worktrees.branch`` pattern that is not merged into the target. Each branch
    is merged with the target, and each pair of branches that changed a common path (or a
    file and a folder of one name) with each other, by ``git merge-tree --write-tree``, in
    memory: nothing is checked out or written to a branch.
    """
    from dibs.ground.git.run import git

    repo = _repo(coord)
    target = _target(coord)
    tip = git(repo.root, "rev-parse", "--verify", "--quiet", f"refs/heads/{target}", check=False)
    if not tip.strip():
        raise NotFound(f"the target branch {target!r} does not exist", hint="set merge.target")
    state, _ = coord.read()
    names = {e["branch"] for e in _entries(state, finished=False)}
    names |= {a["branch"] for a in state.agents.values() if a.get("branch")}
    pattern = str(coord.settings["worktrees.branch"])
    prefix = pattern.partition("{issue}")[0]
    listing = git(
        repo.root,
        "for-each-ref",
        "--format=%(refname:short)",
        "--no-merged",
        target,
        f"refs/heads/{prefix}" if prefix else "refs/heads/",
    )
    names |= {n for n in listing.split() if issue_of_branch(pattern, n) is not None}
    names.discard(target)
    changed: dict[str, set[str]] = {}
    for name in sorted(names):
        if git(repo.root, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False):
            files = git(repo.root, "diff", "--name-only", f"{target}...refs/heads/{name}")
            changed[name] = set(files.split("\n")) - {""}
    found = []
    checked = 0
    branches = sorted(changed)
    for i, a in enumerate(branches):
        pairs = [target] + [b for b in branches[i + 1 :] if _overlap(changed[a], changed[b])]
        for b in pairs:
            checked += 1
            clashing = _merge_tree(repo.root, b, a)
            if clashing:
                found.append({"a": a, "b": b, "files": clashing, "with_target": b == target})
    return {"target": target, "branches": branches, "pairs_checked": checked, "conflicts": found}


def _overlap(a: set[str], b: set[str]) -> bool:
    return bool(_meeting(a, b))


def _meeting(a: set[str], b: set[str]) -> set[str]:
    """The paths of *a* that are paths of *b*, folders of them, or files in their way."""
    folders_b = {p.rsplit("/", i)[0] for p in b for i in range(1, p.count("/") + 1)}
    return {
        p
        for p in a
        if p in b
        or p in folders_b
        or any(p.rsplit("/", i)[0] in b for i in range(1, p.count("/") + 1))
    }


def _merge_tree(root: str, a: str, b: str) -> list[str]:
    """Files that would conflict merging branches *a* and *b* (empty: a clean merge)."""
    import subprocess

    done = subprocess.run(
        ["git", "merge-tree", "--write-tree", "--name-only", "--no-messages", a, b],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return []
    if done.returncode != 1:
        from dibs.ground.git.run import GitError

        raise GitError(f"git merge-tree {a} {b} failed: {done.stderr.strip()}")
    return sorted(set(done.stdout.split("\n")[1:]) - {""})
