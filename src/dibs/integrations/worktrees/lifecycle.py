"""An agent's issue worktree: `start` (claim, make or adopt, record) and `finish` (release,
remove, never destroying work)."""

from __future__ import annotations

import contextlib
import os

from dibs.core.events import new_event
from dibs.core.leases import Decision
from dibs.ground.errors import DibsError, NotFound, Refused
from dibs.ground.git.worktrees import checked_out, git_dir_of, worktree_list
from dibs.integrations.worktrees.common import (
    TABLE,
    acting_agent,
    branch_for,
    folder_of,
    git,
    issue_name,
    lost_work,
    repo_of,
    target_tip,
    token_of,
    write_identity,
    write_record,
)
from dibs.integrations.worktrees.decide import claims_to_release, may_adopt, owner_status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.integrations.worktrees.common import WorktreeRecord
    from dibs.service import Coordinator
    from dibs.service.identity import Actor


def start(
    coord: Coordinator,
    issue: str,
    *,
    agent: str | None = None,
    files: Iterable[str] = (),
    base: str | None = None,
    ttl: float | None = None,
    taken: bool = False,
) -> dict[str, Any]:
    """Claim *issue* (and *files*), make its worktree and branch, and say where it is.

    Run again by the same agent, it resumes: the claims are renewed and the worktree kept.
    When the issue's worktree belongs to an agent that lost the issue (dead, stale, or gone:
    its claim was evicted or stolen), it is taken over in the same step: moved, with its
    branch, commits and uncommitted changes, to this agent's place (``adopted``).
    On any failure nothing is left half-made: new claims are released, a new branch deleted,
    an adopted worktree moved back.

    Args:
        ttl: seconds the claims live without a heartbeat (default: the agent's).
        taken: the caller claimed ``issue:ISSUE`` just before (``dibs next --start``): a
            failure releases that claim too.

    Returns:
        ``{"agent", "token", "issue", "path", "branch", "base", "claims", "resumed"}``, and
        ``adopted`` (the former owner and path) after a takeover.

    Raises:
        Conflict: the issue or a file is held by another agent (exit 3).
        Refused: the branch is checked out elsewhere, the path is taken, or the issue's
            worktree belongs to a live agent (exit 3).
    """
    repo = repo_of(coord)
    issue = issue_name(issue)
    globs = [g if g.startswith("path:") else f"path:{g}" for g in files]
    root = repo.main_root
    name, registered = acting_agent(coord, agent, "agent-" + issue.lower().replace("_", "-")[:58])
    token = token_of(coord)
    branch = branch_for(coord, issue)
    path = os.path.join(folder_of(coord, root), name, issue)
    rel = os.path.relpath(path, root)
    state, _ = coord.read()
    known = state.tables.get(TABLE, {}).get(rel)
    resumed = known is not None and known["agent"] == name and os.path.isdir(path)
    held_before = {lease["resource"] for lease in state.leases_of(name)}
    if taken:
        held_before.discard(f"issue:{issue}")
    claims = coord.claim([f"issue:{issue}", *globs], ttl=ttl, note=f"start {issue}")
    made_branch = False
    adopted: dict[str, Any] | None = None
    try:
        if not resumed:
            adopted = _adopt(coord, root, issue, name, path=path, branch=branch)
            if adopted is None or not adopted["here"]:
                made_branch = _make_worktree(coord, root, path, branch, base)
        write_identity(path, name, token)
        value: dict[str, Any] = {
            "path": rel,
            "agent": name,
            "issue": issue,
            "branch": branch,
            "files": globs,
            "base": base or str(coord.settings["merge.target"]),
        }
        if adopted is not None:
            value["adopted"] = {"agent": adopted["agent"], "path": adopted["path"]}
            _record_adoption(coord, adopted["forget"], value)
        elif not resumed:
            write_record(coord, TABLE, rel, value)
    except BaseException:
        if adopted is not None and adopted["moved"]:
            git(root, "worktree", "move", path, os.path.join(root, adopted["path"]), check=False)
        _undo(
            coord,
            root,
            path,
            branch,
            made_branch=made_branch and not resumed,
            held_before=held_before,
            registered=registered,
        )
        raise
    return {
        **value,
        "path": path,
        "token": coord.token,
        "claims": claims,
        "resumed": resumed,
        "registered": registered,
    }


