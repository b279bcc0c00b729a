"""Worktrees and the agent lifecycle: start, finish, the pool, and agreeing with git.

`start` gives an agent its issue, its own worktree and branch in one step, all or nothing;
`finish` cleans up without ever destroying work; the pool keeps reusable worktrees that agents
take and give back. Each worktree `start` makes knows its agent: the identity is written to the
worktree's own git dir (``dibs-agent.json``, mode 0600), so commands run inside it need no
flags.

The store remembers worktrees in table ``worktrees`` (key: the path relative to the
repository root) and pool slots in table ``pool`` (key: the slot number), through ``record``
events; `reconcile` (``dibs doctor``) compares both with git's own list and the processes on
this host.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from dibs.core.events import new_event
from dibs.core.leases import Decision, ForceEvict, agent_status, eviction_reason
from dibs.ground.errors import Conflict, DibsError, LockTimeout, NotFound, Refused, UsageError
from dibs.ground.git.discover import IDENTITY_FILE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.ground.git.discover import Repo
    from dibs.service import Coordinator
    from dibs.service.identity import Actor

TABLE = "worktrees"
POOL = "pool"
POOL_FOLDER = "pool"


def _repo(coord: Coordinator) -> Repo:
    if coord.repo is None:
        raise UsageError("worktrees need a git repository", hint="run dibs inside one")
    return coord.repo


def main_root(repo: Repo) -> str:
    """The main worktree's folder (where ``.worktrees/`` lives), from any worktree."""
    return repo.main_root


def _git(cwd: str, *args: str, check: bool = True) -> str:
    from dibs.ground.git.run import git

    return git(cwd, *args, check=check)


def _issue(issue: str) -> str:
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


def _folder(coord: Coordinator, root: str) -> str:
    return os.path.join(root, str(coord.settings["worktrees.folder"]).rstrip("/"))


def _target_tip(coord: Coordinator, root: str, base: str | None) -> str:
    ref = base or f"refs/heads/{coord.settings['merge.target']}"
    tip = _git(root, "rev-parse", "--verify", "--quiet", ref + "^{commit}", check=False).strip()
    if not tip and base is None:
        tip = _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False).strip()
    if not tip:
        raise NotFound(
            f"cannot start from {base or coord.settings['merge.target']!r}: not a commit",
            hint="pass --base REF, or set merge.target in dibs.toml",
        )
    return tip


def _checked_out(root: str) -> dict[str, str]:
    """branch -> path of every worktree that has a branch checked out."""
    out: dict[str, str] = {}
    path = ""
    for line in _git(root, "worktree", "list", "--porcelain").splitlines():
        if line.startswith("worktree "):
            path = line[len("worktree ") :]
        elif line.startswith("branch refs/heads/"):
            out[line[len("branch refs/heads/") :]] = path
    return out


def _worktree_git_dir(path: str) -> str:
    """A linked worktree's own git dir, read from its ``.git`` file as git does."""
    try:
        with open(os.path.join(path, ".git"), encoding="utf-8") as f:
            line = f.read().strip()
    except (IsADirectoryError, FileNotFoundError):
        return _git(path, "rev-parse", "--absolute-git-dir").strip()
    found = line.removeprefix("gitdir: ")
    return os.path.normpath(os.path.join(path, found))


def write_identity(path: str, agent: str, token: str) -> str:
    """Record who works in the worktree at *path*, in its own git dir (0600); returns the file."""
    target = os.path.join(_worktree_git_dir(path), IDENTITY_FILE)
    fd = os.open(target + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"agent": agent, "token": token}, f)
    os.replace(target + ".tmp", target)
    return target


def _acting(coord: Coordinator, agent: str | None, default: str) -> tuple[str, bool]:
    """Make sure the coordinator acts as an agent with a token; True when it registered now."""
    from dibs.service.checks import check_agent_name

    name = agent or coord.agent or default
    check_agent_name(name)
    if coord.agent == name and coord.token:
        return name, False
    coord.register(name)
    return name, True


def _token(coord: Coordinator) -> str:
    if not coord.token:
        from dibs.ground.errors import AuthError

        raise AuthError("no session token", hint="register the agent first")
    return coord.token


