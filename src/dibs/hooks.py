"""``dibs hooks install|uninstall|status``: put the guards where git and Claude Code call them.

* git: a ``pre-commit`` hook in the hooks folder git uses (``git rev-parse --git-path hooks``:
  the common dir's, so every worktree of the clone gets it, or ``core.hooksPath``). A hook that
  was there is kept as ``pre-commit.before-dibs`` and still runs after the guard.
* Claude Code: a PreToolUse hook for ``Edit|Write|MultiEdit|NotebookEdit`` in the project's
  ``.claude/settings.json``, merged into what is there; nothing else in the file changes.

Uninstalling removes exactly what installing added and puts a chained hook back.
"""

from __future__ import annotations

import json
import os
import shlex
import sys

from dibs.errors import InvalidSetting, UsageError
from dibs.git.run import git

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.git.discover import Repo

MARKER = "# dibs guard: installed by `dibs hooks install --git`"
CHAINED = "pre-commit.before-dibs"
MATCHER = "Edit|Write|MultiEdit|NotebookEdit"


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


def claude_settings_path(repo: Repo) -> str:
    return os.path.join(repo.root, ".claude", "settings.json")


def _load_settings(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise InvalidSetting(
            f"{path} is not valid JSON ({exc})", hint="fix it by hand; dibs will not overwrite it"
        ) from exc
    if not isinstance(data, dict):
        raise InvalidSetting(f"{path} is not a JSON object", hint="fix it by hand")
    return data


def _our_entry(entry: Any) -> bool:
    hooks = entry.get("hooks") if isinstance(entry, dict) else None
    return isinstance(hooks, list) and any(
        isinstance(h, dict) and " guard claude" in str(h.get("command", "")) for h in hooks
    )


def _write_settings(path: str, data: dict[str, Any]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".dibs-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def install_claude(repo: Repo, mode: str) -> dict[str, Any]:
    """Add (or update) the PreToolUse guard in .claude/settings.json, keeping everything else."""
    path = claude_settings_path(repo)
    data = _load_settings(path)
    hooks = data.setdefault("hooks", {})
    if not isinstance(hooks, dict):
        raise InvalidSetting(f'{path}: "hooks" is not an object', hint="fix it by hand")
    pre = hooks.setdefault("PreToolUse", [])
    if not isinstance(pre, list):
        raise InvalidSetting(f"{path}: hooks.PreToolUse is not a list", hint="fix it by hand")
    entry = {
        "matcher": MATCHER,
        "hooks": [{"type": "command", "command": f"{dibs_command()} guard claude --mode {mode}"}],
    }
    pre[:] = [e for e in pre if not _our_entry(e)] + [entry]
    _write_settings(path, data)
    return {"settings": path, "mode": mode}


def uninstall_claude(repo: Repo) -> dict[str, Any]:
    """Remove only dibs's entries from .claude/settings.json."""
    path = claude_settings_path(repo)
    if not os.path.exists(path):
        return {"settings": path, "removed": False}
    data = _load_settings(path)
    pre = data.get("hooks", {}).get("PreToolUse")
    if not isinstance(pre, list) or not any(_our_entry(e) for e in pre):
        return {"settings": path, "removed": False}
    pre[:] = [e for e in pre if not _our_entry(e)]
    if not pre:
        del data["hooks"]["PreToolUse"]
    if not data["hooks"]:
        del data["hooks"]
    _write_settings(path, data)
    return {"settings": path, "removed": True}


def status(repo: Repo) -> dict[str, Any]:
    """Which guards are installed, in which mode."""
    folder = hooks_dir(repo)
    hook = os.path.join(folder, "pre-commit")
    git_mode = None
    if _is_ours(hook):
        with open(hook, encoding="utf-8") as f:
            text = f.read()
        git_mode = "warn" if "--mode warn" in text else "block"
    claude_mode = None
    path = claude_settings_path(repo)
    if os.path.exists(path):
        for entry in _load_settings(path).get("hooks", {}).get("PreToolUse", []) or []:
            if _our_entry(entry):
                command = entry["hooks"][0].get("command", "")
                claude_mode = "warn" if "--mode warn" in command else "block"
    return {
        "git": {
            "hook": hook,
            "installed": git_mode is not None,
            "mode": git_mode,
            "chained": os.path.join(folder, CHAINED)
            if os.path.exists(os.path.join(folder, CHAINED))
            else None,
        },
        "claude": {"settings": path, "installed": claude_mode is not None, "mode": claude_mode},
    }
