"""One dibs agent per agent session: the edit hook and the MCP server of one client act as one.

A host (Claude Code, Codex, Gemini CLI, Cursor) runs its hooks and its MCP servers as child
processes of one *client* process. Both faces find the same agent without anyone exporting
``DIBS_AGENT``:

* the hook knows the session id (``session_id``; Cursor: ``conversation_id``) and derives the
  agent's name from it: ``claude-`` and 12 hex digits of a hash of the session id (``codex-``,
  ``gemini-``, ``cursor-`` for the other hosts);
* the MCP server knows only its client process (its parent, past any shell or launcher). The
  hook records that client next to the session (``SessionStart`` or the first guarded call),
  so `session_agent` finds "the session agent of the client that started me".

The agent and its token live in ``<store>/sessions/<key>.json`` (mode 0600, the folder 0700),
written under an exclusive lock on ``<store>/sessions/.lock``, so two faces racing for a new
session register it once. A session agent is registered with the client's pid: when the client
exits the agent is dead, its claims are evicted at once, and the next hook call anywhere (or
``SessionEnd``) unregisters it with its own token, so it leaves ``dibs status``.

What the guard says on an allowed call of a host that does not show it to the model (Gemini
CLI's ``BeforeTool``) waits in ``<store>/sessions/<agent>.notes`` for the same call's
after-tool hook (`keep_note`, `take_notes`).

Subagents (Claude Code's ``agent_id`` inside a session) are agents of their own,
``<parent>-sub-<8 hex>``: sibling subagents block each other like any two agents. Their
parent's claims do not block them (they work on the parent's behalf) and are named to them
when they touch such a file; see `parent_of`.
"""

from __future__ import annotations

import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.service import Coordinator

#: Process names that stand between a host and the dibs process it started (shells, launchers).
_BETWEEN = frozenset(
    {"sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "env", "timeout", "nice", "nohup",
     "dibs", "dibs-hook", "uv", "uvx", "pipx", "npx", "xargs", "script", "stdbuf"}
)  # fmt: skip
HOSTS = ("claude", "codex", "gemini", "cursor")


def _hash(text: str, size: int) -> str:
    from _blake2 import blake2b

    return blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).hexdigest()


def session_agent_name(session: str, host: str = "claude") -> str:
    """The agent dibs registers for *host*'s session *session*: ``claude-`` + 12 hex digits."""
    return f"{host}-" + _hash(session, 6)


def subagent_name(parent: str, agent_id: str) -> str:
    """The agent of subagent *agent_id* inside the session whose agent is *parent*."""
    return f"{parent}-sub-" + _hash(agent_id, 4)


