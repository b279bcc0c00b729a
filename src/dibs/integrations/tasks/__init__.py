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

import os
import re

from dibs.core.leases import Acquire, Decision, ForceEvict, agent_status, decide, eviction_reason
from dibs.ground.errors import Conflict, DibsError, NotFound, Refused, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.service import Coordinator

DONE = frozenset(("done", "closed", "completed", "complete", "resolved", "merged"))
WORKING = frozenset(("in_progress", "in-progress", "doing", "active", "started", "hooked"))
DEFAULT_SOURCES = ("tasks.toml", ".beads/", ".claude/epics/*/")
#: Priorities are small whole numbers (beads: 0-4); a bound keeps a 5,000-digit one out.
MAX_PRIORITY = 1_000_000


class Task:
    """One task, from whichever source.

    ``kind`` names the source's rules (``toml``, ``markdown``, ``ccpm``, ``beads``); ``group``
    is the set a ``parallel: false`` task runs alone in (a CCPM epic); ``order`` sorts tasks of
    equal priority the way their tool does; ``ref`` is what the tool calls it (a beads id, a
    CCPM file); ``extra`` holds what only the source's rules read.
    """

    __slots__ = (
        "conflicts_with",
        "depends_on",
        "extra",
        "group",
        "id",
        "kind",
        "labels",
        "order",
        "parallel",
        "priority",
        "ref",
        "source",
        "status",
        "title",
    )

    def __init__(self, task_id: str, source: str, order: Any, **fields: Any):
        self.id = task_id
        self.source = source
        self.order = order if isinstance(order, tuple) else (order,)
        self.title = str(fields.get("title") or task_id)
        self.status = str(fields.get("status") or "open").strip().lower()
        self.priority = priority(fields.get("priority"), source)
        self.depends_on = [str(d) for d in _list(fields.get("depends_on"))]
        self.conflicts_with = [str(c) for c in _list(fields.get("conflicts_with"))]
        self.parallel = fields.get("parallel", True) is not False
        labels = [str(x).strip() for x in _list(fields.get("labels")) if str(x).strip()]
        if fields.get("role"):
            labels.append(str(fields["role"]).strip())
        self.labels = sorted(set(labels))
        self.kind = str(fields.get("kind") or "toml")
        self.group = str(fields.get("group") or source)
        self.ref = str(fields.get("ref") or task_id)
        self.extra: dict[str, Any] = dict(fields.get("extra") or {})

    def view(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "extra"}


def priority(value: Any, where: str = "") -> int:
    """A task's priority (lower first; 2 when unset).

    Raises:
        Problem: not a whole number from 0 to `MAX_PRIORITY` (the task is skipped).
    """
    if value is None or value == "":
        return 2
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer() and abs(value) <= MAX_PRIORITY:
        number = int(value)
    elif isinstance(value, str):
        text = value.strip().upper().removeprefix("P")  # beads writes P0..P4 too
        if text.isascii() and text.isdigit() and len(text) <= 7:
            number = int(text)
    if number is None or not 0 <= number <= MAX_PRIORITY:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise Problem(where, 0, f"priority {shown} is not a whole number from 0 to {MAX_PRIORITY}")
    return number


def _list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [v.strip() for v in str(value).strip("[]").split(",") if v.strip()]


class Problem(Exception):
    """A malformed task: where it is and what is wrong."""

    def __init__(self, where: str, line: int, message: str):
        super().__init__(f"{where}:{line}: {message}" if line else f"{where}: {message}")
        self.where, self.line, self.message = where, line, message


def _read_toml(path: str, problems: list[Problem]) -> list[Task]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"line (\d+)", str(exc))
        line = int(found.group(1)) if found else 1
        problems.append(Problem(path, line, f"not valid TOML: {exc}"))
        return []
    tasks = []
    items = data.get("task", [])
    for order, item in enumerate(items if isinstance(items, list) else []):
        if not isinstance(item, dict) or not item.get("id"):
            problems.append(Problem(path, 0, f"task #{order + 1} has no id"))
            continue
        fields = {
            k: item[k]
            for k in (
                "status",
                "priority",
                "depends_on",
                "conflicts_with",
                "parallel",
                "role",
                "labels",
            )
            if k in item
        }
        try:
            tasks.append(Task(str(item["id"]), path, order, title=item.get("title"), **fields))
        except Problem as problem:
            problems.append(Problem(path, 0, f"task {item['id']!r}: {problem.message}"))
    return tasks


def root(coord: Coordinator) -> str:
    """Where task files are read and written: the main checkout, from any worktree (every
    agent sees one tracker, the one people look at)."""
    if coord.repo is None:
        raise UsageError("tasks live in a repository", hint="run dibs inside one")
    return coord.repo.main_root


def _glob(pattern: str) -> list[str]:
    """`glob.glob`, imported when a pattern is to be matched (it compiles regexes on import)."""
    import glob

    return glob.glob(pattern)


