"""Markdown task files with YAML frontmatter: CCPM epics, and plain folders of tasks.

CCPM (github.com/automazeio/ccpm, read at commit 7d7e4623, 2026-03-18: ``skill/ccpm/
references/conventions.md`` and ``sync.md``; the task template of
``ccpm/commands/pm/epic-decompose.md`` before v2) keeps an epic in ``.claude/epics/<epic>/``:
``epic.md``, the task files ``001.md``, ``002.md``, ... (renamed to their GitHub issue number
on sync, when ``github:`` is set to the issue's URL and every ``depends_on``/``conflicts_with``
is rewritten to issue numbers), ``<N>-analysis.md``, ``execution-status.md``,
``github-mapping.md`` and ``updates/``. Only the numbered files are tasks; the rest are not and
are passed over in silence. A task's frontmatter::

    name: <Task Title>
    status: open | in-progress | closed
    created: / updated: <ISO 8601>
    github: https://github.com/<owner>/<repo>/issues/<N>   # set on sync
    depends_on: []      # task numbers this must wait for
    parallel: true      # can run concurrently with non-conflicting tasks (of its epic)
    conflicts_with: []  # task numbers that touch the same files

Ids: a synced task is its GitHub issue number (``1234``); before sync the numbers are per epic,
so the id is ``<epic>-<file number>`` (``auth-001``) and ``depends_on: [1]`` means task 001 of
the same epic. Tasks sort by number, not by file name. The frontmatter is read with a real YAML
parser (PyYAML, imported only here), with numbers read as decimals: ``[001, 010]`` is tasks 1
and 10, not the octal 8 YAML 1.1 would make of ``010``.
"""

from __future__ import annotations

import glob
import os
import re

from dibs.ground import platform
from dibs.integrations.tasks.model import Problem, Task

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_NUMBERED = re.compile(r"^(\d+)\.md$")
_ISSUE_URL = re.compile(r"/issues/(\d+)/?\s*$")


def is_epic(folder: str) -> bool:
    """A CCPM epic: a folder with an ``epic.md``, or one under ``.claude/epics/``."""
    parts = os.path.normpath(folder).split(os.sep)
    in_epics = len(parts) >= 3 and parts[-3:-1] == [".claude", "epics"]
    return in_epics or os.path.exists(os.path.join(folder, "epic.md"))


def is_epics(folder: str) -> bool:
    """CCPM's ``.claude/epics`` folder itself (its subfolders are the epics)."""
    parts = os.path.normpath(folder).split(os.sep)
    return parts[-2:] == [".claude", "epics"] and os.path.isdir(folder)


