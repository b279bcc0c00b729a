"""beads (``bd``): its issues, ready exactly when ``bd ready`` would hand them out.

Describes beads v1.0.5 (github.com/steveyegge/beads, commit fbcee6c6, 2026-06-01). The rules,
each from the function that applies them there:

* ``bd ready`` lists an issue when (``internal/storage/issueops/ready_work.go``,
  ``buildReadyWorkPredicates``; ``cmd/bd/ready.go`` passes ``Status: "open"``): its status is
  ``open``; it is not ``pinned``; it is not blocked; it is not ephemeral (a wisp); its
  ``issue_type`` is not one of ``readyWorkExcludeTypes`` (merge-request, gate, molecule,
  message, agent, role, rig); its ``defer_until`` is unset or past; and no parent of it (a
  ``parent-child`` dependency) has a ``defer_until`` in the future
  (``getChildrenOfDeferredParentsInTx``).
* An issue is blocked (``internal/storage/issueops/blocked_state.go``,
  ``markBlockedTemplateForIssues``) when its status is neither ``closed`` nor ``pinned`` and
  a ``blocks`` or ``conditional-blocks`` dependency points at an issue that is neither
  ``closed`` nor ``pinned``; or its parent (``parent-child``) is itself blocked -- an open
  parent does not block its children; or a ``waits-for`` dependency points at an issue with a
  child that is neither closed nor pinned, unless the dependency's metadata says
  ``{"gate": "any-children"}`` and one child is closed (``waitsForGateBlockedSQL``). Other
  dependency types (``related``, ``discovered-from``, ``tracks``, ...) never block; a
  dependency on an issue that does not exist does not block (the SQL joins on it).
* Order (``buildReadyWorkOrder``, ``bd ready``'s default ``--sort priority``): priority
  ascending, then newest ``created_at`` first, then id.
* The export (``cmd/bd/export.go``) writes one ``{"_type": "issue", ...}`` object a line and
  ``{"_type": "memory", ...}`` lines with ``--all``; the import (``cmd/bd/import.go``) skips
  ``tombstone`` rows and reads ``"wisp": true`` as ephemeral. Only issue lines are tasks.

Current beads keeps its data in Dolt and writes ``issues.jsonl`` only on export, so when ``bd``
is on PATH dibs asks it (``bd list --json --all --limit 0`` for every issue, ``bd ready
--json --limit 0`` for the ready set and its order); otherwise it reads the JSONL export.
"""

from __future__ import annotations

import json
import os
import re

from dibs.integrations.tasks.model import Problem, Task

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DONE_FOR_DEPENDENTS = frozenset(("closed", "pinned"))
BLOCKING = frozenset(("blocks", "conditional-blocks"))
NOT_WORK = frozenset(("merge-request", "gate", "molecule", "message", "agent", "role", "rig"))
WORKING = frozenset(("in_progress", "hooked"))
#: Seconds ``bd`` may take to answer before dibs falls back to the export.
BD_TIMEOUT = 30.0


def is_beads(path: str, source: str) -> bool:
    """Whether *source* names beads data: a ``.beads`` folder or a ``*.jsonl`` file."""
    return source.endswith(".jsonl") or os.path.basename(path.rstrip("/")) == ".beads"


def bd_command() -> str | None:
    """The ``bd`` executable on PATH (``DIBS_BD`` names another), or None."""
    import shutil

    return shutil.which(os.environ.get("DIBS_BD") or "bd")


def read(path: str, problems: list[Problem], *, configured: bool) -> list[Task]:
    """The issues of the beads project at *path*: from ``bd`` when it is on PATH (and the
    path is the project's ``.beads`` folder or its default export), else the JSONL file."""
    folder = path.rstrip("/") if os.path.isdir(path) else os.path.dirname(path)
    jsonl = os.path.join(folder, "issues.jsonl") if os.path.isdir(path) else path
    bd = bd_command()
    if bd is not None and os.path.basename(folder) == ".beads":
        tasks = _read_cli(bd, os.path.dirname(folder), path, problems)
        if tasks is not None:
            return tasks
    if not os.path.exists(jsonl):
        if configured or os.path.isdir(path):
            problems.append(
                Problem(
                    path,
                    0,
                    "no issues.jsonl: current beads keeps its issues in Dolt; put bd on PATH, "
                    "or run `bd export -o .beads/issues.jsonl`",
                )
            )
        return []
    return read_jsonl(jsonl, problems)


def read_jsonl(path: str, problems: list[Problem]) -> list[Task]:
    """The issue lines of a beads JSONL export (other records are not tasks: no warning)."""
    tasks = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except ValueError as exc:
                problems.append(Problem(path, number, f"not JSON: {exc}"))
                continue
            task = _task(data, f"{path}:{number}", problems, path=path, number=number)
            if task is not None:
                tasks.append(task)
    return tasks


