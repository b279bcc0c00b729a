"""Guards: stop an agent from editing or committing files another agent holds.

`blockers` answers the one question every guard asks — which live claims of *other* agents
cover this file (and, when lines are known, these lines)? — from a state, without I/O. The
faces around it:

* `guard_commit` (the git pre-commit hook): staged files and the line ranges of their hunks;
* `check_call` (every agent host's pre-tool hook, through `dibs.faces.hooks`): the files a tool
  call is about to write (`Call.writes`, parsed by `dibs.integrations.guard.edits`), and the
  lines where known.

Paths are resolved to the repository file they are (`relative_path`) from any work tree of the
clone — the main checkout, any agent's worktree — relative or absolute, through symlinks.

Who is acting comes from, in order: ``--agent/--token``, ``DIBS_AGENT``/``DIBS_TOKEN``, the
identity `dibs start` records in a worktree's git dir, and the agent of the host's session
(`dibs.integrations.sessions`; subagents are agents of their own). A guard never switches itself off
silently: when it cannot tell who is acting and that matters (a touched file is held), or the
store cannot be read, it refuses (block mode) or says so (warn mode).

The guard runs on every edit, so this module imports only what the claim path imports; git is
run only by the commit guard.
"""

from __future__ import annotations

import os

from dibs.core.leases import Context, eviction_reason, expires_in
from dibs.core.resources import covers_file
from dibs.core.state import EXCLUSIVE
from dibs.ground.errors import DibsError
from dibs.ground.humanize import seconds

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping
    from typing import Any

    from dibs.core.state import LeaseRecord, State
    from dibs.ground.git.discover import Repo
    from dibs.service import Coordinator

    Spans = list[tuple[int, int]] | None

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
    allowed: Collection[str] = (),
) -> list[Block]:
    """Live exclusive claims of agents other than *agent* covering *path* (and *lines*).

    Args:
        lines: the line ranges being changed; None means the whole file (or unknown).
        allowed: other agents whose claims do not stand in the way (a subagent's parent).
    """
    spans = list(lines) if lines is not None else [None]
    found: list[Block] = []
    for lease, resource in state.path_candidates(path):
        if lease["agent"] == agent or lease["agent"] in allowed or lease["mode"] != EXCLUSIVE:
            continue
        hit = next((span for span in spans if covers_file(resource, path, span)), False)
        if hit is False or eviction_reason(state, lease, ctx) is not None:
            continue
        found.append(Block(path, lease, expires_in(lease, ctx.now), resource.lines))
    return found


def work_tree_roots(repo: Repo) -> list[str]:
    """Every work tree of the clone (main checkout and linked worktrees), real paths, longest
    first, read from the common dir as git does (no git process)."""
    roots = {os.path.realpath(repo.root)}
    common = os.path.realpath(repo.common_dir)
    if os.path.basename(common) == ".git":
        roots.add(os.path.dirname(common))
    folder = os.path.join(common, "worktrees")
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    for name in names:
        try:
            with open(os.path.join(folder, name, "gitdir"), encoding="utf-8") as f:
                dotgit = f.read().strip()
        except OSError:
            continue
        if dotgit:
            roots.add(os.path.realpath(os.path.dirname(os.path.join(folder, name, dotgit))))
    return sorted(roots, key=len, reverse=True)


def relative_path(repo: Repo, path: str, cwd: str | None = None) -> str | None:
    """*path* as the repository file it is (``src/app.py``), or None outside every work tree.

    Any work tree of the clone counts: an edit through another agent's worktree or the main
    checkout is an edit of the same repository file. Symlinks are resolved first, so a link
    to a held file is the held file. Paths into a git dir are not files of the repository.
    """
    full = os.path.realpath(os.path.join(cwd or os.getcwd(), os.path.expanduser(path)))
    for root in work_tree_roots(repo):
        if full == root or full.startswith(root.rstrip(os.sep) + os.sep):
            relative = os.path.relpath(full, root).replace(os.sep, "/")
            if relative == "." or relative.split("/")[0] == ".git":
                return None
            return relative
    return None


def identity(
    repo: Repo, environ: Mapping[str, str], agent: str | None = None, token: str | None = None
) -> tuple[str | None, str | None]:
    """Who is acting: flags, then DIBS_AGENT/DIBS_TOKEN, then the worktree's identity."""
    from dibs.service.identity import resolve

    return resolve(repo, environ, agent, token)


def verified(state: State, agent: str | None, token: str | None) -> str | None:
    """*agent* when *token* is its session token, else None (nobody acts by naming an agent)."""
    from dibs.service import identity as who

    return who.verified(state, agent, token)


