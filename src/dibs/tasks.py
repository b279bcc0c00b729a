"""Ready work from task files, and `next`: the best ready task, taken atomically.

Task sources are read-only; ``tasks.sources`` in dibs.toml names them (default: ``tasks.toml``
and ``.beads/issues.jsonl`` when they exist). The format follows the path:

* a folder (or a glob ending in ``/``) of CCPM-style markdown task files, each with a
  frontmatter block: ``name``, ``status``, ``depends_on``, ``parallel``, ``conflicts_with``
  (and optionally ``priority``); the task id is the file's stem;
* ``*.jsonl``: beads-style issues, one JSON object a line: ``id``, ``title``, ``status``,
  ``priority`` (0 first), ``dependencies`` (ids, or objects with ``depends_on_id``);
* ``*.toml``: dibs's own, ``[[task]]`` tables with ``id``, ``title``, ``status``,
  ``priority``, ``depends_on``, ``conflicts_with``.

A malformed task is reported with its file and line and skipped; the others still count.
A task is done when its source says so (``done``, ``closed``, ``completed``, ``resolved``) or
when the merge queue landed it. It is ready when it is not done nor in progress, every task it
depends on is done, nobody holds ``issue:<id>``, and no task it conflicts with is being worked
on (held, or in progress).
"""

from __future__ import annotations

import glob
import json
import os
import re

from dibs.core.leases import Acquire, Decision, ForceEvict, agent_status, decide, eviction_reason
from dibs.errors import Conflict, DibsError, NotFound, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.service import Coordinator

DONE = frozenset(("done", "closed", "completed", "complete", "resolved", "merged"))
WORKING = frozenset(("in_progress", "in-progress", "doing", "active", "started"))
DEFAULT_SOURCES = ("tasks.toml", ".beads/issues.jsonl")