def _loader() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that reads integers as decimals (``010`` is ten, as CCPM means it)."""

    def decimal(loader: Any, node: Any) -> Any:
        text = str(loader.construct_scalar(node)).replace("_", "")
        if re.fullmatch(r"[-+]?\d+", text):
            return int(text, 10)
        return yaml.SafeLoader.construct_yaml_int(loader, node)

    Loader.add_constructor("tag:yaml.org,2002:int", decimal)
    return Loader


_LOADER: list[Any] = []


def frontmatter(text: str, where: str) -> tuple[dict[str, Any], int]:
    """The ``---`` YAML block at the top of a markdown file, and its closing line number."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "---":
        raise Problem(where, 1, "no frontmatter (a first line of ---)")
    end = next((n for n in range(1, len(lines)) if lines[n].strip() == "---"), None)
    if end is None:
        raise Problem(where, len(lines), "the frontmatter is never closed (no second ---)")
    import yaml

    if not _LOADER:
        _LOADER.append(_loader())
    try:
        data = yaml.load("\n".join(lines[1:end]), Loader=_LOADER[0])  # noqa: S506 - SafeLoader
    except yaml.YAMLError as exc:
        # CCPM reads its fields line by line (grep '^name:'), so `name: Phase 1: Scaffold`
        # is fine to it; read such a block the same way, each value as YAML where it can be.
        data = _by_lines(lines[1:end])
        if data is not None:
            return data, end + 1
        mark = getattr(exc, "context_mark", None) or getattr(exc, "problem_mark", None)
        line = min(mark.line + 2, end) if mark is not None else 2
        said = getattr(exc, "problem", None) or str(exc)
        text = lines[line - 1].strip()
        raise Problem(where, line, f"cannot read {text!r} (YAML: {said})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise Problem(where, 2, "the frontmatter is not a set of key: value lines")
    return data, end + 1


def _by_lines(lines: list[str]) -> dict[str, Any] | None:
    """``key: value`` lines (and ``- item`` lines under a key); None when a line is neither."""
    import yaml

    data: dict[str, Any] = {}
    key = None
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        pair = re.match(r"([A-Za-z_][\w-]*)\s*:(?:\s+(.*))?$", line)
        item = re.match(r"\s+-\s*(.*)$", line)
        if pair:
            key, raw = pair.group(1), (pair.group(2) or "").strip()
        elif item and key is not None:
            raw = item.group(1).strip()
        else:
            return None
        try:
            value = yaml.load(raw, Loader=_LOADER[0]) if raw else None  # noqa: S506
        except yaml.YAMLError:
            value = re.sub(r"\s+#.*$", "", raw)
        if pair:
            data[key] = value
        elif isinstance(data.get(key), list):
            data[key].append(value)
        else:
            data[key] = [value]
    return data


def read_folder(folder: str, problems: list[Problem]) -> list[Task]:
    """The tasks of one folder: a CCPM epic's numbered files, or every markdown file."""
    epic = is_epic(folder)
    paths = []
    for path in glob.glob(os.path.join(folder, "*.md")):
        name = os.path.basename(path)
        numbered = _NUMBERED.match(name)
        if epic and not numbered:
            continue  # epic.md, NNN-analysis.md, github-mapping.md, ...: not tasks
        key = (0, int(numbered.group(1)), name) if numbered else (1, 0, name)
        paths.append((key, path))
    mapped = _mapped(folder) if epic else set()
    tasks = []
    for key, path in sorted(paths):
        try:
            tasks.append(_task(path, folder, key, epic, mapped))
        except Problem as problem:
            problems.append(problem)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(Problem(path, 1, str(exc)))
    return tasks


def _mapped(folder: str) -> set[int]:
    """Issue numbers ``github-mapping.md`` lists (``- #1234: title - url``): files renamed to
    one of them were synced, even where ``github:`` was not filled in."""
    try:
        with open(os.path.join(folder, "github-mapping.md"), encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return set()
    return {int(n) for n in re.findall(r"^\s*-\s*#(\d{1,18})\b", text, re.MULTILINE)}


def _task(path: str, folder: str, key: tuple[int, int, str], epic: bool, mapped: set[int]) -> Task:
    with open(path, encoding="utf-8") as f:
        data, _ = frontmatter(f.read(), path)
    if "status" not in data and "name" not in data:
        raise Problem(path, 1, "the frontmatter has neither name nor status")
    stem = os.path.splitext(os.path.basename(path))[0]
    extra: dict[str, Any] = {"number": key[1] if key[0] == 0 else None, "path": path}
    github = data.get("github")
    synced = _ISSUE_URL.search(github) if isinstance(github, str) else None
    extra["github"] = int(synced.group(1)) if synced else None
    if extra["github"] is None and extra["number"] in mapped:
        extra["github"] = extra["number"]
    if epic:
        name = os.path.basename(os.path.normpath(folder))
        task_id = str(extra["github"]) if extra["github"] is not None else f"{name}-{stem}"
    else:
        task_id = str(data.get("id") or stem)
    extra["refs"] = {
        "depends_on": _refs(data.get("depends_on")),
        "conflicts_with": _refs(data.get("conflicts_with")),
    }
    fields: dict[str, Any] = {
        k: data[k] for k in ("status", "priority", "role", "labels") if k in data
    }
    parallel = data.get("parallel", True)
    if isinstance(parallel, str):
        parallel = parallel.strip().lower() not in ("false", "no", "off", "0")
    try:
        return Task(
            task_id,
            path,
            key,
            title=data.get("name") or data.get("title"),
            parallel=parallel is not False,
            kind="ccpm" if epic else "markdown",
            group=os.path.normpath(folder),
            ref=path,
            extra=extra,
            **fields,
        )
    except Problem as problem:
        raise Problem(path, 0, problem.message) from None


def _items(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return [v for v in value if v is not None and v != ""]
    return [v.strip() for v in str(value).strip("[]").split(",") if v.strip()]


def _refs(value: Any) -> list[int | str]:
    """Task numbers as CCPM writes them (``001``, ``#1234``, ``1234``); other text as is."""
    out: list[int | str] = []
    for item in _items(value):
        text = str(item).strip().lstrip("#")
        text = text.removesuffix(".md")
        out.append(int(text) if text.isascii() and text.isdigit() and len(text) < 19 else text)
    return out


def resolve(tasks: list[Task]) -> None:
    """Bind each CCPM task's numbers to task ids: first in its own epic (by issue number, then
    file number), then any synced task with that issue number."""
    epics: dict[str, list[Task]] = {}
    synced: dict[int, str] = {}
    for task in tasks:
        if task.kind in ("ccpm", "markdown"):
            epics.setdefault(task.group, []).append(task)
        if task.kind == "ccpm" and task.extra["github"] is not None:
            synced.setdefault(task.extra["github"], task.id)
    for group in epics.values():
        by_github = {t.extra["github"]: t.id for t in group if t.extra["github"] is not None}
        by_number = {t.extra["number"]: t.id for t in group if t.extra["number"] is not None}
        prefix = os.path.basename(group[0].group)
        for task in group:
            for name, refs in task.extra["refs"].items():
                ids = []
                for ref in refs:
                    if not isinstance(ref, int):
                        ids.append(ref)
                    elif task.kind == "markdown":
                        ids.append(by_number.get(ref) or str(ref))
                    else:
                        found = by_github.get(ref) or by_number.get(ref) or synced.get(ref)
                        ids.append(found or f"{prefix}-{ref:03d}")
                setattr(task, name, ids)


def _value(line: str, name: str) -> str | None:
    match = re.match(rf"^{name}\s*:\s*([^#\r\n]*?)\s*(#.*)?$", line.rstrip("\r\n"))
    return match.group(1).strip() if match else None


def write_status(path: str, status: str, when: str) -> bool:
    """Set ``status`` and ``updated`` in the frontmatter of the task file at *path*, keeping
    every other byte; atomic (a temporary file renamed over it). False when nothing changed."""
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    end = next((n for n in range(1, len(lines)) if lines[n].strip() == "---"), None)
    if not lines or lines[0].strip() != "---" or end is None:
        return False
    values = (_value(lines[n], "status") for n in range(1, end))
    current = next((v for v in values if v is not None), None)
    if current == status:
        return False
    changed = False
    for name, value in (("status", status), ("updated", when)):
        pattern = re.compile(rf"^{name}\s*:\s*([^#\r\n]*?)(\s+#.*)?(\r?\n)?$")
        for n in range(1, end):
            match = pattern.match(lines[n])
            if match:
                if match.group(1).strip() != value:
                    lines[n] = f"{name}: {value}{match.group(2) or ''}{match.group(3) or ''}"
                    changed = True
                break
        else:
            newline = "\r\n" if lines[0].endswith("\r\n") else "\n"
            lines.insert(end, f"{name}: {value}{newline}")
            end += 1
            changed = True
    if not changed:
        return False
    platform.replace_file(path, "".join(lines).encode("utf-8"), sync_folder=True)
    return True