def edit_lines(path: str, tool: str, tool_input: Mapping[str, Any]) -> list[tuple[int, int]] | None:
    """The lines of *path* an Edit (every occurrence with ``replace_all``) or MultiEdit
    rewrites; None: the whole file, or unknown."""
    from dibs.integrations.guard.edits import replaced_lines

    if tool == "Edit":
        olds = [(tool_input.get("old_string"), bool(tool_input.get("replace_all")))]
    elif tool == "MultiEdit":  # gone from current Claude Code; still understood
        edits = tool_input.get("edits")
        if not isinstance(edits, list) or not all(isinstance(e, dict) for e in edits):
            return None
        olds = [(e.get("old_string"), bool(e.get("replace_all"))) for e in edits]
    else:
        return None
    return replaced_lines(path, olds)


class Call:
    """One tool call as every host's adapter describes it to the guard.

    Attributes:
        host: ``claude``, ``codex``, ``gemini`` or ``cursor``.
        tool: the host's tool name, for messages and the ``refuse`` event.
        cwd: the folder relative paths are taken from.
        session: the host's session id (None when it sent none).
        subagent: the subagent's id inside that session (Claude Code's ``agent_id``).
        writes: ``(path, lines)`` for each file the call writes (lines None: whole file).
        shell: the writes were read from a shell command (best effort).
    """

    __slots__ = ("cwd", "host", "session", "shell", "subagent", "tool", "writes")

    def __init__(
        self,
        host: str,
        tool: str,
        cwd: str,
        writes: list[tuple[str, list[tuple[int, int]] | None]],
        *,
        session: str | None = None,
        subagent: str | None = None,
        shell: bool = False,
    ):
        self.host = host
        self.tool = tool
        self.cwd = cwd
        self.writes = writes
        self.session = session
        self.subagent = subagent
        self.shell = shell


class Verdict:
    """What the guard decided: ``allow`` (with an optional ``message`` for the agent)."""

    __slots__ = ("allow", "blocks", "message")

    def __init__(self, allow: bool, message: str = "", blocks: list[Block] | None = None):
        self.allow = allow
        self.message = message
        self.blocks = blocks or []


def _escape(path: str) -> str:
    return "".join("\\" + ch if ch in "*?[\\" else ch for ch in path)


def _holds(state: State, ctx: Context, agents: Collection[str], path: str) -> bool:
    return any(
        lease["agent"] in agents and eviction_reason(state, lease, ctx) is None
        for lease, resource in state.path_candidates(path)
        if resource.lines is None
    )


def _folder_blockers(
    state: State, ctx: Context, path: str, *, agent: str | None, allowed: Collection[str]
) -> list[Block]:
    """Live exclusive claims of others on anything under folder *path* (``rm -r dir``)."""
    from dibs.core.resources import parse_resource

    found = []
    for lease in state.overlapping(parse_resource(f"path:{_escape(path)}/**")):
        if lease["agent"] == agent or lease["agent"] in allowed or lease["mode"] != EXCLUSIVE:
            continue
        if eviction_reason(state, lease, ctx) is None:
            found.append(Block(path, lease, expires_in(lease, ctx.now), None))
    return found


def _resolve(repo: Repo, call: Call) -> tuple[dict[str, Spans], set[str]]:
    """The repository files the call writes (with their lines) and folders it writes into."""
    writes: dict[str, Spans] = {}
    folders: set[str] = set()
    for raw, lines in call.writes:
        path = relative_path(repo, raw, call.cwd)
        if path is None:
            continue  # outside the repository: not ours to guard
        if os.path.isdir(os.path.join(call.cwd, raw)):
            folders.add(path)
        elif path in writes:
            old = writes[path]
            writes[path] = None if old is None or lines is None else old + lines
        else:
            writes[path] = lines
    return writes, folders


class _Acting:
    """Who makes a call: the agent named (and its token), whose claims it may ignore (a
    subagent's parent), and the session agent's name for the record."""

    __slots__ = ("agent", "allowed", "name", "token")

    def __init__(self, coord: Coordinator, repo: Repo, call: Call):
        from dibs.integrations import sessions

        self.agent, self.token = identity(repo, os.environ, coord.agent, coord.token)
        self.allowed: set[str] = set()
        self.name: str | None = None
        if self.agent is not None or not call.session:
            return
        self.name = sessions.session_agent_name(call.session, call.host)
        if call.subagent:
            parent = sessions.session_identity(coord, call.session, host=call.host, register=False)
            self.allowed.add(parent[0] if parent else self.name)
            self.name = sessions.subagent_name(self.name, call.subagent)
        found = sessions.session_identity(
            coord, call.session, host=call.host, subagent=call.subagent, register=False
        )
        if found is not None:
            self.agent, self.token = found