class Task:
    """One task, from whichever source."""

    __slots__ = (
        "conflicts_with",
        "depends_on",
        "id",
        "order",
        "parallel",
        "priority",
        "source",
        "status",
        "title",
    )

    def __init__(self, task_id: str, source: str, order: int, **fields: Any):
        self.id = task_id
        self.source = source
        self.order = order
        self.title = str(fields.get("title") or task_id)
        self.status = str(fields.get("status") or "open").strip().lower()
        self.priority = _number(fields.get("priority"), 2)
        self.depends_on = [str(d) for d in _list(fields.get("depends_on"))]
        self.conflicts_with = [str(c) for c in _list(fields.get("conflicts_with"))]
        self.parallel = bool(fields.get("parallel", True))

    def view(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


def _number(value: Any, default: int) -> int:
    if isinstance(value, bool) or value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        match = re.search(r"\d+", str(value))
        return int(match.group()) if match else default


def _list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    return [v.strip() for v in str(value).strip("[]").split(",") if v.strip()]


class Problem(Exception):
    """A malformed task: where it is and what is wrong."""

    def __init__(self, where: str, line: int, message: str):
        super().__init__(f"{where}:{line}: {message}")
        self.where, self.line, self.message = where, line, message


def frontmatter(text: str, where: str) -> tuple[dict[str, Any], int]:
    """The ``---`` block at the top of a markdown file (a YAML subset) and its last line."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise Problem(where, 1, "no frontmatter (a first line of ---)")
    data: dict[str, Any] = {}
    key = None
    for number, line in enumerate(lines[1:], 2):
        if line.strip() == "---":
            return data, number
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        item = re.match(r"\s+-\s*(.*)$", line)
        if item and key is not None:
            data.setdefault(key, [])
            if not isinstance(data[key], list):
                raise Problem(where, number, f"{key} mixes a value and a list")
            data[key].append(_scalar(item.group(1)))
            continue
        pair = re.match(r"([A-Za-z_][\w-]*)\s*:\s*(.*)$", line)
        if not pair:
            raise Problem(where, number, f"cannot read {line.strip()!r} (expected key: value)")
        key, raw = pair.group(1), pair.group(2).strip()
        if raw.startswith("[") and raw.endswith("]"):
            data[key] = [_scalar(v) for v in raw[1:-1].split(",") if v.strip()]
        elif raw == "":
            data[key] = []
        else:
            data[key] = _scalar(raw)
    raise Problem(where, len(lines), "the frontmatter is never closed (no second ---)")


def _scalar(raw: str) -> Any:
    raw = raw.strip()
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return raw[1:-1]
    if raw.lower() in ("true", "yes"):
        return True
    if raw.lower() in ("false", "no"):
        return False
    return raw


def _read_markdown(folder: str, problems: list[Problem]) -> list[Task]:
    tasks = []
    for order, path in enumerate(sorted(glob.glob(os.path.join(folder, "*.md")))):
        try:
            data = _task_frontmatter(path)
            stem = os.path.splitext(os.path.basename(path))[0]
            task_id = str(data.get("id") or stem)
            tasks.append(Task(task_id, path, order, title=data.get("name"), **_fields(data)))
        except Problem as problem:
            problems.append(problem)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(path, 1, str(exc)))
    return tasks


def _task_frontmatter(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        data, _ = frontmatter(f.read(), path)
    if "status" not in data and "name" not in data:
        raise Problem(path, 1, "the frontmatter has neither name nor status")
    return data


def _fields(data: dict[str, Any]) -> dict[str, Any]:
    return {
        k: data[k]
        for k in ("status", "priority", "depends_on", "conflicts_with", "parallel")
        if k in data
    }


def _read_jsonl(path: str, problems: list[Problem]) -> list[Task]:
    tasks = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                problems.append(Problem(path, number, f"not JSON: {exc}"))
                continue
            if not isinstance(data, dict) or not data.get("id"):
                problems.append(Problem(path, number, "not a task: an issue needs an id"))
                continue
            deps = []
            for dep in _list(data.get("dependencies") or data.get("depends_on")):
                if isinstance(dep, dict):
                    if dep.get("type", "blocks") in ("blocks", "parent-child"):
                        deps.append(dep.get("depends_on_id") or dep.get("id"))
                else:
                    deps.append(dep)
            fields = _fields(data)
            fields["depends_on"] = [d for d in deps if d]
            tasks.append(
                Task(str(data["id"]), f"{path}:{number}", number, title=data.get("title"), **fields)
            )
    return tasks


def _read_toml(path: str, problems: list[Problem]) -> list[Task]:
    import tomllib

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        line = _number(re.search(r"line (\d+)", str(exc)).group(1) if "line" in str(exc) else 1, 1)  # type: ignore[union-attr]
        problems.append(Problem(path, line, f"not valid TOML: {exc}"))
        return []
    tasks = []
    for order, item in enumerate(data.get("task", [])):
        if not isinstance(item, dict) or not item.get("id"):
            problems.append(Problem(path, 1, f"task #{order + 1} has no id"))
            continue
        tasks.append(Task(str(item["id"]), path, order, title=item.get("title"), **_fields(item)))
    return tasks


def load(dibs: Coordinator) -> tuple[list[Task], list[Problem]]:
    """Every task of every configured source, and the problems met on the way."""
    if dibs.repo is None:
        raise UsageError("tasks live in a repository", hint="run dibs inside one")
    root = dibs.repo.root
    configured = list(dibs.settings["tasks.sources"])
    sources = configured or [s for s in DEFAULT_SOURCES if os.path.exists(os.path.join(root, s))]
    tasks: list[Task] = []
    problems: list[Problem] = []
    for source in sources:
        path = os.path.join(root, source)
        if os.path.isdir(path) or source.endswith("/"):
            for folder in sorted(glob.glob(path.rstrip("/"))) or [path]:
                tasks += _read_markdown(folder, problems)
        elif not os.path.exists(path):
            if configured:
                problems.append(Problem(source, 0, "no such file or folder"))
        elif source.endswith(".jsonl"):
            tasks += _read_jsonl(path, problems)
        elif source.endswith(".toml"):
            tasks += _read_toml(path, problems)
        else:
            problems.append(Problem(source, 0, "unknown format: use a folder, .jsonl or .toml"))
    seen: dict[str, Task] = {}
    for task in tasks:
        if task.id in seen:
            problems.append(
                Problem(task.source, 0, f"task {task.id} is also in {seen[task.id].source}")
            )
            continue
        seen[task.id] = task
    return list(seen.values()), problems


def _landed(state: State) -> set[str]:
    from dibs.queue import landed_issues

    return landed_issues(state)


def readiness(tasks: list[Task], state: State, ctx: Context) -> list[dict[str, Any]]:
    """Each task with ``ready`` and, when not, why; best first (priority, then age)."""
    by_id = {task.id: task for task in tasks}
    landed = _landed(state)
    done = {t.id for t in tasks if t.status in DONE} | landed
    held = {}
    for task in tasks:
        holders = [
            lease["agent"]
            for lease in state.claims.get(f"issue:{task.id}", {}).values()
            if not eviction_reason(state, lease, ctx)
        ]
        if holders:
            held[task.id] = holders
    working = set(held) | {t.id for t in tasks if t.status in WORKING}
    rows = []
    for task in sorted(tasks, key=lambda t: (t.priority, t.order)):
        why = []
        if task.id in done:
            why.append("done")
        elif task.id in held:
            why.append(f"held by {', '.join(held[task.id])}")
        elif task.status in WORKING:
            why.append(f"status {task.status}")
        waiting = [d for d in task.depends_on if d not in done]
        if waiting and task.id not in done:
            unknown = [d for d in waiting if d not in by_id]
            why.append("waits for " + ", ".join(waiting) + (" (unknown)" if unknown else ""))
        clashing = [c for c in task.conflicts_with if c in working]
        if not task.parallel:
            clashing += [t for t in working if t != task.id and t not in clashing]
        if clashing and task.id not in done:
            why.append("conflicts with " + ", ".join(sorted(clashing)) + " (in progress)")
        rows.append({**task.view(), "ready": not why, "why": why, "holders": held.get(task.id, [])})
    return rows


def ready(dibs: Coordinator) -> dict[str, Any]:
    """The ready tasks (and every other with why not), with the sources' problems."""
    tasks, problems = load(dibs)
    state, now = dibs.store.read()
    rows = readiness(tasks, state, dibs.context(now))
    return {
        "ready": [r for r in rows if r["ready"]],
        "tasks": rows,
        "problems": [str(p) for p in problems],
    }


def next_task(
    dibs: Coordinator, *, steal: bool = False, start: bool = False, ttl: float | None = None
) -> dict[str, Any]:
    """Take the best ready task for the acting agent, atomically: under any number of
    concurrent callers no task goes to two agents (the choice and the claim are one
    transaction). With *steal*, a task whose holder is stale or dead is taken over (logged
    as a ``force-evict`` with the reason). With *start*, its worktree is made too (or a
    former holder's taken over), with the same *ttl*; if that fails the task is released.

    Raises:
        NotFound: nothing is ready (the message says why the first tasks are not).
    """
    from dibs.service import check_ttl

    tasks, problems = load(dibs)
    agent, secret = dibs._identity()
    ttl = check_ttl(ttl)

    stolen: list[str] = []
    if steal:
        stolen = _steal_one(dibs, tasks, agent)

    def choose(state: State, ctx: Context) -> Decision:
        rows = readiness(tasks, state, ctx)
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

    result = dict(dibs.transact(choose).result)
    result["problems"] = [str(p) for p in problems]
    if start:
        try:
            from dibs import worktrees
        except ImportError:  # pragma: no cover - worktrees ship with dibs
            raise UsageError("--start needs `dibs start`") from None
        result["started"] = worktrees.start(dibs, result["id"], ttl=ttl, taken=True)
    return result


def _steal_one(dibs: Coordinator, tasks: list[Task], agent: str) -> list[str]:
    """Evict the holders of the best task held only by stale or dead agents (logged as a
    ``force-evict`` by the stealing agent, with the reason); its id, if any."""

    def evict(state: State, ctx: Context) -> Decision:
        rows = readiness(tasks, state, ctx)
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

    return list(dibs.transact(evict).result)


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
