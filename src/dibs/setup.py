"""``dibs init``: set up dibs in a repository (store folder, dibs.toml, git excludes)."""

from __future__ import annotations

import os

from dibs import config
from dibs.git.discover import Repo, find_repo

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def current_branch(repo: Repo) -> str | None:
    """The branch checked out in *repo*'s work tree (None when HEAD is detached)."""
    try:
        with open(os.path.join(repo.git_dir, "HEAD"), encoding="utf-8") as f:
            head = f.read().strip()
    except OSError:
        return None
    prefix = "ref: refs/heads/"
    return head[len(prefix) :] if head.startswith(prefix) else None


def _exclude(repo: Repo, pattern: str) -> bool:
    """Add *pattern* to ``info/exclude`` of the common dir unless there; True if added."""
    info = os.path.join(repo.common_dir, "info")
    path = os.path.join(info, "exclude")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        lines = []
    if pattern in lines or pattern.rstrip("/") in lines:
        return False
    os.makedirs(info, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        if lines and lines[-1] != "":
            f.write("\n")
        f.write(f"# dibs: agent worktrees\n{pattern}\n")
    return True


def init(where: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Set up dibs in the repository at *where*; safe to run again.

    Creates the store, writes a commented ``dibs.toml`` when there is none, and keeps the
    worktree folder out of git through ``info/exclude``.

    Returns:
        What was done: ``{"root", "store", "settings", "created_settings", "excluded"}``.
    """
    from dibs.service import Coordinator

    repo = find_repo(os.fspath(where) if where is not None else None)
    settings_path = os.path.join(repo.root, config.FILE_NAME)
    created = False
    if not os.path.exists(settings_path):
        target = current_branch(repo) or "main"
        with open(settings_path, "x", encoding="utf-8") as f:
            f.write(config.template(target))
        created = True
    with Coordinator.open(repo.root) as dibs:
        folder = dibs.settings["worktrees.folder"].rstrip("/") + "/"
        excluded = _exclude(repo, "/" + folder)
        dibs.store.create()
        url = dibs.store.url
    return {
        "root": repo.root,
        "store": url,
        "settings": settings_path,
        "created_settings": created,
        "excluded": "/" + folder if excluded else None,
    }