def sources(coord: Coordinator) -> tuple[list[str], bool]:
    """The task sources to read (relative to `root`) and whether they were configured."""
    top = root(coord)
    configured = list(coord.settings["tasks.sources"])
    if configured:
        return configured, True
    found = []
    for source in DEFAULT_SOURCES:
        if source.endswith("*/"):
            parent = os.path.join(top, os.path.dirname(source.rstrip("/")))
            if os.path.isdir(parent) and _glob(os.path.join(top, source)):  # glob only then
                found.append(source)
        elif os.path.exists(os.path.join(top, source)):
            found.append(source)
    return found, False


def load(coord: Coordinator) -> tuple[list[Task], list[Problem]]:
    """Every task of every configured source, and the problems met on the way."""
    from dibs.integrations.tasks import markdown

    names, configured = sources(coord)
    top = root(coord)
    tasks: list[Task] = []
    problems: list[Problem] = []
    for index, source in enumerate(names):
        found = _read_source(top, source, problems, configured=configured)
        for task in found:
            task.order = (index, *task.order)
        tasks += found
    markdown.resolve(tasks)
    seen: dict[str, Task] = {}
    for task in tasks:
        if task.id in seen:
            problems.append(
                Problem(task.source, 0, f"task {task.id} is also in {seen[task.id].source}")
            )
            continue
        try:
            _resource(task.id)
        except UsageError as exc:
            problems.append(Problem(task.source, 0, exc.message))
            continue
        seen[task.id] = task
    return list(seen.values()), problems


def _read_source(
    root: str, source: str, problems: list[Problem], *, configured: bool
) -> list[Task]:
    from dibs.integrations.tasks import beads, markdown

    path = os.path.join(root, source)
    if beads.is_beads(path, source):
        return beads.read(path, problems, configured=configured)
    if os.path.isdir(path) or source.endswith("/"):
        tasks = []
        for folder in sorted(_glob(path.rstrip("/"))) or [path]:
            if markdown.is_epics(folder):  # `.claude/epics/` itself: every epic in it
                for epic in sorted(_glob(os.path.join(folder, "*", ""))):
                    tasks += markdown.read_folder(epic.rstrip("/"), problems)
            elif os.path.isdir(folder):
                tasks += markdown.read_folder(folder, problems)
            elif configured:
                problems.append(Problem(source, 0, "no such folder"))
        return tasks
    if not os.path.exists(path):
        if configured:
            problems.append(Problem(source, 0, "no such file or folder"))
        return []
    if source.endswith(".toml"):
        return _read_toml(path, problems)
    problems.append(Problem(source, 0, "unknown format: use a folder, .jsonl or .toml"))
    return []


def _landed(state: State) -> set[str]:
    """Issues the merge queue landed: done, whatever their source still says (table
    ``landed``, never pruned: a landed task is never handed out again)."""
    from dibs.integrations.queue import landed_issues

    return landed_issues(state)


def _moved(coord: Coordinator, state: State) -> set[str]:
    """Issues landed by a processor killed before it recorded the landing (git decides)."""
    from dibs.integrations.queue import moved_unrecorded

    return moved_unrecorded(coord, state)


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
    landed = _landed(state) | set(moved)
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
    state, now = coord.store.read()
    rows = readiness(
        tasks, state, coord.context(now), [role] if role else None, _moved(coord, state)
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
) -> dict[str, Any]:
    """Take the best ready task for the acting agent, atomically: under any number of
    concurrent callers no task goes to two agents (the choice and the claim are one
    transaction). With *steal*, a task whose holder is stale or dead is taken over (logged
    as a ``force-evict`` with the reason). With *start*, its worktree is made too (or a
    former holder's taken over), with the same *ttl*; if that fails the task is released. With
    *role* (or the roles the agent registered with), only tasks labelled with it are taken.

    Raises:
        NotFound: nothing is ready (the message says why the first tasks are not).
    """
    from dibs.service.checks import check_ttl

    tasks, problems = load(coord)
    agent, secret = coord._identity()
    ttl = check_ttl(ttl)

    moved = _moved(coord, coord.store.read()[0])
    stolen: list[str] = []
    if steal:
        stolen = _steal_one(coord, tasks, agent, moved)

    def choose(state: State, ctx: Context) -> Decision:
        roles = [role] if role else agent_roles(state, agent)
        rows = readiness(tasks, state, ctx, roles or None, moved)
        for row in (r for r in rows if r["ready"]):
            note = f"next: {row['title']}"
            command = Acquire(agent, secret, [_resource(row["id"])], ttl=ttl, note=note)
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
        return Decision(error=NotFound(said, hint=hint))

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
                    _resource(row["id"]),
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


def _resource(task_id: str) -> Any:
    from dibs.core.resources import parse_resource

    try:
        return parse_resource(f"issue:{task_id}")
    except DibsError as exc:
        raise UsageError(f"task id {task_id!r} cannot be an issue name: {exc.message}") from None
