"""Agreeing with git: `listing` (every worktree, with its health) and `reconcile` (what
``dibs doctor`` finds about worktrees, and what ``--repair`` does about each)."""

from __future__ import annotations

import contextlib
import os

from dibs.core.leases import ForceEvict, agent_status
from dibs.ground.errors import NotFound
from dibs.ground.git.worktrees import worktree_list
from dibs.integrations.worktrees.common import (
    POOL,
    TABLE,
    folder_of,
    git,
    lost_work,
    repo_of,
    write_record,
)
from dibs.integrations.worktrees.decide import half_made, health, owner_status

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.service import Coordinator


def listing(coord: Coordinator) -> list[dict[str, Any]]:
    """Every worktree git knows and every one dibs remembers: path, branch, agent, issue, health."""
    repo = repo_of(coord)
    root = repo.main_root
    state, now = coord.read()
    ctx = coord.context(now)
    known = dict(state.tables.get(TABLE, {}))
    pool = {r["path"]: r for r in state.tables.get(POOL, {}).values()}
    rows = []
    for entry in worktree_list(root):
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
            row["health"] = health(state, ctx, record)
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


def reconcile(coord: Coordinator, *, repair: bool = False) -> list[dict[str, Any]]:
    """Compare the store with git's worktrees and this host's processes.

    Each finding says what ``--repair`` does; with *repair* it is done and logged (evictions
    carry ``by: doctor`` and the reason).
    """
    repo = repo_of(coord)
    root = repo.main_root
    findings: list[dict[str, Any]] = []
    state, now = coord.read()
    ctx = coord.context(now)
    entries = {os.path.relpath(e["worktree"], root): e for e in worktree_list(root)}

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
    folder = os.path.relpath(folder_of(coord, root), root)
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
                lambda: git(root, "worktree", "prune"),
            )
            continue
        if half_made(state, ctx, rel, entry, folder) or (
            os.path.realpath(entry["worktree"]) in landers and entry.get("locked")
        ):
            found(
                "half-made-worktree",
                f"{entry['worktree']} was never finished: `git worktree add` was killed",
                "unlock it, delete its folder, git worktree prune",
                lambda path=entry["worktree"]: _drophalf_made(root, path),
            )
            continue
        if os.path.realpath(entry["worktree"]) in landers:
            found(
                "lander-worktree",
                f"{entry['worktree']} is the temporary worktree of a merge queue processor "
                "that died",
                "stop the gates it left running, remove it",
                lambda path=entry["worktree"]: _drop_lander(root, base, path),
            )
            continue
        if not rel.startswith(folder + os.sep) or rel in owned:
            continue
        branch = str(entry.get("branch", "")).removeprefix("refs/heads/")
        lost = lost_work(root, entry["worktree"], branch, target)
        clean = not lost["changed"] and not lost["unlanded"]

        def remove(path: str = entry["worktree"], branch: str = branch) -> None:
            git(root, "worktree", "remove", path)
            if branch:
                git(root, "branch", "-D", branch, check=False)

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


def _drop_lander(root: str, base: str, path: str) -> None:
    """Remove the temporary worktree *path* of a dead processor, its gates stopped first (they
    lead sessions of their own and outlive it: one could still be writing there)."""
    from dibs.integrations.queue import stop_orphaned_gates

    stop_orphaned_gates(base, os.path.basename(path).rsplit(".", 1)[0])
    git(root, "worktree", "remove", "--force", path)


def _drophalf_made(root: str, path: str) -> None:
    import shutil

    # `worktree remove` refuses a folder without its .git file: unlock, delete, prune.
    git(root, "worktree", "unlock", path, check=False)
    shutil.rmtree(path, ignore_errors=True)
    git(root, "worktree", "prune")


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
        exists = git(root, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
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
                git(root, "worktree", "prune", check=False)
                git(root, "branch", "-D", record["branch"], check=False)
            write_record(coord, TABLE, rel, None)

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
    status = owner_status(state, ctx, owner)
    if status == "live":
        return None
    root = repo_of(coord).main_root
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
            git(root, "worktree", "remove", "--force", path)
            git(root, "branch", "-D", record["branch"], check=False)
            write_record(coord, TABLE, rel, None)

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
