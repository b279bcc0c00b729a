"""What every part of the worktree integration shares: table names, the repository's
folders, git, the identity file, recording, and what removing a worktree would lose."""

from __future__ import annotations

import json
import os

from dibs.core import tables
from dibs.core.events import new_event
from dibs.core.leases import Decision
from dibs.ground.errors import NotFound, UsageError
from dibs.ground.git.discover import IDENTITY_FILE
from dibs.ground.git.worktrees import git_dir_of

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NotRequired, TypedDict

    class WorktreeRecord(TypedDict):
        """A worktree `start` made, as table ``worktrees`` keeps it (key: ``path``)."""

        path: str
        agent: str
        issue: str
        branch: str
        #: The path claims taken with it (``path:GLOB``), released with it.
        files: list[str]
        base: str
        #: After a takeover: the former owner and where its worktree was.
        adopted: NotRequired[dict[str, str]]
        #: ``dibs finish --keep-worktree``: its agent let it go; the next taker adopts it.
        finished: NotRequired[bool]

    class PoolSlot(TypedDict):
        """A pool slot, as table ``pool`` keeps it (key: ``slot``)."""

        slot: str
        path: str
        agent: NotRequired[str]
        branch: NotRequired[str]
        #: Seconds the taker waited for it, and when (unix seconds) it took it.
        waited: NotRequired[float]
        taken: NotRequired[float]

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.ground.git.discover import Repo
    from dibs.service import Coordinator

#: Worktrees `start` made, by path relative to the main worktree (``record`` events).
TABLE = tables.WORKTREES
#: Pool slots, by number.
POOL = tables.POOL
#: The pool's folder, under ``worktrees.folder``.
POOL_FOLDER = "pool"


def repo_of(coord: Coordinator) -> Repo:
    """The repository the coordinator works in; worktrees need one."""
    if coord.repo is None:
        raise UsageError("worktrees need a git repository", hint="run dibs inside one")
    return coord.repo


def git(cwd: str, *args: str, check: bool = True) -> str:
    """`dibs.ground.git.run.git`, imported when first needed (subprocess is heavy)."""
    from dibs.ground.git.run import git

    return git(cwd, *args, check=check)


def issue_name(issue: str) -> str:
    """*issue* as an issue resource's name (``issue:`` dropped, checked)."""
    from dibs.core.resources import parse_resource

    return parse_resource("issue:" + issue.removeprefix("issue:")).name


def branch_for(coord: Coordinator, issue: str) -> str:
    """The branch an issue's worktree gets (``worktrees.branch``, default ``agent/{issue}``).

    Raises:
        UsageError: the name breaks git's rules for branch names (``git check-ref-format``).
    """
    branch = str(coord.settings["worktrees.branch"]).replace("{issue}", issue)
    parts = branch.split("/")
    bad = (
        any(c in branch for c in " ~^:?*[\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in branch)
        or ".." in branch
        or "@{" in branch
        or branch.endswith((".", ".lock"))
        or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts)
        or branch.startswith("-")
    )
    if bad:
        raise UsageError(
            f"{branch!r} is not a valid git branch name",
            hint="name the issue without '..', spaces, ~^:?*[ or a leading '.' or '-'",
        )
    return branch


def folder_of(coord: Coordinator, root: str) -> str:
    """Where dibs makes worktrees (``worktrees.folder``) under the main worktree *root*."""
    return os.path.join(root, str(coord.settings["worktrees.folder"]).rstrip("/"))


def target_tip(coord: Coordinator, root: str, base: str | None) -> str:
    """The commit new work starts from: *base*, else the merge target, else HEAD."""
    ref = base or f"refs/heads/{coord.settings['merge.target']}"
    tip = git(root, "rev-parse", "--verify", "--quiet", ref + "^{commit}", check=False).strip()
    if not tip and base is None:
        tip = git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False).strip()
    if not tip:
        raise NotFound(
            f"cannot start from {base or coord.settings['merge.target']!r}: not a commit",
            hint="pass --base REF, or set merge.target in dibs.toml",
        )
    return tip


def write_identity(path: str, agent: str, token: str) -> str:
    """Record who works in the worktree at *path*, in its own git dir (0600); returns the file."""
    target = os.path.join(git_dir_of(path), IDENTITY_FILE)
    fd = os.open(target + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"agent": agent, "token": token}, f)
    os.replace(target + ".tmp", target)
    return target


def acting_agent(coord: Coordinator, agent: str | None, default: str) -> tuple[str, bool]:
    """Make sure the coordinator acts as an agent with a token; True when it registered now."""
    from dibs.service.checks import check_agent_name

    name = agent or coord.agent or default
    check_agent_name(name)
    if coord.agent == name and coord.token:
        return name, False
    coord.register(name)
    return name, True


def token_of(coord: Coordinator) -> str:
    """The acting agent's session token (it is written into the worktree it works in)."""
    if not coord.token:
        from dibs.ground.errors import AuthError

        raise AuthError("no session token", hint="register the agent first")
    return coord.token


def write_record(
    coord: Coordinator, table: str, key: str, value: dict[str, Any] | None, *, by: str | None = None
) -> None:
    """Set (or, with None, delete) one record of *table* in one step, logged with *by*."""

    def decide(_state: State, ctx: Context) -> Decision:
        event = new_event("record", ctx.now, table=table, key=key, value=value, by=by)
        return Decision([event])

    coord.transact(decide)


def lost_work(root: str, path: str, branch: str, target: str) -> dict[str, list[str]]:
    """What removing a worktree (and its branch) would lose: changed files, unlanded commits.

    A commit counts as landed when the target has it or an equivalent patch (``git cherry``),
    so a branch the merge queue rebased and landed is not reported.
    """
    from dibs.ground.git.run import GitError

    changed = []
    if os.path.isdir(path):
        status = git(path, "status", "--porcelain", "--untracked-files=all")
        changed = [line[3:] for line in status.splitlines() if line.strip()]
    try:
        cherry = git(root, "cherry", f"refs/heads/{target}", f"refs/heads/{branch}")
    except GitError:  # no such branch (nothing to lose), or no target: compare with HEAD
        branch_exists = git(
            root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False
        )
        cherry = (
            git(root, "cherry", "HEAD", f"refs/heads/{branch}") if branch_exists.strip() else ""
        )
    unlanded = [line[2:] for line in cherry.splitlines() if line.startswith("+ ")]
    return {"changed": changed, "unlanded": unlanded}
