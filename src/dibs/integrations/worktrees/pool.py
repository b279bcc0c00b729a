"""The pool: reusable worktrees agents take (claiming ``worktree:N``) and give back."""

from __future__ import annotations

import contextlib
import os
import time

from dibs.core.leases import eviction_reason
from dibs.ground.errors import Conflict, LockTimeout, NotFound, Refused
from dibs.ground.git.discover import IDENTITY_FILE
from dibs.integrations.worktrees.common import (
    POOL,
    POOL_FOLDER,
    acting_agent,
    folder_of,
    git,
    lost_work,
    repo_of,
    target_tip,
    token_of,
    write_identity,
    write_record,
)
from dibs.integrations.worktrees.decide import free_slots

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.service import Coordinator


def pool_init(coord: Coordinator, slots: int) -> list[dict[str, Any]]:
    """Make sure the pool has *slots* reusable worktrees (detached at the target's tip)."""
    from dibs.service.checks import check_number

    check_number(slots, "slots", low=1, high=256, whole=True, hint="give 1 to 256")
    repo = repo_of(coord)
    root = repo.main_root
    tip = target_tip(coord, root, None)
    state, _ = coord.read()
    table = state.tables.get(POOL, {})
    made = []
    for n in range(1, slots + 1):
        key = str(n)
        path = os.path.join(folder_of(coord, root), POOL_FOLDER, key)
        if key in table and os.path.isdir(path):
            continue
        if not os.path.isdir(path):
            git(root, "worktree", "add", "--quiet", "--detach", path, tip)
        value = {"slot": key, "path": os.path.relpath(path, root)}
        write_record(coord, POOL, key, value)
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
    from dibs.ground.backoff import Backoff
    from dibs.service.checks import check_wait

    wait = check_wait(wait)
    repo = repo_of(coord)
    root = repo.main_root
    name, _ = acting_agent(coord, agent, f"pool-{os.getpid()}")
    pause = Backoff(wait or 0.0, cap=2.0)
    while True:
        state, now = coord.read()
        slots = state.tables.get(POOL, {})
        if not slots:
            raise NotFound("the pool has no slots", hint="make some: dibs pool init N")
        for slot in free_slots(state, coord.context(now), name):
            try:
                coord.claim([f"worktree:{slot}"], note="pool slot")
            except Conflict:
                continue
            return _check_out_slot(coord, root, slot, name, pause.waited())
        if pause.expired():
            if wait:
                raise LockTimeout(
                    f"every one of {len(slots)} pool slots is still busy after {wait:g} s",
                    hint="wait longer, or grow the pool: dibs pool init N",
                )
            raise Conflict(
                f"every one of {len(slots)} pool slots is busy",
                hint="wait for one (dibs pool take --wait), or grow the pool: dibs pool init N",
            )
        pause.sleep()


def _check_out_slot(
    coord: Coordinator, root: str, slot: str, agent: str, waited: float
) -> dict[str, Any]:
    state, _ = coord.read()
    record = dict(state.tables.get(POOL, {}).get(slot) or {})
    path = os.path.join(root, record.get("path") or os.path.join(".worktrees", POOL_FOLDER, slot))
    branch = _pool_branch(slot, agent)
    if record.get("agent") != agent or record.get("branch") != branch:
        if not os.path.isdir(path):
            git(root, "worktree", "add", "--quiet", "--detach", path, target_tip(coord, root, None))
        tip = target_tip(coord, root, None)
        git(path, "checkout", "--quiet", "-B", branch, tip)
        write_identity(path, agent, token_of(coord))
        record.update(slot=slot, agent=agent, branch=branch, waited=waited)
        record["taken"] = time.time()
        write_record(coord, POOL, slot, record)
    return {**record, "path": path}


def pool_give(
    coord: Coordinator, slot: str | None = None, *, force: bool = False, as_operator: bool = False
) -> dict[str, Any]:
    """Reset the agent's slot (detached at the target) and release it.

    Only the slot's agent (with its token) gives it back, or a person with *as_operator*.
    Refuses, like `finish`, when that would lose uncommitted changes or unlanded commits.
    """
    from dibs.service.identity import actor, not_yours

    repo = repo_of(coord)
    root = repo.main_root
    state, _ = coord.read()
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
        git(path, "checkout", "--quiet", "--force", "--detach", target_tip(coord, root, None))
        git(path, "clean", "-ffdq")
        git_dir = git(path, "rev-parse", "--absolute-git-dir").strip()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(git_dir, IDENTITY_FILE))
    if branch and not lost_work(root, path, branch, target)["unlanded"]:
        git(root, "branch", "-D", branch, check=False)
    if acting.agent is not None and acting.agent in holders:
        coord.release([f"worktree:{slot}"])
    elif holders:
        coord.evict(f"worktree:{slot}", reason="pool give (operator)")
    write_record(coord, POOL, str(slot), {"slot": str(slot), "path": record["path"]}, by=acting.by)
    return {"slot": str(slot), "path": path, "released": True}


def pool_status(coord: Coordinator) -> list[dict[str, Any]]:
    """Every slot: its path, and who holds it since when."""
    state, now = coord.read()
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