def _record(
    coord: Coordinator, table: str, key: str, value: dict[str, Any] | None, *, by: str | None = None
) -> None:
    def decide(_state: State, ctx: Context) -> Decision:
        event = new_event("record", ctx.now, table=table, key=key, value=value, by=by)
        return Decision([event])

    coord.transact(decide)


# start / finish ---------------------------------------------------------------------------


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
    repo = _repo(coord)
    issue = _issue(issue)
    globs = [g if g.startswith("path:") else f"path:{g}" for g in files]
    root = main_root(repo)
    name, registered = _acting(coord, agent, "agent-" + issue.lower().replace("_", "-")[:58])
    token = _token(coord)
    branch = branch_for(coord, issue)
    path = os.path.join(_folder(coord, root), name, issue)
    rel = os.path.relpath(path, root)
    state, _ = coord.store.read()
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
            _record(coord, TABLE, rel, value)
    except BaseException:
        if adopted is not None and adopted["moved"]:
            _git(root, "worktree", "move", path, os.path.join(root, adopted["path"]), check=False)
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
    state, now = coord.store.read()
    ctx = coord.context(now)
    table = state.tables.get(TABLE, {})
    former = sorted(
        (rel, record)
        for rel, record in table.items()
        if record.get("issue") == issue and record.get("agent") != name
    )
    elsewhere = _checked_out(root).get(branch)
    folder = os.path.relpath(_folder(coord, root), root)
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
    info = state.agents.get(owner)
    status = "gone" if info is None else agent_status(info, ctx)
    if status == "live" and not record.get("finished") and elsewhere is not None:
        raise Refused(
            f"the worktree of {issue} ({rel}) belongs to {owner}, which is live",
            hint=f"ask {owner} to finish it, or take it over once it is stale (dibs next --steal)",
            path=rel,
            agent=owner,
        )
    if elsewhere is None:
        _git(root, "worktree", "prune", check=False)  # a record whose folder is gone
        return adopted
    if os.path.lexists(path):
        raise Refused(f"{path} already exists", hint="remove it, or run `dibs doctor` to see why")
    if status in ("dead", "gone"):  # a git command it ran died with it, holding the index
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(_worktree_git_dir(elsewhere), "index.lock"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _git(root, "worktree", "move", elsewhere, path)
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
        _git(root, "worktree", "add", "--quiet", "-b", branch, path, start_point)
    except GitError:
        pass
    else:
        return True
    exists = _git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
    if exists.strip():
        elsewhere = _checked_out(root).get(branch)
        if elsewhere is not None:
            raise Refused(
                f"branch {branch} is already checked out in {elsewhere}",
                hint="finish that worktree first (dibs finish), or use another branch name",
            )
        _git(root, "worktree", "add", "--quiet", path, branch)  # an earlier start's branch
        return False
    tip = _target_tip(coord, root, base)  # a clear error when the base is not a commit
    _git(root, "worktree", "add", "--quiet", "-b", branch, path, tip)
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
    import contextlib

    with contextlib.suppress(DibsError):
        if registered:
            coord.unregister()
        else:
            mine = {
                lease["resource"] for lease in coord.store.read()[0].leases_of(str(coord.agent))
            }
            new = sorted(mine - held_before)
            if new:
                coord.release(new)
        if made_branch:
            _git(root, "worktree", "remove", "--force", path, check=False)
            _git(root, "branch", "-D", branch, check=False)


def _find(coord: Coordinator, state: State, issue: str | None) -> tuple[str, dict[str, Any]]:
    """The worktree record to finish: by issue, the one we are in, or the agent's only one."""
    table = state.tables.get(TABLE, {})
    repo = _repo(coord)
    root = main_root(repo)
    if issue is not None:
        issue = _issue(issue)
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


def lost_work(root: str, path: str, branch: str, target: str) -> dict[str, list[str]]:
    """What removing a worktree (and its branch) would lose: changed files, unlanded commits.

    A commit counts as landed when the target has it or an equivalent patch (``git cherry``),
    so a branch the merge queue rebased and landed is not reported.
    """
    from dibs.ground.git.run import GitError

    changed = []
    if os.path.isdir(path):
        status = _git(path, "status", "--porcelain", "--untracked-files=all")
        changed = [line[3:] for line in status.splitlines() if line.strip()]
    try:
        cherry = _git(root, "cherry", f"refs/heads/{target}", f"refs/heads/{branch}")
    except GitError:  # no such branch (nothing to lose), or no target: compare with HEAD
        branch_exists = _git(
            root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False
        )
        cherry = (
            _git(root, "cherry", "HEAD", f"refs/heads/{branch}") if branch_exists.strip() else ""
        )
    unlanded = [line[2:] for line in cherry.splitlines() if line.startswith("+ ")]
    return {"changed": changed, "unlanded": unlanded}


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

    repo = _repo(coord)
    root = main_root(repo)
    state, _ = coord.store.read()
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
        _git(root, "worktree", "remove", "--force", path)
        removed = True
    deleted = False
    if not keep_worktree and not lost["unlanded"]:
        _git(root, "branch", "-D", record["branch"], check=False)
        deleted = True
    _record(
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
    coord: Coordinator, state: State, record: dict[str, Any], acting: Actor
) -> list[str]:
    """Release the finishing agent's claims (as it, or by a person's eviction), except those
    of its other tasks: other issues, and the files of its other worktrees."""
    agent = record["agent"]
    others = {
        claim
        for other in state.tables.get(TABLE, {}).values()
        if other["agent"] == agent and other["issue"] != record["issue"]
        for claim in other.get("files") or ()
    }
    held = [
        lease["resource"]
        for lease in state.leases_of(agent)
        if lease["resource"] not in others
        and not (
            lease["resource"].startswith("issue:")
            and lease["resource"] != f"issue:{record['issue']}"
        )
    ]
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


# The pool ---------------------------------------------------------------------------------


def pool_init(coord: Coordinator, slots: int) -> list[dict[str, Any]]:
    """Make sure the pool has *slots* reusable worktrees (detached at the target's tip)."""
    from dibs.service.checks import check_number

    check_number(slots, "slots", low=1, high=256, whole=True, hint="give 1 to 256")
    repo = _repo(coord)
    root = main_root(repo)
    tip = _target_tip(coord, root, None)
    state, _ = coord.store.read()
    table = state.tables.get(POOL, {})
    made = []
    for n in range(1, slots + 1):
        key = str(n)
        path = os.path.join(_folder(coord, root), POOL_FOLDER, key)
        if key in table and os.path.isdir(path):
            continue
        if not os.path.isdir(path):
            _git(root, "worktree", "add", "--quiet", "--detach", path, tip)
        value = {"slot": key, "path": os.path.relpath(path, root)}
        _record(coord, POOL, key, value)
        made.append(value)
    return made


def _pool_branch(slot: str, agent: str) -> str:
    return f"pool/{slot}/{agent}"


def pool_take(
    coord: Coordinator, *, agent: str | None = None, wait: float | None = None
) -> dict[str, Any]:
    """Claim a free pool slot (``worktree:N``) and check out a fresh branch there.

    Two agents never get one slot: the claim decides. With *wait*, keep trying with backoff
    and jitter while every slot is busy; the seconds waited are recorded with the slot.
    """
    from dibs.ground.backoff import jitter as _jitter
    from dibs.service.checks import check_wait

    wait = check_wait(wait)
    repo = _repo(coord)
    root = main_root(repo)
    name, _ = _acting(coord, agent, f"pool-{os.getpid()}")
    started = time.monotonic()
    deadline = started + (wait or 0.0)
    delay = 0.05
    while True:
        state, now = coord.store.read()
        ctx = coord.context(now)
        slots = sorted(state.tables.get(POOL, {}), key=int)
        if not slots:
            raise NotFound("the pool has no slots", hint="make some: dibs pool init N")
        mine = [s for s in slots if name in state.claims.get(f"worktree:{s}", {})]
        free = mine or [
            s
            for s in slots
            if not any(
                not eviction_reason(state, lease, ctx)
                for lease in state.claims.get(f"worktree:{s}", {}).values()
            )
        ]
        for slot in free:
            try:
                coord.claim([f"worktree:{slot}"], note="pool slot")
            except Conflict:
                continue
            waited = round(time.monotonic() - started, 3)
            return _check_out_slot(coord, root, slot, name, waited)
        if time.monotonic() >= deadline:
            if wait:
                raise LockTimeout(
                    f"every one of {len(slots)} pool slots is still busy after {wait:g} s",
                    hint="wait longer, or grow the pool: dibs pool init N",
                )
            raise Conflict(
                f"every one of {len(slots)} pool slots is busy",
                hint="wait for one (dibs pool take --wait), or grow the pool: dibs pool init N",
            )
        time.sleep(min(delay * _jitter(), max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 2.0)


def _check_out_slot(
    coord: Coordinator, root: str, slot: str, agent: str, waited: float
) -> dict[str, Any]:
    state, _ = coord.store.read()
    record = dict(state.tables.get(POOL, {}).get(slot) or {})
    path = os.path.join(root, record.get("path") or os.path.join(".worktrees", POOL_FOLDER, slot))
    branch = _pool_branch(slot, agent)
    if record.get("agent") != agent or record.get("branch") != branch:
        if not os.path.isdir(path):
            _git(
                root, "worktree", "add", "--quiet", "--detach", path, _target_tip(coord, root, None)
            )
        tip = _target_tip(coord, root, None)
        _git(path, "checkout", "--quiet", "-B", branch, tip)
        write_identity(path, agent, _token(coord))
        record.update(slot=slot, agent=agent, branch=branch, waited=waited)
        record["taken"] = time.time()
        _record(coord, POOL, slot, record)
    return {**record, "path": path}


def pool_give(
    coord: Coordinator, slot: str | None = None, *, force: bool = False, as_operator: bool = False
) -> dict[str, Any]:
    """Reset the agent's slot (detached at the target) and release it.

    Only the slot's agent (with its token) gives it back, or a person with *as_operator*.
    Refuses, like `finish`, when that would lose uncommitted changes or unlanded commits.
    """
    from dibs.service.identity import actor, not_yours

    repo = _repo(coord)
    root = main_root(repo)
    state, _ = coord.store.read()
    table = state.tables.get(POOL, {})
    if slot is None:
        mine = [s for s, r in table.items() if r.get("agent") == coord.agent]
        if len(mine) != 1:
            raise NotFound("which slot?", hint="name it: dibs pool give SLOT")
        slot = mine[0]
    record = table.get(str(slot))
    if record is None:
        raise NotFound(f"no pool slot {slot!r}", hint="see `dibs pool status`")
    holders = state.claims.get(f"worktree:{slot}", {})
    acting = actor(state, coord.agent, coord.token, as_operator=as_operator)
    owner = record.get("agent") or next(iter(holders), None)
    refusal = not_yours(acting, owner, f"pool slot {slot}")
    if refusal is not None:
        raise refusal
    path = os.path.join(root, record["path"])
    branch = record.get("branch")
    target = str(coord.settings["merge.target"])
    if branch and not force:
        lost = lost_work(root, path, branch, target)
        if lost["changed"] or lost["unlanded"]:
            raise Refused(
                f"giving slot {slot} back would lose work "
                f"({len(lost['changed'])} uncommitted files, {len(lost['unlanded'])} commits "
                f"not on {target})",
                hint="commit and land it first, or pass --force (an unlanded branch is kept)",
                **lost,
            )
    if os.path.isdir(path):
        _git(path, "checkout", "--quiet", "--force", "--detach", _target_tip(coord, root, None))
        _git(path, "clean", "-ffdq")
        git_dir = _git(path, "rev-parse", "--absolute-git-dir").strip()
        with __import__("contextlib").suppress(FileNotFoundError):
            os.unlink(os.path.join(git_dir, IDENTITY_FILE))
    if branch and not lost_work(root, path, branch, target)["unlanded"]:
        _git(root, "branch", "-D", branch, check=False)
    if acting.agent is not None and acting.agent in holders:
        coord.release([f"worktree:{slot}"])
    elif holders:
        coord.evict(f"worktree:{slot}", reason="pool give (operator)")
    _record(coord, POOL, str(slot), {"slot": str(slot), "path": record["path"]}, by=acting.by)
    return {"slot": str(slot), "path": path, "released": True}


def pool_status(coord: Coordinator) -> list[dict[str, Any]]:
    """Every slot: its path, and who holds it since when."""
    state, now = coord.store.read()
    ctx = coord.context(now)
    out = []
    for slot in sorted(state.tables.get(POOL, {}), key=int):
        record = state.tables[POOL][slot]
        holders = [
            lease
            for lease in state.claims.get(f"worktree:{slot}", {}).values()
            if not eviction_reason(state, lease, ctx)
        ]
        row = {"slot": slot, "path": record["path"], "agent": None, "branch": None}
        if holders:
            row.update(
                agent=holders[0]["agent"],
                branch=record.get("branch"),
                since=record.get("taken"),
                waited=record.get("waited"),
            )
        out.append(row)
    return out


# Looking and reconciling ------------------------------------------------------------------


def _git_worktrees(root: str) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    for block in _git(root, "worktree", "list", "--porcelain").split("\n\n"):
        entry: dict[str, Any] = {}
        for line in block.splitlines():
            key, _, value = line.partition(" ")
            entry[key] = value or True
        if "worktree" in entry:
            entries.append(entry)
    return entries


def listing(coord: Coordinator) -> list[dict[str, Any]]:
    """Every worktree git knows and every one dibs remembers: path, branch, agent, issue, health."""
    repo = _repo(coord)
    root = main_root(repo)
    state, now = coord.store.read()
    ctx = coord.context(now)
    known = dict(state.tables.get(TABLE, {}))
    pool = {r["path"]: r for r in state.tables.get(POOL, {}).values()}
    rows = []
    for entry in _git_worktrees(root):
        path = entry["worktree"]
        rel = os.path.relpath(path, root)
        record = known.pop(rel, None) or pool.get(rel)
        branch = str(entry.get("branch", "")).removeprefix("refs/heads/") or "(detached)"
        row = {"path": path, "branch": branch, "agent": None, "issue": None}
        if rel == ".":
            row["health"] = "main"
        elif entry.get("prunable"):
            row["health"] = "prunable"
        elif record is None:
            row["health"] = "unknown to dibs"
        else:
            row.update(
                agent=record.get("agent"), issue=record.get("issue"), slot=record.get("slot")
            )
            row["health"] = _health(state, ctx, record)
        rows.append(row)
    for rel, record in known.items():
        rows.append(
            {
                "path": os.path.join(root, rel),
                "branch": record["branch"],
                "agent": record["agent"],
                "issue": record["issue"],
                "health": "missing",
            }
        )
    return rows


def _health(state: State, ctx: Context, record: dict[str, Any]) -> str:
    agent = record.get("agent")
    if agent is None:
        return "free"
    info = state.agents.get(agent)
    if info is None:
        return "agent gone"
    status = agent_status(info, ctx)
    return "ok" if status == "live" else f"agent {status}"


def reconcile(coord: Coordinator, *, repair: bool = False) -> list[dict[str, Any]]:
    """Compare the store with git's worktrees and this host's processes.

    Each finding says what ``--repair`` does; with *repair* it is done and logged (evictions
    carry ``by: doctor`` and the reason).
    """
    repo = _repo(coord)
    root = main_root(repo)
    findings: list[dict[str, Any]] = []
    state, now = coord.store.read()
    ctx = coord.context(now)
    entries = {os.path.relpath(e["worktree"], root): e for e in _git_worktrees(root)}

    def found(kind: str, message: str, fix: str, act: Any = None, repairable: bool = True) -> None:
        item = {"kind": kind, "message": message, "repair": fix, "repairable": repairable}
        item["repaired"] = False
        if repair and act is not None:
            act()
            item["repaired"] = True
        findings.append(item)

    # Read before repairs change the state: a worktree removed below is not an orphan.
    owned = set(state.tables.get(TABLE, {})) | {
        r["path"] for r in state.tables.get(POOL, {}).values()
    }
    for finding in _stored_findings(coord, state, ctx, root, entries):
        found(*finding)
    folder = os.path.relpath(_folder(coord, root), root)
    target = str(coord.settings["merge.target"])
    from dibs.integrations.queue import dead_lander_worktrees

    base = os.path.join(repo.common_dir, "dibs-land")
    landers = {os.path.realpath(p) for p in dead_lander_worktrees(base)}
    for rel, entry in sorted(entries.items()):
        if entry.get("prunable"):
            found(
                "prunable",
                f"git lists {entry['worktree']}, which no longer exists",
                "git worktree prune",
                lambda: _git(root, "worktree", "prune"),
            )
            continue
        if _half_made(state, ctx, rel, entry, folder) or (
            os.path.realpath(entry["worktree"]) in landers and entry.get("locked")
        ):
            found(
                "half-made-worktree",
                f"{entry['worktree']} was never finished: `git worktree add` was killed",
                "unlock it, delete its folder, git worktree prune",
                lambda path=entry["worktree"]: _drop_half_made(root, path),
            )
            continue
        if os.path.realpath(entry["worktree"]) in landers:
            found(
                "lander-worktree",
                f"{entry['worktree']} is the temporary worktree of a merge queue processor "
                "that died",
                "remove it",
                lambda path=entry["worktree"]: _git(root, "worktree", "remove", "--force", path),
            )
            continue
        if not rel.startswith(folder + os.sep) or rel in owned:
            continue
        branch = str(entry.get("branch", "")).removeprefix("refs/heads/")
        lost = lost_work(root, entry["worktree"], branch, target)
        clean = not lost["changed"] and not lost["unlanded"]

        def remove(path: str = entry["worktree"], branch: str = branch) -> None:
            _git(root, "worktree", "remove", path)
            if branch:
                _git(root, "branch", "-D", branch, check=False)

        found(
            "orphan-worktree",
            f"{entry['worktree']} is in {folder}/ but no agent owns it"
            + ("" if clean else " (it has work not on the target)"),
            "remove it and its branch (clean and landed)"
            if clean
            else "keep it: the next taker of its issue adopts it, or decide yourself",
            remove if clean else None,
            repairable=clean,
        )
    for name in sorted(state.agents):
        record = state.agents[name]
        if agent_status(record, ctx) != "dead" or not state.leases_of(name):
            continue
        held = [lease["resource"] for lease in state.leases_of(name)]

        def dead(name: str = name, held: list[str] = held) -> None:
            for resource in held:
                _evict(coord, resource, name, "holder-dead")

        found(
            "dead-agent",
            f"{name}'s process {record['pid']} is gone, and it still holds {', '.join(held)}",
            "evict its claims",
            dead,
        )
    for text, holders in sorted(state.claims.items()):
        exclusive = [a for a, lease in holders.items() if lease["mode"] == "exclusive"]
        if len(exclusive) > 1:
            found(
                "held-twice",
                f"{text} is held exclusively by {', '.join(exclusive)} at once: this must never"
                " happen; please report it with the log",
                "nothing automatic: evict one by hand (dibs evict)",
                repairable=False,
            )
    return findings


def _drop_half_made(root: str, path: str) -> None:
    import shutil

    # `worktree remove` refuses a folder without its .git file: unlock, delete, prune.
    _git(root, "worktree", "unlock", path, check=False)
    shutil.rmtree(path, ignore_errors=True)
    _git(root, "worktree", "prune")


def _half_made(state: State, ctx: Context, rel: str, entry: dict[str, Any], folder: str) -> bool:
    """A worktree under the folder whose `git worktree add` died half-way (still locked
    ``initializing``, no commit checked out), made for an agent that is not live."""
    if entry.get("locked") != "initializing" or set(str(entry.get("HEAD", "0"))) != {"0"}:
        return False
    if not rel.startswith(folder + os.sep):
        return False
    owner = state.agents.get(rel[len(folder) + 1 :].split(os.sep, maxsplit=1)[0])
    return owner is None or agent_status(owner, ctx) != "live"


def _stored_findings(
    coord: Coordinator, state: State, ctx: Context, root: str, entries: dict[str, Any]
) -> list[tuple[str, str, str, Callable[[], None]]]:
    """Findings about the worktrees dibs remembers: gone from disk, or owned by an agent
    that is not live (see `_judge_owner`)."""
    target = str(coord.settings["merge.target"])
    # A prunable entry (its folder gone) holds no branch: it is pruned before the delete.
    checked_out = {
        str(e.get("branch", "")).removeprefix("refs/heads/")
        for e in entries.values()
        if not e.get("prunable")
    }
    out = []
    for rel, record in sorted(state.tables.get(TABLE, {}).items()):
        if rel in entries and os.path.isdir(os.path.join(root, rel)):
            judged = _judge_owner(coord, state, ctx, rel, record)
            if judged is not None:
                out.append(judged)
            continue
        held = [lease["resource"] for lease in state.leases_of(record["agent"])]
        branch = record["branch"]
        exists = _git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
        drop = (
            bool(exists.strip())
            and branch not in checked_out
            and not lost_work(root, "", branch, target)["unlanded"]
        )

        def gone(
            rel: str = rel,
            record: dict[str, Any] = record,
            held: list[str] = held,
            drop: bool = drop,
        ) -> None:
            for resource in held:
                _evict(coord, resource, record["agent"], "worktree gone")
            if drop:
                _git(root, "worktree", "prune", check=False)
                _git(root, "branch", "-D", record["branch"], check=False)
            _record(coord, TABLE, rel, None)

        out.append(
            (
                "worktree-gone",
                f"{rel} ({record['agent']}, issue {record['issue']}) is gone from disk",
                f"release {', '.join(held) or 'nothing'} and forget the worktree"
                + (f" (and its landed branch {branch})" if drop else ""),
                gone,
            )
        )
    return out


def _judge_owner(
    coord: Coordinator, state: State, ctx: Context, rel: str, record: dict[str, Any]
) -> tuple[str, str, str, Callable[[], None]] | None:
    """A worktree on disk is judged by its owner's health and its branch's state; the
    finding (kind, message, what --repair does, the repair), or None when all is well.

    A live owner's is fine. A dead, stale or gone owner's worktree with nothing to lose (its
    branch landed, or never had a commit) is removed with its branch; one with unlanded work
    is kept and offered: a stale owner's issue claim is evicted (a dead one's go with the
    dead-agent finding) so that the next taker (`dibs next --start`, `dibs start ISSUE`)
    adopts the worktree.
    """
    owner = record["agent"]
    info = state.agents.get(owner)
    status = "gone" if info is None else agent_status(info, ctx)
    if status == "live":
        return None
    root = main_root(_repo(coord))
    target = str(coord.settings["merge.target"])
    path = os.path.join(root, rel)
    issue = f"issue:{record['issue']}"
    # A dead owner's claims are evicted by the dead-agent finding; a gone one holds none.
    held = [lease["resource"] for lease in state.leases_of(owner) if lease["resource"] == issue]
    held = held if status == "stale" else []
    lost = lost_work(root, path, record["branch"], target)
    who = f"{rel} ({owner}, {status}, issue {record['issue']})"
    if not lost["changed"] and not lost["unlanded"]:

        def remove() -> None:
            for resource in held:
                _evict(coord, resource, owner, f"worktree landed, agent {status}")
            _git(root, "worktree", "remove", "--force", path)
            _git(root, "branch", "-D", record["branch"], check=False)
            _record(coord, TABLE, rel, None)

        return (
            "abandoned-landed",
            f"{who}: its agent is {status}; branch {record['branch']} has nothing off {target}",
            "remove the worktree and its branch, forget it"
            + (f", evict {', '.join(held)}" if held else ""),
            remove,
        )
    parts = [f"{len(lost['changed'])} uncommitted"] if lost["changed"] else []
    parts += [f"{len(lost['unlanded'])} commits not on {target}"] if lost["unlanded"] else []

    def offer() -> None:
        for resource in held:
            _evict(coord, resource, owner, f"worktree offered, agent {status}")

    return (
        "abandoned-work",
        f"{who}: its agent is {status}, with work not landed ({'; '.join(parts)})",
        (f"evict {', '.join(held)}; " if held else "")
        + f"keep the worktree for the next taker of {record['issue']} (dibs next --start "
        f"or dibs start {record['issue']} adopts it)",
        offer,
    )


def _evict(coord: Coordinator, resource: str, agent: str, reason: str) -> None:
    from dibs.core.leases import decide
    from dibs.core.resources import parse_resource
    from dibs.service.identity import operator

    # `doctor --repair` is a person's act: logged as the OS user and host, like `dibs evict`.
    command = ForceEvict(
        parse_resource(resource), by=operator(), reason=f"doctor --repair: {reason}", agent=agent
    )
    with contextlib.suppress(NotFound):  # evicted meanwhile (or by an earlier finding)
        coord.transact(lambda state, ctx: decide(state, command, ctx))


# run --------------------------------------------------------------------------------------


def _start_watcher() -> tuple[Any, int]:
    """Start `dibs.ground.platform.watch` on a pipe only this process can write; (process, pipe)."""
    import subprocess
    import sys

    read, write = os.pipe()
    try:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "dibs.ground.platform.watch"],
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    return watcher, write


def _end_watcher(watcher: Any, pipe: int, *, done: bool = False) -> None:
    """Tell the watcher the command ended (*done*) or never started, and reap it."""
    import contextlib
    import subprocess

    with contextlib.suppress(OSError):
        if done:
            os.write(pipe, b"done\n")
        os.close(pipe)
    with contextlib.suppress(subprocess.TimeoutExpired):
        watcher.wait(timeout=10)


def _spawn(
    command: list[str], cwd: str | None, env: dict[str, str], *, interactive: bool
) -> tuple[Any, Any, int]:
    """Start *command* watched by `dibs.ground.platform.watch`: (command, watcher, pipe to it)."""
    import subprocess

    from dibs.ground import platform

    watcher, pipe = _start_watcher()
    try:
        child = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            process_group=None if interactive else 0,
            preexec_fn=platform.parent_death_setup(),  # noqa: PLW1509 -- no threads here
        )
    except OSError as exc:
        _end_watcher(watcher, pipe)
        raise NotFound(
            f"cannot run {command[0]!r}: {exc.strerror}", hint="check the command"
        ) from None
    # At a terminal the command shares our process group (Ctrl-C reaches it): the watcher
    # then stops the command alone, never the group (that is the shell's job).
    try:
        os.write(pipe, f"{child.pid} {0 if interactive else 1}\n".encode())
    except OSError:
        # The watcher is gone already: on Linux the parent-death signal still stands.
        os.close(pipe)
        pipe = os.open(os.devnull, os.O_WRONLY)
    return child, watcher, pipe