def _task(
    data: Any, where: str, problems: list[Problem], *, path: str, number: int, order: Any = None
) -> Task | None:
    if not isinstance(data, dict):
        problems.append(Problem(path, number, "not a task: a line must be a JSON object"))
        return None
    if data.get("_type", "issue") != "issue" or data.get("status") == "tombstone":
        return None
    if not isinstance(data.get("id"), str) or not data["id"]:
        problems.append(Problem(path, number, "not a task: an issue needs an id"))
        return None
    created = _nanos(data.get("created_at"))
    extra = {
        "deps": _dependencies(data),
        "issue_type": str(data.get("issue_type") or "task"),
        "pinned": data.get("pinned") is True,
        "ephemeral": data.get("ephemeral") is True or data.get("wisp") is True,
        "defer_until": _nanos(data.get("defer_until")),
        "defer_text": data.get("defer_until"),
        "assignee": data.get("assignee") or "",
    }
    if order is None:
        order = (-created, data["id"])
    try:
        return Task(
            data["id"],
            where,
            order,
            title=data.get("title"),
            status=data.get("status") or "open",
            priority=data.get("priority", 2),
            labels=data.get("labels") if isinstance(data.get("labels"), list) else None,
            kind="beads",
            group=path,
            extra=extra,
        )
    except Problem as problem:
        problems.append(Problem(path, number, f"issue {data['id']}: {problem.message}"))
        return None


