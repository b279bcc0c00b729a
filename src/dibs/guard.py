"""Guards: stop an agent from editing or committing files another agent holds.

`blockers` answers the one question every guard asks — which live claims of *other* agents
cover this file (and, when lines are known, these lines)? — from a state, without I/O. The
faces around it:

* `guard_commit` (the git pre-commit hook): staged files and the line ranges of their hunks;
* `guard_claude` (Claude Code's PreToolUse hook): the file an Edit/Write/MultiEdit/NotebookEdit
  is about to change, and for an Edit the lines of the text it replaces.

Who is acting comes from, in order: ``--agent/--token``, ``DIBS_AGENT``/``DIBS_TOKEN``, the
identity `dibs start` records in a worktree's git dir, and (Claude Code only) the agent dibs
registered for the session on its first auto-claimed edit. A guard never switches itself off
silently: when it cannot tell who is acting and that matters (a touched file is held), or the
store cannot be read, it refuses (block mode) or says so on stderr (warn mode).

The guard runs on every edit, so this module imports only what the claim path imports; git is
run only by the commit guard.
"""

from __future__ import annotations

import json
import os

from dibs.core.leases import Context, eviction_reason, expires_in
from dibs.core.resources import covers_file
from dibs.core.state import EXCLUSIVE
from dibs.errors import DibsError, UsageError
from dibs.git.discover import worktree_identity
from dibs.humanize import seconds

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

    from dibs.core.state import LeaseRecord, State
    from dibs.git.discover import Repo
    from dibs.service import Coordinator

MODES = ("block", "warn")
#: Claude Code tools that change a file, and where their input names it.
EDIT_TOOLS = {
    "Edit": "file_path",
    "Write": "file_path",
    "MultiEdit": "file_path",
    "NotebookEdit": "notebook_path",
}


class Block:
    """One reason to refuse: *path* (lines *lines*) is held by another agent."""

    __slots__ = ("lease", "lines", "path", "seconds_left")

    def __init__(
        self, path: str, lease: LeaseRecord, seconds_left: float, lines: tuple[int, int] | None
    ):
        self.path = path
        self.lease = lease
        self.seconds_left = seconds_left
        self.lines = lines

    def describe(self) -> str:
        """``src/app.py is held by agent-2 (path:src/**, expires in 74 s)``."""
        where = self.path if self.lines is None else f"{self.path}#L{self.lines[0]}-{self.lines[1]}"
        return (
            f"{where} is held by {self.lease['agent']} ({self.lease['resource']}, expires in "
            f"{seconds(self.seconds_left)})"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "lines": list(self.lines) if self.lines else None,
            "holder": self.lease["agent"],
            "resource": self.lease["resource"],
            "token": self.lease["token"],
            "expires_in": round(self.seconds_left, 3),
        }


def blockers(
    state: State,
    ctx: Context,
    path: str,
    *,
    agent: str | None,
    lines: Iterable[tuple[int, int]] | None = None,
) -> list[Block]:
    """Live exclusive claims of agents other than *agent* covering *path* (and *lines*).

    Args:
        lines: the line ranges being changed; None means the whole file (or unknown).
    """
    spans = list(lines) if lines is not None else [None]
    found: list[Block] = []
    for lease, resource in state.path_candidates(path):
        if lease["agent"] == agent or lease["mode"] != EXCLUSIVE:
            continue
        hit = next((span for span in spans if covers_file(resource, path, span)), False)
        if hit is False or eviction_reason(state, lease, ctx) is not None:
            continue
        found.append(Block(path, lease, expires_in(lease, ctx.now), resource.lines))
    return found


def relative_path(repo: Repo, path: str, cwd: str | None = None) -> str | None:
    """*path* relative to the repository root, or None when it lies outside the repository."""
    full = os.path.realpath(os.path.join(cwd or os.getcwd(), path))
    root = os.path.realpath(repo.root)
    if full != root and not full.startswith(root + os.sep):
        return None
    relative = os.path.relpath(full, root).replace(os.sep, "/")
    return None if relative == "." or relative.split("/")[0] == ".git" else relative


def identity(
    repo: Repo, environ: Mapping[str, str], agent: str | None = None, token: str | None = None
) -> tuple[str | None, str | None]:
    """Who is acting: flags, then DIBS_AGENT/DIBS_TOKEN, then the worktree's identity."""
    agent = agent or environ.get("DIBS_AGENT") or None
    token = token or environ.get("DIBS_TOKEN") or None
    if agent is None:
        recorded = worktree_identity(repo)
        if recorded is not None:
            agent, token = recorded
    return agent, token