def _adopt(
    coord: Coordinator, root: str, issue: str, name: str, *, path: str, branch: str
) -> dict[str, Any] | None:
    """Move the issue's worktree of a former holder to *path*; None when there is none.

    Called with ``issue:ISSUE`` just claimed by *name*, so a former owner has lost it; its
    worktree (the work to resume) is taken over unless that owner is still live and did not
    let it go (``dibs finish --keep-worktree``). The worktree is found by its record, or,
    when a process died between moving or making one and recording it, by where git has the
    issue's branch checked out under the folder.

    Returns:
        ``{"agent", "path" (relative), "moved", "here" (the worktree is now at *path*),
        "forget" (records to drop)}``.
    """
    state, now = coord.read()
    ctx = coord.context(now)
    table = state.tables.get(TABLE, {})
    former = sorted(
        (rel, record)
        for rel, record in table.items()
        if record.get("issue") == issue and record.get("agent") != name
    )
    elsewhere = checked_out(worktree_list(root)).get(branch)
    folder = os.path.relpath(folder_of(coord, root), root)
    if elsewhere is not None:
        rel = os.path.relpath(elsewhere, root)
        if not rel.startswith(folder + os.sep):
            return None  # not one dibs made: `_make_worktree` explains the refusal
        record = table.get(rel) or {}
        owner = record.get("agent") or rel[len(folder) + 1 :].split(os.sep)[0]
    elif former:
        (rel, record), owner = former[0], former[0][1]["agent"]
    else:
        return None
    forget = [r for r, _ in former if r != os.path.relpath(path, root)]
    adopted = {"agent": owner, "path": rel, "moved": False, "here": False, "forget": forget}
    if elsewhere is not None and os.path.realpath(elsewhere) == os.path.realpath(path):
        adopted["here"] = True  # our own, made or moved by an earlier start that died
        return adopted
    status = owner_status(state, ctx, owner)
    if elsewhere is not None and not may_adopt(state, ctx, owner, record):
        raise Refused(
            f"the worktree of {issue} ({rel}) belongs to {owner}, which is live",
            hint=f"ask {owner} to finish it, or take it over once it is stale (dibs next --steal)",
            path=rel,
            agent=owner,
        )
    if elsewhere is None:
        git(root, "worktree", "prune", check=False)  # a record whose folder is gone
        return adopted
    if os.path.lexists(path):
        raise Refused(f"{path} already exists", hint="remove it, or run `dibs doctor` to see why")
    if status in ("dead", "gone"):  # a git command it ran died with it, holding the index
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(git_dir_of(elsewhere), "index.lock"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    git(root, "worktree", "move", elsewhere, path)
    adopted["moved"] = adopted["here"] = True
    return adopted


def _record_adoption(coord: Coordinator, forget: list[str], value: dict[str, Any]) -> None:
    """The takeover, logged as one transaction: the new record, the former ones dropped."""

    def decide(_state: State, ctx: Context) -> Decision:
        events = [
            new_event("record", ctx.now, table=TABLE, key=rel, value=None)
            for rel in forget
            if rel != value["path"]
        ]
        events.append(
            new_event(
                "worktree-adopt",
                ctx.now,
                agent=value["agent"],
                resource=f"issue:{value['issue']}",
                table=TABLE,
                key=value["path"],
                value=value,
            )
        )
        return Decision(events)

    coord.transact(decide)


def _make_worktree(coord: Coordinator, root: str, path: str, branch: str, base: str | None) -> bool:
    """Add the worktree at *path* on a new *branch* from the base; True if the branch is new.

    The happy path is one git call; the checks that explain a failure run only after one.
    """
    from dibs.ground.git.run import GitError

    if os.path.lexists(path):
        raise Refused(f"{path} already exists", hint="remove it, or run `dibs doctor` to see why")
    start_point = base or f"refs/heads/{coord.settings['merge.target']}"
    try:
        git(root, "worktree", "add", "--quiet", "-b", branch, path, start_point)
    except GitError:
        pass
    else:
        return True
    exists = git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    if exists.strip():
        elsewhere = checked_out(worktree_list(root)).get(branch)
        if elsewhere is not None:
            raise Refused(
                f"branch {branch} is already checked out in {elsewhere}",
                hint="finish that worktree first (dibs finish), or use another branch name",
            )
        git(root, "worktree", "add", "--quiet", path, branch)  # an earlier start's branch
        return False
    tip = target_tip(coord, root, base)  # a clear error when the base is not a commit
    git(root, "worktree", "add", "--quiet", "-b", branch, path, tip)
    return True


def _undo(
    coord: Coordinator,
    root: str,
    path: str,
    branch: str,
    *,
    made_branch: bool,
    held_before: set[str],
    registered: bool,
) -> None:
    """Leave nothing half-made: new claims released, a new worktree and branch removed."""
    with contextlib.suppress(DibsError):
        if registered:
            coord.unregister()
        else:
            mine = {lease["resource"] for lease in coord.read()[0].leases_of(str(coord.agent))}
            new = sorted(mine - held_before)
            if new:
                coord.release(new)
        if made_branch:
            git(root, "worktree", "remove", "--force", path, check=False)
            git(root, "branch", "-D", branch, check=False)


def _find(coord: Coordinator, state: State, issue: str | None) -> tuple[str, WorktreeRecord]:
    """The worktree record to finish: by issue, the one we are in, or the agent's only one."""
    table = state.tables.get(TABLE, {})
    repo = repo_of(coord)
    root = repo.main_root
    if issue is not None:
        issue = issue_name(issue)
        found = [(k, v) for k, v in table.items() if v["issue"] == issue]
    else:
        here = os.path.relpath(os.path.realpath(repo.root), os.path.realpath(root))
        found = [(k, v) for k, v in table.items() if k == here]
        if not found and coord.agent:
            found = [(k, v) for k, v in table.items() if v["agent"] == coord.agent]
    if len(found) != 1:
        which = f"issue {issue}" if issue else "this worktree or agent"
        said = "no worktree" if not found else f"{len(found)} worktrees"
        raise NotFound(f"{said} for {which}", hint="name the issue: dibs finish ISSUE")
    return found[0]


def finish(
    coord: Coordinator,
    issue: str | None = None,
    *,
    keep_worktree: bool = False,
    force: bool = False,
    as_operator: bool = False,
) -> dict[str, Any]:
    """Release the agent's claims, remove its worktree, delete its branch if landed.

    Only the worktree's agent (with its token) finishes it, or a person with *as_operator*
    (its claims are then force-evicted, logged with the OS user and host). Refuses (exit 3,
    listing what would be lost) when the worktree has uncommitted changes or the branch has
    commits the target lacks, unless *force*; even then an unlanded branch is kept (only the
    worktree goes).

    Raises:
        AuthError: no agent or not its token, and not *as_operator* (exit 1).
        Refused: another agent's worktree (exit 3), or work would be lost.
    """
    from dibs.service.identity import actor, not_yours

    repo = repo_of(coord)
    root = repo.main_root
    state, _ = coord.read()
    rel, record = _find(coord, state, issue)
    acting = actor(state, coord.agent, coord.token, as_operator=as_operator)
    refusal = not_yours(acting, record["agent"], f"the worktree of {record['issue']}")
    if refusal is not None:
        raise refusal
    path = os.path.join(root, rel)
    target = str(coord.settings["merge.target"])
    lost = lost_work(root, path, record["branch"], target)
    if (lost["changed"] or lost["unlanded"]) and not force and not keep_worktree:
        parts = []
        if lost["changed"]:
            parts.append(f"{len(lost['changed'])} uncommitted: {', '.join(lost['changed'][:10])}")
        if lost["unlanded"]:
            parts.append(f"{len(lost['unlanded'])} commits not on {target}")
        raise Refused(
            f"finishing {record['issue']} would lose work ({'; '.join(parts)})",
            hint="commit and land it (dibs land), or pass --force to drop the worktree "
            "(an unlanded branch is kept)",
            **lost,
        )
    released = _release_for(coord, state, record, acting)
    removed = False
    if not keep_worktree and os.path.isdir(path):
        git(root, "worktree", "remove", "--force", path)
        removed = True
    deleted = False
    if not keep_worktree and not lost["unlanded"]:
        git(root, "branch", "-D", record["branch"], check=False)
        deleted = True
    write_record(
        coord,
        TABLE,
        rel,
        None if not keep_worktree else {**record, "finished": True},
        by=acting.by,
    )
    return {
        "issue": record["issue"],
        "agent": record["agent"],
        "path": path,
        "branch": record["branch"],
        "released": released,
        "removed_worktree": removed,
        "deleted_branch": deleted,
        "kept_branch": bool(lost["unlanded"]) and not keep_worktree,
        "root": root,
    }


def _release_for(
    coord: Coordinator, state: State, record: WorktreeRecord, acting: Actor
) -> list[str]:
    """Release the finishing agent's claims (as it, or by a person's eviction), except those
    of its other tasks: other issues, and the files of its other worktrees."""
    agent = record["agent"]
    held = claims_to_release(state, record)
    if not held:
        return []
    if acting.agent == agent:
        try:
            return [r["resource"] for r in coord.release(held)]
        except DibsError:
            return []
    for resource in held:
        coord.evict(resource, reason=f"finish {record['issue']} (operator)", agent=agent)
    return held