def parent_of(agent: str | None) -> str | None:
    """The session agent a subagent works under (None: not a subagent)."""
    if agent is None or "-sub-" not in agent:
        return None
    return agent.rsplit("-sub-", 1)[0]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(name, parent pid, start)`` of process *pid*, or None when it is gone."""
    from dibs.ground import platform

    found = platform.process_parent(pid)
    start = platform.process_start(pid)
    if found is None or start is None:
        return None
    return found[0], found[1], start


#: The process whose call this process runs (`called_by`), or None: this process itself.
_caller: list[int] = []


def called_by(pid: int) -> None:
    """Run as the call of process *pid*: the helper (`dibs.cli.helper`) runs a CLI call for a
    client process, whose ancestry (not the helper's) leads to the session's host. *pid* comes
    from the kernel (the socket's peer credentials), never from the caller's word."""
    _caller[:] = [pid]


def _parent() -> int:
    """The parent of the process making this call (the helper's client, else ours)."""
    if not _caller:
        return os.getppid()
    from dibs.ground import platform

    found = platform.process_parent(_caller[0])
    return found[1] if found is not None else 0


def client_process(pid: int | None = None) -> tuple[int, int] | None:
    """The host process that started this one: ``(pid, start ticks)``, or None.

    Walks up from *pid* (default: the parent of the process making this call) past shells
    and launchers; the first other process is the client. None when that leads to init
    (nothing to watch).
    """
    current = _parent() if pid is None else pid
    for _ in range(16):
        if current <= 1:
            return None
        stat = _stat(current)
        if stat is None:
            return None
        name, parent, start = stat
        if name not in _BETWEEN:
            return current, start  # a Python parent is a host too (a harness, an agent)
        current = parent
    return None


def _folder(coord: Coordinator) -> str:
    repo = coord.repo
    return os.path.join(repo.store_dir if repo is not None else ".", "sessions")


class _Locked:
    """An exclusive lock on the sessions folder (`dibs.ground.platform.lock`: released if we
    die)."""

    def __init__(self, folder: str):
        self.folder = folder
        self.fd = -1

    def __enter__(self) -> _Locked:
        from dibs.ground import platform

        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        self.fd = os.open(os.path.join(self.folder, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        platform.lock(self.fd)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)  # closing drops the flock


def _read(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _registered(coord: Coordinator, record: dict[str, Any] | None) -> tuple[str, str] | None:
    """The record's agent and token when that agent is still registered with that token."""
    if not record or not record.get("token") or not record.get("agent"):
        return None
    from dibs.service.identity import verified

    state, _now = coord.read()
    agent, token = str(record["agent"]), str(record["token"])
    return (agent, token) if verified(state, agent, token) is not None else None


def _register(
    coord: Coordinator, name: str, client: tuple[int, int] | None, path: str, record: dict[str, Any]
) -> tuple[str, str]:
    from dibs.ground import host

    pid = None
    if client is not None and host.process_start(client[0]) == client[1]:
        pid = client[0]
    agent, token = coord.agent, coord.token
    try:
        registration = coord.register(
            name, ttl=float(coord.settings["guard.auto_claim_ttl"]), pid=pid
        )
    finally:
        coord.agent, coord.token = agent, token
    record.update(agent=name, token=registration["token"])
    if client is not None:
        record["client"] = list(client)
    _write(path, record)
    return name, str(registration["token"])


def session_identity(
    coord: Coordinator,
    session: str,
    *,
    host: str = "claude",
    subagent: str | None = None,
    register: bool = True,
    client: tuple[int, int] | None = None,
) -> tuple[str, str] | None:
    """The agent of *host*'s session *session* (and *subagent* in it) and its token.

    Registers it on first use when *register* (else None until someone has). A session whose
    client's MCP server registered an agent first (before any hook knew the session id)
    adopts that agent, registering or not, so both faces act as one.
    """
    folder = _folder(coord)
    name = session_agent_name(session, host)
    if subagent:
        name = subagent_name(name, subagent)
    path = os.path.join(folder, name + ".json")
    found = _registered(coord, _read(path))
    if found is not None:
        return found
    client = client if client is not None else client_process()
    orphan = (
        not subagent
        and client is not None
        and any(
            r.get("session") is None and r.get("client") == list(client)
            for _path, r in _records(folder)
        )
    )
    if not register and not orphan:
        return None
    with _Locked(folder):
        record = _read(path) or {}
        found = _registered(coord, record)
        if found is not None:
            return found
        if orphan and client is not None:
            adopted = _adopt(coord, folder, client=client, session=session, host=host, path=path)
            if adopted is not None or not register:
                return adopted
        if not register:
            return None
        record.update(host=host, session=session, subagent=subagent, parent=parent_of(name))
        return _register(coord, name, client, path, record)


def _adopt(
    coord: Coordinator, folder: str, *, client: tuple[int, int], session: str, host: str, path: str
) -> tuple[str, str] | None:
    """Take over the agent an MCP server registered for *client* before the session was known."""
    for entry in _records(folder):
        record = entry[1]
        if record.get("session") is None and record.get("client") == list(client):
            found = _registered(coord, record)
            if found is not None:
                record.update(session=session, host=host)
                _write(path, record)
                os.remove(entry[0])
                return found
    return None


def _records(folder: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    out = []
    for name in names:
        if name.endswith(".json"):
            record = _read(os.path.join(folder, name))
            if record is not None:
                out.append((os.path.join(folder, name), record))
    return out


def note_client(coord: Coordinator, session: str, *, host: str = "claude") -> None:
    """Record which client process runs *session* (``SessionStart``), registering nobody."""
    client = client_process()
    if client is None:
        return
    folder = _folder(coord)
    path = os.path.join(folder, session_agent_name(session, host) + ".json")
    with _Locked(folder):
        record = _read(path) or {}
        if record.get("client") == list(client):
            return
        record.update(host=host, session=session, client=list(client))
        record.setdefault("agent", session_agent_name(session, host))
        _write(path, record)


def _notes(coord: Coordinator, session: str, host: str) -> str:
    return os.path.join(_folder(coord), session_agent_name(session, host) + ".notes")


def keep_note(coord: Coordinator, session: str, text: str, *, host: str = "claude") -> None:
    """Keep *text* for the model of *host*'s session until `take_notes`: for a host that does
    not show the model what the guard says on an allowed call (Gemini CLI's BeforeTool), the
    same call's after-tool hook says it."""
    folder = _folder(coord)
    path = _notes(coord, session, host)
    with _Locked(folder):
        kept = (_read(path) or {}).get("notes") or []
        _write(path, {"notes": [*kept, text][-20:]})


def take_notes(coord: Coordinator, session: str, *, host: str = "claude") -> str:
    """The notes kept for the session (`keep_note`), as one text, forgotten as they are read;
    a look for a file when there are none."""
    path = _notes(coord, session, host)
    if not os.path.exists(path):
        return ""
    with _Locked(_folder(coord)):
        kept = (_read(path) or {}).get("notes") or []
        try:
            os.remove(path)
        except OSError:
            return ""
    return "\n\n".join(str(n) for n in kept)


def session_agent(
    coord: Coordinator, *, pid: int | None = None, register: bool = True
) -> tuple[str, str] | None:
    """The session agent of the client that started this process: ``(agent, token)``.

    For the MCP server (its client is its parent, past shells and launchers; *pid* overrides
    where the walk starts). Finds the agent the client's hooks use: a session whose
    ``SessionStart`` or guarded edit recorded this client (the newest one, if the client ran
    several sessions one after another), registering it under its session name when nobody
    has yet. When no hook has told dibs about the client, and *register*, registers
    ``session-<12 hex>`` for the client; the client's hooks adopt it on their first call.
    None when there is no client to tell (started by init) or nothing found and not
    *register*. Never acts for a subagent: subagents have no MCP server of their own.
    """
    client = client_process(pid)
    if client is None:
        return None
    folder = _folder(coord)
    mine = [
        (os.path.getmtime(path), path, record)
        for path, record in _records(folder)
        if record.get("client") == list(client) and not record.get("subagent")
    ]
    for _mtime, _path, record in sorted(mine, key=lambda m: m[0], reverse=True):
        found = _registered(coord, record)
        if found is not None:
            return found
    if not register:
        return None
    with _Locked(folder):
        for _mtime, path, seen in sorted(mine, key=lambda m: m[0], reverse=True):
            record = _read(path) or seen
            found = _registered(coord, record)
            if found is not None:
                return found
            if record.get("session"):
                name = session_agent_name(str(record["session"]), str(record.get("host")))
                return _register(coord, name, client, path, record)
        name = "session-" + _hash(f"{client[0]}:{client[1]}", 6)
        path = os.path.join(folder, name + ".json")
        return _register(coord, name, client, path, {"session": None, "host": None})


def end_session(coord: Coordinator, session: str, *, host: str = "claude") -> list[str]:
    """``SessionEnd``: unregister the session's agent and its subagents; the names gone."""
    name = session_agent_name(session, host)
    return _drop(
        coord, lambda r: r.get("session") == session and r.get("host", host) == host
    ) + _drop(coord, lambda r: parent_of(str(r.get("agent"))) == name)


def end_subagent(
    coord: Coordinator, session: str, subagent: str, *, host: str = "claude"
) -> list[str]:
    """``SubagentStop``: unregister that subagent's agent."""
    name = subagent_name(session_agent_name(session, host), subagent)
    return _drop(coord, lambda r: r.get("agent") == name)


def sweep(coord: Coordinator) -> list[str]:
    """Unregister session agents whose client is gone, or that are stale and hold nothing."""
    from dibs.ground import host

    state, now = coord.read()
    ctx = coord.context(now)
    prefixes = tuple(f"{h}-" for h in (*HOSTS, "session"))
    if not any(name.startswith(prefixes) and _gone(state, ctx, name) for name in state.agents):
        return []  # the common case, decided from the state alone: no file is read

    def gone(record: dict[str, Any]) -> bool:
        known = state.agents.get(str(record.get("agent")))
        if known is None or not record.get("token"):
            client = record.get("client")
            # Only a client record (SessionStart) or a forgotten agent: keep it while the
            # client runs.
            return not (
                isinstance(client, list)
                and len(client) == 2
                and host.process_start(int(client[0])) == client[1]
            )
        return _gone(state, ctx, known["name"])

    return _drop(coord, gone)


def _gone(state: Any, ctx: Any, name: str) -> bool:
    """Whether agent *name*'s client is gone, or it is stale and holds nothing."""
    from dibs.core.leases import agent_status

    status = agent_status(state.agents[name], ctx)
    return status == "dead" or (status == "stale" and not state.leases_of(name))


def _drop(coord: Coordinator, which: Any) -> list[str]:
    """Unregister (with their own tokens) the agents of the records *which* picks."""
    import contextlib

    from dibs.ground.errors import DibsError

    folder = _folder(coord)
    if not any(which(record) for _path, record in _records(folder)):
        return []
    dropped = []
    with _Locked(folder):
        for path, record in _records(folder):
            if not which(record):
                continue
            found = _registered(coord, record)
            if found is not None:
                acting = coord.agent, coord.token
                coord.agent, coord.token = found
                try:
                    with contextlib.suppress(DibsError):
                        coord.unregister()
                        dropped.append(found[0])
                finally:
                    coord.agent, coord.token = acting
            with contextlib.suppress(OSError):
                os.remove(path)
            with contextlib.suppress(OSError):
                os.remove(path.removesuffix(".json") + ".notes")
    return dropped