def verified(state: State, agent: str | None, token: str | None) -> str | None:
    """*agent* when *token* is its session token, else None (nobody acts by naming an agent)."""
    if agent is None or token is None:
        return None
    from dibs.service import secret_hash

    record = state.agents.get(agent)
    return agent if record is not None and record["secret"] == secret_hash(token) else None


def edit_lines(path: str, tool: str, tool_input: Mapping[str, Any]) -> list[tuple[int, int]] | None:
    """The lines of *path* an Edit or MultiEdit replaces (None: the whole file, or unknown)."""
    if tool == "Edit":
        olds = [tool_input.get("old_string")]
    elif tool == "MultiEdit":
        olds = [edit.get("old_string") for edit in tool_input.get("edits") or []]
    else:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return None
    spans = []
    for old in olds:
        if not isinstance(old, str) or not old:
            return None
        at = text.find(old)
        if at < 0:
            return None
        first = text.count("\n", 0, at) + 1
        spans.append((first, first + old.count("\n")))
    return spans


class HookInput:
    """What Claude Code sends a PreToolUse hook on stdin, checked."""

    __slots__ = ("cwd", "lines", "path", "session", "tool")

    def __init__(self, raw: str):
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise UsageError(
                f"the hook input is not JSON ({exc})",
                hint="dibs guard claude reads Claude Code's PreToolUse hook JSON on stdin",
            ) from exc
        if not isinstance(data, dict):
            raise UsageError("the hook input is not a JSON object")
        self.tool = str(data.get("tool_name") or "")
        tool_input = data.get("tool_input") or {}
        if not isinstance(tool_input, dict):
            raise UsageError("tool_input in the hook input is not an object")
        self.cwd = str(data.get("cwd") or os.getcwd())
        self.session = str(data.get("session_id") or "") or None
        key = EDIT_TOOLS.get(self.tool)
        raw_path = tool_input.get(key) if key else None
        self.path = os.path.join(self.cwd, raw_path) if isinstance(raw_path, str) else None
        self.lines = edit_lines(self.path, self.tool, tool_input) if self.path else None


def session_agent_name(session: str) -> str:
    """The agent dibs registers for a Claude Code session: ``claude-`` and 12 hex digits."""
    from _blake2 import blake2b

    return "claude-" + blake2b(session.encode(), digest_size=6).hexdigest()


def guard_claude(
    dibs: Coordinator, hook: HookInput, *, mode: str, auto_claim: bool, ttl: float
) -> tuple[int, str]:
    """Decide one PreToolUse call: ``(exit code, message)``; exit 2 blocks the tool call."""
    if hook.path is None:
        return 0, ""  # not an edit, or no file named: nothing to guard
    repo = dibs.repo
    if repo is None:
        return 0, ""
    path = relative_path(repo, hook.path, hook.cwd)
    if path is None:
        return 0, ""  # outside the repository: not ours to guard
    agent, token = identity(repo, os.environ, dibs.agent, dibs.token)
    if agent is None and hook.session and auto_claim:
        agent, token = session_identity(dibs, hook.session)
    state, now = dibs.store.read()
    ctx = dibs.context(now)
    me = verified(state, agent, token)
    found = blockers(state, ctx, path, agent=me, lines=hook.lines)
    if found:
        reason = "; ".join(b.describe() for b in found[:3])
        if me is None and agent is not None:
            reason += f" (and the session token for {agent} is wrong)"
        elif me is None:
            reason += " (dibs cannot tell which agent is editing: set DIBS_AGENT/DIBS_TOKEN)"
        message = f"dibs: {reason}; pick other work, or wait for it"
        return (2, message) if mode == "block" else (0, message.replace("dibs:", "dibs warn:"))
    if auto_claim and me is not None and not _holds(state, ctx, me, path):
        dibs.agent, dibs.token = me, token
        try:
            dibs.claim([f"path:{_escape(path)}"], ttl=ttl, note="auto-claimed on first edit")
        except DibsError as exc:  # someone got there first: refuse like a held file
            message = f"dibs: {exc.message}; pick other work, or wait for it"
            return (2, message) if mode == "block" else (0, message)
    return 0, ""