def run(
    coord: Coordinator,
    command: list[str],
    *,
    agent: str | None = None,
    issue: str | None = None,
    files: Iterable[str] = (),
) -> int:
    """Run *command* as an agent: register, start the issue, heartbeat, release on exit.

    The agent watches this process: killed with SIGKILL, its claims are evicted by the next
    operation anyone makes (pid and start time), without waiting for the ttl. SIGINT and
    SIGTERM are passed on to *command*. Returns *command*'s exit code (128 + N for signal N).

    *command* never outlives this process: it would go on with the agent's token and no one
    renewing its lease. A watcher (`dibs.ground.platform.watch`) stops it (with its process group)
    once this process is gone, however it ended; on Linux the kernel also sends it SIGTERM
    when its parent dies (``PR_SET_PDEATHSIG``).
    """
    import signal
    import subprocess
    import sys

    from dibs.service.checks import check_agent_name

    if not command:
        raise UsageError("no command to run", hint="dibs run -- CMD [ARGS...]")
    name = agent or f"run-{os.getpid()}"
    check_agent_name(name)
    globs = list(files)
    coord.register(name, pid=os.getpid())
    try:
        cwd = None
        env = dict(os.environ)
        if issue is not None:
            started = start(coord, issue, agent=name, files=globs)
            cwd = started["path"]
            env["DIBS_WORKTREE"] = cwd
        elif globs:
            coord.claim([g if g.startswith("path:") else f"path:{g}" for g in globs])
        env.update(DIBS_AGENT=name, DIBS_TOKEN=_token(coord))
        interactive = sys.stdin.isatty()
        child, watcher, pipe = _spawn(command, cwd, env, interactive=interactive)

        def forward(signum: int, _frame: Any) -> None:
            # At a terminal, Ctrl-C reaches the command directly (same process group).
            if not (interactive and signum == signal.SIGINT):
                child.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            every = float(coord.settings["leases.heartbeat"])
            while True:
                try:
                    code: int = child.wait(timeout=every)
                    break
                except subprocess.TimeoutExpired:
                    try:
                        coord.heartbeat()
                    except DibsError as exc:
                        sys.stderr.write(f"dibs run: heartbeat failed: {exc.message}\n")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        _end_watcher(watcher, pipe, done=True)
        return code if code >= 0 else 128 - code
    finally:
        import contextlib

        with contextlib.suppress(DibsError):
            coord.unregister()
