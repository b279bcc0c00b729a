"""Ready work from task files, and `next`: the best ready task, taken atomically.

Task sources are read by their own tools' rules; ``tasks.sources`` in dibs.toml names them
(default: ``tasks.toml``, beads' ``.beads/`` and CCPM's ``.claude/epics/*/`` when they exist).
The format follows the path:

* a CCPM epic folder (``.claude/epics/<epic>/``, or any folder with an ``epic.md``): its
  numbered files are the tasks, read as CCPM means them (`dibs.integrations.tasks.markdown`);
  any other folder (or a glob ending in ``/``): every markdown file with a frontmatter block;
* ``*.jsonl`` / ``.beads/``: beads issues, ready exactly when ``bd ready`` would hand them out
  (`dibs.integrations.tasks.beads`), read through ``bd`` itself when it is on PATH;
* ``*.toml``: dibs's own, ``[[task]]`` tables with ``id``, ``title``, ``status``,
  ``priority``, ``depends_on``, ``conflicts_with``, ``parallel``, ``role``, ``labels``.

A malformed task is reported with its file and line and skipped; the others still count.
A task is done when its source says so or when the merge queue landed it. It is ready when its
source would hand it out, every task it depends on is done, nobody holds ``issue:<id>``, and
no task it conflicts with (in either direction) is being worked on. When dibs hands a task out,
releases it or lands it, the source hears of it (`dibs.integrations.tasks.sync`).
"""

from __future__ import annotations

from dibs.core.leases import Acquire, Decision, ForceEvict, agent_status, decide, eviction_reason
from dibs.core.rules import authenticate
from dibs.ground.errors import Conflict, DibsError, NotFound, Refused, UsageError
from dibs.integrations.listeners import DEFAULT_SOURCES
from dibs.integrations.tasks.model import (
    DONE,
    MAX_PRIORITY,
    WORKING,
    Problem,
    Task,
    issue_resource,
    priority,
)
from dibs.integrations.tasks.reading import landed_issues, load, moved_issues, root, sources

__all__ = [
    "DEFAULT_SOURCES",
    "DONE",
    "MAX_PRIORITY",
    "ROLES",
    "WORKING",
    "Problem",
    "Task",
    "agent_roles",
    "load",
    "next_task",
    "priority",
    "readiness",
    "ready",
    "root",
    "set_roles",
    "sources",
]

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.service import Coordinator


def agent_roles(state: State, agent: str | None) -> list[str]:
    """The roles *agent* registered with (``dibs agent register --role``)."""
    if not agent:
        return []
    return list(state.tables.get(ROLES, {}).get(agent) or [])


ROLES = "roles"


def set_roles(coord: Coordinator, agent: str, roles: list[str]) -> list[str]:
    """Record the roles *agent* takes work for (none: any work); logged as ``agent-roles``."""
    from dibs.core.events import new_event

    for role in roles:
        if not role or not role.isprintable() or any(ch.isspace() for ch in role):
            raise UsageError(f"role {role!r} is not a label", hint="e.g. --role reviewer")
    wanted = sorted(set(roles))

    def decide_roles(state: State, ctx: Context) -> Decision:
        from dibs.service.identity import verify

        if verify(state, coord.agent, coord.token)["name"] != agent:
            refusal = Refused(
                f"only agent {agent!r} itself records its roles",
                hint="register with --role, acting as that agent (its token)",
            )
            return Decision(error=refusal)
        if agent_roles(state, agent) == wanted:
            return Decision(result=wanted)
        event = new_event(
            "agent-roles", ctx.now, agent=agent, table=ROLES, key=agent, value=wanted or None
        )
        return Decision([event], result=wanted)

    return list(coord.transact(decide_roles).result)


