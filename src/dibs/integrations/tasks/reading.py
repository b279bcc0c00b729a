"""Reading the task sources: which ones (``tasks.sources``), where, and each by its format's
rules (`markdown`, `beads`, dibs's own TOML); and what the merge queue says is done."""

from __future__ import annotations

import os
import re

from dibs.ground.errors import UsageError
from dibs.integrations import listeners
from dibs.integrations.tasks.model import Problem, Task, issue_resource

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dibs.core.state import State
    from dibs.service import Coordinator


def read_toml(path: str, problems: list[Problem]) -> list[Task]:
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
    return listeners.sources(root(coord), coord.settings["tasks.sources"])


def load(coord: Coordinator) -> tuple[list[Task], list[Problem]]:
    """Every task of every configured source, and the problems met on the way."""
    from dibs.integrations.tasks import markdown

    names, configured = sources(coord)
    top = root(coord)
    tasks: list[Task] = []
    problems: list[Problem] = []
    for index, source in enumerate(names):
        found = read_source(top, source, problems, configured=configured)
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
            issue_resource(task.id)
        except UsageError as exc:
            problems.append(Problem(task.source, 0, exc.message))
            continue
        seen[task.id] = task
    return list(seen.values()), problems


def read_source(root: str, source: str, problems: list[Problem], *, configured: bool) -> list[Task]:
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
        return read_toml(path, problems)
    problems.append(Problem(source, 0, "unknown format: use a folder, .jsonl or .toml"))
    return []


def landed_issues(state: State) -> set[str]:
    """Issues the merge queue landed: done, whatever their source still says (table
    ``landed``, never pruned: a landed task is never handed out again)."""
    from dibs.integrations.queue import landed_issues as landed

    return landed(state)


def moved_issues(coord: Coordinator, state: State) -> set[str]:
    """Issues landed by a processor killed before it recorded the landing (git decides)."""
    from dibs.integrations.queue import moved_unrecorded

    return moved_unrecorded(coord, state)