def _dependencies(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(target, type, gate) of each dependency; a bare id is a ``blocks`` dependency."""
    deps = []
    raw = data.get("dependencies")
    for dep in raw if isinstance(raw, list) else []:
        if isinstance(dep, str):
            deps.append((dep, "blocks", ""))
        elif isinstance(dep, dict):
            target = dep.get("depends_on_id") or dep.get("id")
            if isinstance(target, str) and target:
                deps.append((target, str(dep.get("type") or "blocks"), _gate(dep.get("metadata"))))
    return deps


def _gate(metadata: Any) -> str:
    """The waits-for gate (``types.ParseWaitsForGateMetadata``): any-children or all."""
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata) if metadata.strip() else {}
        except ValueError:
            return "all-children"
    if isinstance(metadata, dict) and metadata.get("gate") == "any-children":
        return "any-children"
    return "all-children"


_TIME = re.compile(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")


def _nanos(text: Any) -> int:
    """An RFC 3339 time (Go writes up to nine fraction digits) as Unix nanoseconds; 0 when
    absent or unreadable."""
    if not isinstance(text, str):
        return 0
    match = _TIME.match(text.strip())
    if not match:
        return 0
    from datetime import UTC, datetime

    date, clock, fraction, zone = match.groups()
    zone = "+00:00" if zone in (None, "Z") else zone
    try:
        moment = datetime.fromisoformat(f"{date}T{clock}{zone}").astimezone(UTC)
    except ValueError:
        return 0
    return int(moment.timestamp()) * 1_000_000_000 + int((fraction or "0")[:9].ljust(9, "0"))


def why_not(
    tasks: list[Task], closed: set[str], now: float, leased: set[str]
) -> dict[str, list[str]]:
    """Why each beads task is not in ``bd ready`` (no entry: it is). *closed* are the ids
    that count as closed (their status, or landed by dibs); *now* is Unix seconds. A task
    dibs handed out (a lease in *leased*, live or run out) is not held back for the
    ``in_progress`` dibs told beads: dibs's claim answers for it."""
    if not tasks:
        return {}
    by_id = {t.id: t for t in tasks}
    done = closed | {t.id for t in tasks if t.status in DONE_FOR_DEPENDENTS}
    blocked = _blocked(by_id, done)
    now_ns = int(now * 1_000_000_000)
    deferred = {t.id for t in tasks if t.extra["defer_until"] > now_ns}
    out: dict[str, list[str]] = {}
    for task in tasks:
        # When bd answered itself its ready set is the truth; our reasons only explain.
        if task.id in closed or task.extra.get("cli_ready"):
            continue
        why = _own(task, deferred, leased) + blocked.get(task.id, [])
        ours = task.status in WORKING and task.id in leased
        if "cli_ready" in task.extra and not why and not ours:
            why.append("not in `bd ready`")
        if why:
            out[task.id] = why
    return out


def _own(task: Task, deferred: set[str], leased: set[str]) -> list[str]:
    """What holds *task* back by its own fields: status, pinned, wisp, type, defer_until."""
    why = []
    if task.status != "open" and not (task.status in WORKING and task.id in leased):
        why.append(f"status {task.status}")
    if task.extra["pinned"]:
        why.append("pinned")
    if task.extra["ephemeral"]:
        why.append("ephemeral (a wisp)")
    if task.extra["issue_type"] in NOT_WORK:
        why.append(f"type {task.extra['issue_type']} is not work")
    if task.id in deferred:
        why.append(f"deferred until {task.extra['defer_text']}")
    parents = [d for d, kind, _ in task.extra["deps"] if kind == "parent-child"]
    why += [f"parent {parent} is deferred" for parent in parents if parent in deferred]
    return why


def _blocked(by_id: dict[str, Task], done: set[str]) -> dict[str, list[str]]:
    """beads' ``is_blocked``, as the least fixed point its mark/unmark passes reach."""
    children: dict[str, list[str]] = {}
    for task in by_id.values():
        for target, kind, _ in task.extra["deps"]:
            if kind == "parent-child":
                children.setdefault(target, []).append(task.id)
    reasons = {}
    for task in by_id.values():
        why = [] if task.id in done else _direct(task, by_id, done, children)
        if why:
            reasons[task.id] = why
    changed = True
    while changed:  # a child of a blocked parent is blocked, to any depth
        changed = False
        for task in by_id.values():
            parents = [t for t, kind, _ in task.extra["deps"] if kind == "parent-child"]
            for target in parents if task.id not in done else []:
                said = f"parent {target} is blocked"
                if target in reasons and said not in reasons.setdefault(task.id, []):
                    reasons[task.id].append(said)
                    changed = True
    return {k: v for k, v in reasons.items() if v}


def _direct(
    task: Task, by_id: dict[str, Task], done: set[str], children: dict[str, list[str]]
) -> list[str]:
    """The blocks, conditional-blocks and waits-for dependencies that block *task*."""
    why = []
    for kind in sorted(BLOCKING):
        targets = [t for t, k, _ in task.extra["deps"] if k == kind and t in by_id]
        waiting = [t for t in targets if t not in done]
        if waiting:
            said = "" if kind == "blocks" else f" ({kind})"
            why.append(f"blocked by {', '.join(waiting)}{said}")
    for target, kind, gate in task.extra["deps"]:
        if kind == "waits-for":
            kids = [k for k in children.get(target, []) if k in by_id]
            waiting = [k for k in kids if k not in done]
            any_closed = any(by_id[k].status == "closed" or k in done for k in kids)
            if waiting and not (gate == "any-children" and any_closed):
                why.append(f"waits for the children of {target}: {', '.join(waiting)}")
    return why


def _run_bd(bd: str, root: str, *args: str) -> Any:
    """``bd ARGS --json`` in *root*, decoded; raises Problem when it fails."""
    import subprocess

    try:
        out = subprocess.run(
            [bd, *args, "--json"],
            cwd=root,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=BD_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise Problem("bd " + " ".join(args), 0, f"could not run: {exc}") from None
    if out.returncode != 0:
        said = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise Problem("bd " + " ".join(args), 0, f"exit {out.returncode}: {said[0]}")
    try:
        return json.loads(out.stdout or "[]")
    except ValueError as exc:
        raise Problem("bd " + " ".join(args), 0, f"not JSON: {exc}") from None


def _read_cli(bd: str, root: str, path: str, problems: list[Problem]) -> list[Task] | None:
    """Every issue from ``bd list``, marked ready as ``bd ready`` says and in its order;
    None (read the export instead) when bd cannot answer."""
    try:
        issues = _run_bd(bd, root, "list", "--all", "--limit", "0")
        ready = _run_bd(bd, root, "ready", "--limit", "0")
    except Problem as problem:
        problems.append(Problem(problem.where, 0, problem.message + "; reading the export"))
        return None
    if not isinstance(issues, list) or not isinstance(ready, list):
        problems.append(Problem(path, 0, "bd answered something other than a list"))
        return None
    rank = {r["id"]: n for n, r in enumerate(ready) if isinstance(r, dict) and "id" in r}
    tasks = []
    known = set()
    for number, data in enumerate([*issues, *ready], 1):
        if not isinstance(data, dict) or data.get("id") in known:
            continue
        order = (rank.get(data.get("id"), len(rank)), -_nanos(data.get("created_at")))
        where = f"bd:{data.get('id')}"
        task = _task(data, where, problems, path="bd list", number=number, order=(*order, ""))
        if task is not None:
            task.extra["cli_ready"] = task.id in rank
            task.group = path
            tasks.append(task)
            known.add(task.id)
    return tasks