def readiness(
    tasks: list[Task],
    state: State,
    ctx: Context,
    roles: list[str] | None = None,
    moved: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Each task with ``ready`` and, when not, why; best first (priority, then the order its
    tool uses). With *roles*, a task labelled with none of them is not ready. *moved*: issues
    whose landing moved the target without a ``land-done`` yet (`queue.moved_unrecorded`)."""
    from dibs.integrations.tasks import beads

    by_id = {task.id: task for task in tasks}
    landed = landed_issues(state) | set(moved)
    done = {t.id for t in tasks if _done(t)} | landed
    held = {}
    for task in tasks:
        holders = [
            lease["agent"]
            for lease in state.claims.get(f"issue:{task.id}", {}).values()
            if not eviction_reason(state, lease, ctx)
        ]
        if holders:
            held[task.id] = holders
    beads_tasks = [t for t in tasks if t.kind == "beads"]
    # A task dibs handed out says in progress in its tool because dibs told it so: once that
    # lease has run out the task is free again (the next claim evicts the lease, logged).
    leased = {t.id for t in tasks if state.claims.get(f"issue:{t.id}")}
    source_why = beads.why_not(beads_tasks, done, ctx.now.wall, leased)
    told = {t.id for t in tasks if t.status in WORKING} - (leased - set(held))
    # A finished task whose claim is still held is not in progress any more.
    working = (set(held) | told) - done
    alone = {w for w in working if w in by_id and not by_id[w].parallel}
    rows = []
    for task in sorted(tasks, key=lambda t: (t.priority, t.order)):
        why = []
        if task.id in done:
            why.append("done")
        elif task.id in held:
            why.append(f"held by {', '.join(held[task.id])}")
        elif task.kind != "beads" and task.id in told:
            why.append(f"status {task.status}")
        if task.id not in done:
            why += _waiting(task, by_id, done) + source_why.get(task.id, [])
            why += _clashes(task, by_id, working, alone)
            if roles and not set(roles) & set(task.labels):
                why.append(f"not for role {', '.join(roles)}")
        rows.append({**task.view(), "ready": not why, "why": why, "holders": held.get(task.id, [])})
    return rows


def _done(task: Task) -> bool:
    return task.status == "closed" if task.kind == "beads" else task.status in DONE


def _waiting(task: Task, by_id: dict[str, Task], done: set[str]) -> list[str]:
    waiting = [d for d in task.depends_on if d not in done]
    if not waiting:
        return []
    unknown = [d for d in waiting if d not in by_id]
    return ["waits for " + ", ".join(waiting) + (" (unknown)" if unknown else "")]


def _clashes(task: Task, by_id: dict[str, Task], working: set[str], alone: set[str]) -> list[str]:
    """Conflicts count both ways; ``parallel: false`` runs alone in its group both ways."""
    clashing = {c for c in task.conflicts_with if c in working}
    clashing |= {w for w in working if task.id in by_id[w].conflicts_with} if by_id else set()
    mates = {w for w in working if w != task.id and by_id[w].group == task.group}
    if not task.parallel:
        clashing |= mates
    clashing |= {w for w in mates if w in alone}
    clashing.discard(task.id)
    if not clashing:
        return []
    return ["conflicts with " + ", ".join(sorted(clashing)) + " (in progress)"]


def ready(coord: Coordinator, *, role: str | None = None) -> dict[str, Any]:
    """The ready tasks (and every other with why not), with the sources' problems."""
    tasks, problems = load(coord)
    state, now = coord.read()
    rows = readiness(
        tasks, state, coord.context(now), [role] if role else None, moved_issues(coord, state)
    )
    return {
        "ready": [r for r in rows if r["ready"]],
        "tasks": rows,
        "problems": [str(p) for p in problems],
    }


def next_task(
    coord: Coordinator,
    *,
    steal: bool = False,
    start: bool = False,
    ttl: float | None = None,
    role: str | None = None,
    wait: float | None = None,
) -> dict[str, Any]:
    """Take the best ready task for the acting agent, atomically: under any number of
    concurrent callers no task goes to two agents (the choice and the claim are one
    transaction). With *steal*, a task whose holder is stale or dead is taken over (logged
    as a ``force-evict`` with the reason). With *start*, its worktree is made too (or a
    former holder's taken over), with the same *ttl*; if that fails the task is released. With
    *role* (or the roles the agent registered with), only tasks labelled with it are taken.
    With *wait* (seconds), while nothing is ready it looks again until a task is taken or the
    time is up: on the local store at most a second apart, on PostgreSQL whenever something
    is let go (and every 5 s): one process waiting instead of an agent starting ``dibs next``
    again and again.

    Raises:
        NotFound: nothing is ready (the message says why the first tasks are not); with
            *wait*, nothing was ready by its end.
    """
    from dibs.ground.backoff import Backoff
    from dibs.service.checks import check_ttl, check_wait

    ttl = check_ttl(ttl)
    wait = check_wait(wait)
    pause = Backoff(wait or 0.0, cap=1.0)
    while True:
        try:
            return _take(coord, steal=steal, start=start, ttl=ttl, role=role)
        except _NothingReady as exc:
            if not wait:
                raise
            if pause.expired():
                raise NotFound(
                    f"{exc.message}; gave up after waiting {pause.waited():.1f} s",
                    hint="wait longer (--wait SECONDS), or see `dibs ready`",
                ) from None
            coord.wait_for_release(pause.pause(), pause.remaining())


class _NothingReady(NotFound):
    """No task is ready now (`next_task` may wait for one)."""


def _take(
    coord: Coordinator, *, steal: bool, start: bool, ttl: float | None, role: str | None
) -> dict[str, Any]:
    """One try of `next_task` (task files read anew: a landing may have changed them)."""
    tasks, problems = load(coord)
    agent, secret = coord._identity()
    moved = moved_issues(coord, coord.read()[0])
    stolen: list[str] = []
    if steal:
        stolen = _steal_one(coord, tasks, agent, moved)

    def choose(state: State, ctx: Context) -> Decision:
        try:  # a wrong token is told so, never "nothing is ready" (nor waited on)
            authenticate(state, agent, secret)
        except DibsError as exc:
            return Decision(error=exc)
        roles = [role] if role else agent_roles(state, agent)
        rows = readiness(tasks, state, ctx, roles or None, moved)
        for row in (r for r in rows if r["ready"]):
            note = f"next: {row['title']}"
            command = Acquire(agent, secret, [issue_resource(row["id"])], ttl=ttl, note=note)
            decision = decide(state, command, ctx)
            if isinstance(decision.error, Conflict):
                continue
            if decision.error is None:
                decision.result = {**row, "claim": decision.result[0]}
                decision.result["stolen"] = row["id"] in stolen
            return decision
        blocked = [f"{r['id']}: {'; '.join(r['why'])}" for r in rows if not r["ready"]][:5]
        said = "nothing is ready" + (": " + " | ".join(blocked) if blocked else " (no tasks)")
        hint = "see `dibs ready`; --steal takes over a task whose holder is stale or dead"
        return Decision(error=_NothingReady(said, hint=hint))

    result = dict(coord.transact(choose).result)
    result["problems"] = [str(p) for p in problems]
    from dibs.integrations.tasks import sync

    result["synced"] = sync.deliver(coord, tasks=tasks)
    if start:
        try:
            from dibs.integrations import worktrees
        except ImportError:  # pragma: no cover - worktrees ship with dibs
            raise UsageError("--start needs `dibs start`") from None
        result["started"] = worktrees.start(coord, result["id"], ttl=ttl, taken=True)
    return result


def _steal_one(
    coord: Coordinator, tasks: list[Task], agent: str, moved: Collection[str] = ()
) -> list[str]:
    """Evict the holders of the best task held only by stale or dead agents (logged as a
    ``force-evict`` by the stealing agent, with the reason); its id, if any."""

    def evict(state: State, ctx: Context) -> Decision:
        rows = readiness(tasks, state, ctx, moved=moved)
        for row in rows:
            if not _stealable(row, state, ctx):
                continue
            events = []
            for holder in row["holders"]:
                status = agent_status(state.agents[holder], ctx)
                command = ForceEvict(
                    issue_resource(row["id"]),
                    by=agent,
                    reason=f"stolen: {holder} is {status}",
                    agent=holder,
                )
                events += decide(state, command, ctx).events
            return Decision(events, result=[row["id"]])
        return Decision(result=[])

    return list(coord.transact(evict).result)


def _stealable(row: dict[str, Any], state: State, ctx: Context) -> bool:
    if not row["holders"] or row["status"] in DONE:
        return False
    others = [w for w in row["why"] if not w.startswith("held by")]
    if others:
        return False
    return all(
        holder in state.agents and agent_status(state.agents[holder], ctx) != "live"
        for holder in row["holders"]
    )