def _holds(state: State, ctx: Context, agent: str, path: str) -> bool:
    return any(
        lease["agent"] == agent and eviction_reason(state, lease, ctx) is None
        for lease, resource in state.path_candidates(path)
        if resource.lines is None
    )


def _escape(path: str) -> str:
    return "".join("\\" + ch if ch in "*?[\\" else ch for ch in path)


def session_identity(dibs: Coordinator, session: str) -> tuple[str, str]:
    """The agent registered for a Claude Code session (registered on first use), and its token.

    The token is kept in ``<store>/sessions/<session>.json`` (mode 0600), so later hook calls of
    the same session act as the same agent.
    """
    repo = dibs.repo
    folder = os.path.join(repo.store_dir if repo else ".", "sessions")
    name = session_agent_name(session)
    path = os.path.join(folder, name + ".json")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return str(data["agent"]), str(data["token"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    os.makedirs(folder, mode=0o700, exist_ok=True)
    registration = dibs.register(name, ttl=float(dibs.settings["guard.auto_claim_ttl"]))
    fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump({"agent": name, "token": registration["token"], "session": session}, f)
    os.replace(path + ".tmp", path)
    return name, registration["token"]


def staged_changes(repo: Repo) -> dict[str, list[tuple[int, int]] | None]:
    """Files staged for commit and the new-file line ranges of their hunks (None: whole file)."""
    return diff_changes(repo.root, "--cached")


def diff_changes(
    root: str, *spec: str, lines: bool = True
) -> dict[str, list[tuple[int, int]] | None]:
    """Files ``git diff SPEC`` changes and the new-file line ranges of their hunks.

    None stands for the whole file: added, deleted or retyped files, files whose changes have
    no hunks to read (binary, or a name git quotes), and every file when *lines* is false (one
    git call instead of two). The commit guard reads the staged changes (``--cached``); the
    merge queue reads what a landing adds (``BASE COMMIT``).
    """
    from dibs.git.run import git

    names = git(root, "diff", "--name-status", "-z", "--no-renames", *spec)
    fields = [f for f in names.split("\0") if f]
    changes: dict[str, list[tuple[int, int]] | None] = {}
    for status, path in zip(fields[::2], fields[1::2], strict=False):
        changes[path] = None if status in ("A", "D", "T") or not lines else []
    if not lines:
        return changes
    # Fixed prefixes: diff.noprefix or diff.mnemonicPrefix would hide the names we read.
    prefixes = ("--src-prefix=a/", "--dst-prefix=b/")
    diff = git(root, "diff", "-U0", "--no-color", "--no-renames", "--no-ext-diff", *prefixes, *spec)
    current: str | None = None
    for line in diff.splitlines():
        if line.startswith("+++ "):
            target = line[4:].removesuffix("\t")  # git adds a tab after a name with a space
            current = target[2:] if target.startswith("b/") else None
        elif line.startswith("@@ ") and current is not None and changes.get(current) is not None:
            new = line.split(" ")[2]  # +start,count
            start_text, _, count_text = new[1:].partition(",")
            start, count = int(start_text), int(count_text or "1")
            # A deletion (count 0) sits between new lines start and start + 1: both count,
            # or deleting the first line of a held range would go unseen.
            first, last = max(start, 1), start + count - 1 if count else start + 1
            spans = changes[current]
            if spans is not None:
                spans.append((first, max(first, last)))
    return {path: (spans or None) for path, spans in changes.items()}


def guard_commit(dibs: Coordinator, *, mode: str) -> tuple[int, list[str], list[Block]]:
    """Check the staged changes: ``(exit code, messages, blocks)``; non-zero refuses."""
    repo = dibs.repo
    if repo is None:
        return 0, [], []
    changes = staged_changes(repo)
    agent, token = identity(repo, os.environ, dibs.agent, dibs.token)
    state, now = dibs.store.read()
    ctx = dibs.context(now)
    me = verified(state, agent, token)
    found = [
        block
        for path, spans in sorted(changes.items())
        for block in blockers(state, ctx, path, agent=me, lines=spans)
    ]
    if not found:
        return 0, [], []
    messages = [b.describe() for b in found]
    if me is None:
        who = f"the session token for {agent} is wrong" if agent else "no agent is set"
        messages.append(f"dibs cannot tell which agent is committing ({who})")
    return (3 if mode == "block" else 0), messages, found
