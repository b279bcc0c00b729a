"""Find the repository, its worktree's git dir and the common dir, without running git.

``git rev-parse --git-common-dir`` costs a process start (and ``subprocess`` 15 ms of imports)
on every CLI call; reading ``.git`` and ``commondir`` the way git does costs a few stats.
"""

from __future__ import annotations

import os

from dibs.ground.errors import NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


#: The file `dibs start` writes in a worktree's own git dir: who works there.
IDENTITY_FILE = "dibs-agent.json"


class Repo:
    """Where a repository's pieces live.

    Attributes:
        root: the top of the work tree we are in (a worktree's own folder inside a worktree).
        git_dir: this work tree's git dir (``.git``, or ``.git/worktrees/<name>``).
        common_dir: the git dir shared by every worktree of the clone (holds ``dibs/``).
    """

    __slots__ = ("common_dir", "git_dir", "root")

    def __init__(self, root: str, git_dir: str, common_dir: str):
        self.root = root
        self.git_dir = git_dir
        self.common_dir = common_dir

    @property
    def store_dir(self) -> str:
        """The local store folder: ``<common dir>/dibs``."""
        return os.path.join(self.common_dir, "dibs")

    @property
    def main_root(self) -> str:
        """The main worktree's folder (where ``.worktrees/`` lives), from any worktree."""
        common = os.path.normpath(self.common_dir)
        if os.path.basename(common) == ".git":
            return os.path.dirname(common)
        return self.root  # a bare repository's linked worktree: use where we are

    @property
    def is_linked_worktree(self) -> bool:
        """Whether we are in a worktree made by ``git worktree add`` (not the main one)."""
        return os.path.normpath(self.git_dir) != os.path.normpath(self.common_dir)

    def __repr__(self) -> str:
        return f"Repo(root={self.root!r}, git_dir={self.git_dir!r})"


def root_commit(repo: Repo) -> str | None:
    """The first commit of *repo*'s history (the smallest, if there are several roots).

    Every clone of a repository has it, whatever its remotes or folder are called, so it names
    the repository in a shared store. None when the repository has no commit yet.
    """
    import subprocess

    out = subprocess.run(
        ["git", "-C", repo.root, "rev-list", "--max-parents=0", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    )
    roots = sorted(out.stdout.split()) if out.returncode == 0 else []
    return roots[0] if roots else None


def read_gitfile(path: str) -> str | None:
    """The git dir a ``.git`` file at *path* points to (``gitdir: ...``, relative to the
    file's folder), as git reads it; None when *path* is no such file."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline().strip()
    except OSError:
        return None
    if not first.startswith("gitdir:"):
        return None
    target = first[len("gitdir:") :].strip()
    return os.path.normpath(os.path.join(os.path.dirname(path), target))


def _common_dir(git_dir: str) -> str:
    try:
        with open(os.path.join(git_dir, "commondir"), encoding="utf-8") as f:
            target = f.read().strip()
    except OSError:
        return git_dir
    return os.path.normpath(os.path.join(git_dir, target))


def find_repo(start: str | None = None, environ: Mapping[str, str] | None = None) -> Repo:
    """The repository containing *start* (default: the current directory).

    Raises:
        NotFound: *start* is not inside a git work tree.
    """
    env = os.environ if environ is None else environ
    here = os.path.abspath(start or os.getcwd())
    if env.get("GIT_DIR"):
        git_dir = os.path.abspath(env["GIT_DIR"])
        root = os.path.abspath(env.get("GIT_WORK_TREE") or here)
        common_env = env.get("GIT_COMMON_DIR")
        common = os.path.abspath(common_env) if common_env else _common_dir(git_dir)
        return Repo(root, git_dir, common)
    current = here
    while True:
        dotgit = os.path.join(current, ".git")
        if os.path.isdir(dotgit):
            return Repo(current, dotgit, _common_dir(dotgit))
        if os.path.isfile(dotgit):
            linked = read_gitfile(dotgit)
            if linked is not None and os.path.isdir(linked):
                return Repo(current, linked, _common_dir(linked))
        parent = os.path.dirname(current)
        if parent == current:
            raise NotFound(
                f"{here} is not inside a git repository",
                hint="run dibs inside a git work tree (or `git init` one), or pass -C DIR",
            )
        current = parent


def worktree_identity(repo: Repo) -> tuple[str, str] | None:
    """The agent and token `dibs start` recorded for the worktree *repo* is in, if any."""
    from dibs.ground import fastjson

    try:
        with open(os.path.join(repo.git_dir, IDENTITY_FILE), encoding="utf-8") as f:
            data = fastjson.loads(f.read())
        return str(data["agent"]), str(data["token"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