def check_call(
    coord: Coordinator, call: Call, *, mode: str, auto_claim: bool, ttl: float
) -> Verdict:
    """Decide one tool call of any host: refuse (block mode) or warn when it writes a file
    another agent holds; with *auto_claim*, claim the free files it writes for the acting
    agent (the session's own agent when nobody else is named)."""
    repo = coord.repo
    if repo is None:
        return Verdict(True)
    writes, folders = _resolve(repo, call)
    if not writes and not folders:
        return Verdict(True)
    acting = _Acting(coord, repo, call)
    state, now = coord.read()
    ctx = coord.context(now)
    me = verified(state, acting.agent, acting.token)
    allowed = acting.allowed
    found = [
        block
        for path, lines in sorted(writes.items())
        for block in blockers(state, ctx, path, agent=me, lines=lines, allowed=allowed)
    ]
    found += [
        block
        for folder in sorted(folders)
        for block in _folder_blockers(state, ctx, folder, agent=me, allowed=allowed)
    ]
    if found:
        reason = "; ".join(b.describe() for b in found[:3])
        if me is None and acting.agent is not None:
            reason += f" (and the session token for {acting.agent} is wrong)"
        elif me is None and not call.session:
            reason += " (dibs cannot tell which agent is editing: set DIBS_AGENT/DIBS_TOKEN)"
        _log_refusal(coord, me or acting.agent or acting.name or "unknown", found, call)
        if mode == "block":
            return Verdict(False, f"dibs: {reason}; pick other work, or wait for it", found)
        return Verdict(True, f"dibs warn: {reason}; this edit goes ahead (warn mode)", found)
    notes = []
    theirs = [p for p in sorted(writes) if allowed and _holds(state, ctx, allowed, p)]
    if theirs:
        notes.append(
            f"dibs: {', '.join(theirs)} held by your parent session ({', '.join(allowed)}): "
            "this subagent may edit it"
        )
    if auto_claim:
        mine = {me, *allowed} if me is not None else allowed
        wanted = [p for p in sorted(writes) if not _holds(state, ctx, mine, p)]
        refused = _auto_claim(coord, call, acting, me=me, paths=wanted, ttl=ttl) if wanted else None
        if refused is not None and mode == "block":
            return Verdict(False, refused)
        if refused is not None:
            notes.append(refused.replace("dibs:", "dibs warn:", 1))
    return Verdict(True, "\n".join(notes))


def _auto_claim(
    coord: Coordinator, call: Call, acting: _Acting, *, me: str | None, paths: list[str], ttl: float
) -> str | None:
    """Claim *paths* for the acting agent (registering the session's agent on its first
    edit); the refusal's message when someone got there first."""
    from dibs.integrations import sessions

    token = acting.token
    if me is None and acting.agent is None and call.session:
        found = sessions.session_identity(
            coord, call.session, host=call.host, subagent=call.subagent
        )
        if found is not None:
            me, token = found
    if me is None:
        return None
    before = coord.agent, coord.token
    coord.agent, coord.token = me, token
    try:
        coord.claim(
            [f"path:{_escape(p)}" for p in paths], ttl=ttl, note="auto-claimed on first edit"
        )
    except DibsError as exc:
        return f"dibs: {exc.message}; pick other work, or wait for it"
    finally:
        coord.agent, coord.token = before
    return None


def _log_refusal(coord: Coordinator, agent: str, found: list[Block], call: Call) -> None:
    """A blocked edit is a refused claim, for the conflict rate (`dibs metrics`)."""
    import contextlib

    from dibs.core.events import new_event
    from dibs.core.leases import Decision

    first = found[0]
    holders = ",".join(sorted({b.lease["agent"] for b in found}))

    def decide(_state: State, ctx: Context) -> Decision:
        event = new_event(
            "refuse",
            ctx.now,
            agent=agent,
            resource=f"path:{_escape(first.path)}",
            mode=EXCLUSIVE,
            by=holders,
            tool=f"{call.host}:{call.tool}",
        )
        return Decision([event])

    with contextlib.suppress(DibsError):  # a record of a refusal must not hide it
        coord.transact(decide)


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
    from dibs.ground.git.run import git

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


def guard_commit(coord: Coordinator, *, mode: str) -> tuple[int, list[str], list[Block]]:
    """Check the staged changes: ``(exit code, messages, blocks)``; non-zero refuses."""
    repo = coord.repo
    if repo is None:
        return 0, [], []
    changes = staged_changes(repo)
    agent, token = identity(repo, os.environ, coord.agent, coord.token)
    state, now = coord.read()
    ctx = coord.context(now)
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
