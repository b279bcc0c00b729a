"""``dibs hooks install|uninstall|status``: put the guards where git and agent hosts call them.

* git: a ``pre-commit`` hook in the hooks folder git uses (``git rev-parse --git-path hooks``:
  the common dir's, so every worktree of the clone gets it, or ``core.hooksPath``). A hook that
  was there is kept as ``pre-commit.before-dibs`` and still runs after the guard.
* agent hosts (Claude Code, Codex, Gemini CLI, Cursor): see `dibs.integrations.setup.host_hooks`.

Uninstalling removes exactly what installing added and puts a chained hook back.
"""

from __future__ import annotations

import os
import shlex
import sys

from dibs.ground.errors import UsageError
from dibs.ground.git.run import git

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.ground.git.discover import Repo

MARKER = "# dibs guard: installed by `dibs hooks install --git`"
CHAINED = "pre-commit.before-dibs"


def dibs_command() -> str:
    """How hooks call dibs: this installation's own executable, so PATH does not matter."""
    here = os.path.join(os.path.dirname(sys.executable), "dibs")
    return shlex.quote(here) if os.access(here, os.X_OK) else "dibs"


def hooks_dir(repo: Repo) -> str:
    """The folder git runs hooks from for this repository (all worktrees share it)."""
    out = git(repo.root, "rev-parse", "--git-path", "hooks").strip()
    return os.path.normpath(os.path.join(repo.root, out))


def _script(mode: str) -> str:
    return (
        "#!/bin/sh\n"
        f"{MARKER}\n"
        "# `dibs hooks uninstall` removes it and restores any hook that was here before.\n"
        f"{dibs_command()} guard commit --mode {mode} || exit $?\n"
        f'chained="$(dirname "$0")/{CHAINED}"\n'
        'if [ -x "$chained" ]; then exec "$chained" "$@"; fi\n'
    )


def _is_ours(path: str) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return MARKER in f.read(4096)
    except OSError:
        return False


def install_git(repo: Repo, mode: str) -> dict[str, Any]:
    """Install (or update) the pre-commit guard, chaining to a hook that was there."""
    folder = hooks_dir(repo)
    os.makedirs(folder, exist_ok=True)
    hook = os.path.join(folder, "pre-commit")
    chained = os.path.join(folder, CHAINED)
    kept = None
    if os.path.lexists(hook) and not _is_ours(hook):
        if os.path.lexists(chained):
            raise UsageError(
                f"{hook} exists and so does {chained}",
                hint=f"merge them by hand or remove {chained}, then install again",
            )
        os.replace(hook, chained)
        kept = chained
    tmp = hook + ".dibs-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(_script(mode))
    os.chmod(tmp, 0o755)  # noqa: S103 -- a hook must be executable by git, like git's samples
    os.replace(tmp, hook)
    return {
        "hook": hook,
        "mode": mode,
        "chained": kept or (chained if os.path.exists(chained) else None),
    }


def uninstall_git(repo: Repo) -> dict[str, Any]:
    """Remove the guard and put back the hook it chained to."""
    folder = hooks_dir(repo)
    hook = os.path.join(folder, "pre-commit")
    chained = os.path.join(folder, CHAINED)
    removed = False
    if _is_ours(hook):
        os.remove(hook)
        removed = True
        if os.path.lexists(chained):
            os.replace(chained, hook)
    return {"hook": hook, "removed": removed, "restored": removed and os.path.exists(hook)}


def status(repo: Repo) -> dict[str, Any]:
    """Which guards are installed, in which mode (agent hosts: see
    `dibs.integrations.setup.host_hooks.status`)."""
    from dibs.integrations.setup import host_hooks

    folder = hooks_dir(repo)
    hook = os.path.join(folder, "pre-commit")
    git_mode = None
    if _is_ours(hook):
        with open(hook, encoding="utf-8") as f:
            text = f.read()
        git_mode = "warn" if "--mode warn" in text else "block"
    found: dict[str, Any] = {
        "git": {
            "hook": hook,
            "installed": git_mode is not None,
            "mode": git_mode,
            "chained": os.path.join(folder, CHAINED)
            if os.path.exists(os.path.join(folder, CHAINED))
            else None,
        }
    }
    for host in host_hooks.HOSTS:
        found[host] = host_hooks.status(repo, host)
    return found
