"""``dibs mcp``: the service verbs as MCP tools, over stdio (the official ``mcp`` SDK).

One server process acts for one agent at a time: the agent named by ``--agent``/``DIBS_AGENT``
or the worktree the server runs in, or the one ``register`` starts (its token stays in the
server). An agent the server registers watches the client process (the server's parent): when
the client dies its claims are evicted at once, and when the client closes the connection the
server unregisters it, so a restarted client is not locked out of its own name.

``check``, ``land`` and ``finish`` act on the acting agent's own worktree, branch and issue
(from ``start``/``next``), wherever the server itself was started.

Every tool takes JSON arguments described by a schema (each argument with its units, pattern
and default) and carries annotations (read-only, destructive, idempotent). A failure is an MCP
tool error whose text is the CLI's message, a hint phrased as MCP calls, and the error's JSON::

    dibs: issue:ROOSE-158 is held by agent-2, exclusive, expires in 74 s
    hint: wait for it with the `wait` argument (seconds), or pick other work
    {"error": "conflict", "exit_code": 3, ...}
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from typing import Any

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from dibs.service import Coordinator

#: Tools and the arguments they take, for phrasing CLI hints as MCP calls.
_FLAGS = {
    "wait": "`wait` argument (seconds)",
    "ttl": "`ttl` argument (seconds)",
    "force": "`force` argument",
    "shared": "`shared` argument",
    "steal": "`steal` argument",
    "issue": "`issue` argument",
    "base": "`base` argument",
}
_TOOLS = (
    "register", "unregister", "claim", "renew", "release", "heartbeat", "status", "ready",
    "next", "start", "finish", "check", "land", "limit_take", "inbox", "send",
)  # fmt: skip


def command() -> list[str]:
    """How a client starts this dibs: an absolute path, so the client's PATH does not matter.

    The ``dibs`` script next to this interpreter, else the interpreter with ``-m dibs``.
    """
    script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "dibs")
    if os.access(script, os.X_OK):
        return [script]
    return [os.path.abspath(sys.executable), "-m", "dibs"]


def config_snippet(repo_root: str) -> dict[str, Any]:
    """What to add to an agent's MCP settings (Claude Code: .mcp.json) to use dibs."""
    program, *args = command()
    return {"mcpServers": {"dibs": {"command": program, "args": [*args, "mcp", "-C", repo_root]}}}


def mcp_hint(hint: str) -> str:
    """A CLI hint phrased for an MCP client: tools instead of commands, arguments instead of
    flags, `register` instead of environment variables."""
    if "DIBS_AGENT" in hint or "--agent" in hint or "DIBS_TOKEN" in hint:
        return "call `register` with a name first (the server keeps the session token)"
    verbs = "|".join(_TOOLS)
    hint = re.sub(rf"`?dibs ({verbs})\b[^`;,)]*`?", r"`\1`", hint)

    def flag(match: re.Match[str]) -> str:
        name = match.group(1)
        return "the " + _FLAGS[name] if name in _FLAGS else match.group(0)

    return re.sub(r"--([a-z][a-z-]*)(?: [A-Z][A-Z_]*)?", flag, hint)


def build(coord: Coordinator, acting: Acting | None = None) -> Any:
    """The MCP server with every verb this build of dibs has."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
        from mcp.types import ToolAnnotations

        from dibs.faces.mcp.tools import add_tools
    except ImportError as exc:
        from dibs.ground.errors import UsageError

        raise UsageError(
            f"`dibs mcp` needs the mcp extra ({exc.name} is missing)",
            hint="pip install 'dibs[mcp]'",
        ) from None
    from dibs.ground.errors import DibsError
    from dibs.ground.version import __version__

    server = MCPServer("dibs", version=__version__, instructions=_INSTRUCTIONS)
    acting = acting if acting is not None else Acting(coord)

    def tool(
        *, read_only: bool = False, destructive: bool = False, idempotent: bool = False
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        def register_tool(fn: Callable[..., Any]) -> Callable[..., Any]:
            import functools

            @functools.wraps(fn)  # keeps the signature: the SDK builds the schema from it
            def wrapped(*args: Any, **kwargs: Any) -> Any:
                try:
                    return fn(*args, **kwargs)
                except DibsError as exc:
                    said = exc.to_json()
                    text = f"dibs: {exc.message}\n"
                    if exc.hint:
                        said["hint"] = mcp_hint(exc.hint)
                        text += f"hint: {said['hint']}\n"
                    raise ToolError(text + json.dumps(said)) from None

            hints = ToolAnnotations(
                read_only_hint=read_only,
                destructive_hint=destructive,
                idempotent_hint=idempotent,
                open_world_hint=False,
            )
            server.tool(
                name=fn.__name__,
                description=" ".join((fn.__doc__ or "").split()),
                annotations=hints,
            )(wrapped)
            return fn

        return register_tool

    add_tools(coord, acting, tool)
    return server


class Acting:
    """Who the server acts as, and the agent it registered itself (``owned``), which it
    unregisters when the client goes."""

    __slots__ = ("coord", "owned")

    def __init__(self, coord: Coordinator):
        self.coord = coord
        self.owned: str | None = None

    def register(self, name: str, ttl: float | None) -> dict[str, Any]:
        from dibs.ground.errors import NotFound

        coord = self.coord
        if self.owned == name and coord.agent == name and coord.token:
            try:
                info = coord.agent_info(name)
                return {"agent": name, "ttl": info["ttl"], "pid": info["pid"], "replaced": False}
            except NotFound:  # evicted or unregistered by someone else: register it anew
                self.owned = None
        if self.owned is not None and coord.agent == self.owned and coord.token:
            state, _ = coord.read()
            held = [lease["resource"] for lease in state.leases_of(self.owned)]
            if held:
                from dibs.ground.errors import Refused

                raise Refused(
                    f"this server already acts as {self.owned}, which holds {', '.join(held[:5])}",
                    hint=f"`release` or `finish` {self.owned}'s work (or `unregister` it), "
                    "then register again",
                )
            self.unregister()
        client = os.getppid()
        result = coord.register(name, ttl=ttl, pid=client if client > 1 else None)
        self.owned = name
        return {k: v for k, v in result.items() if k != "token"}

    def unregister(self) -> dict[str, Any]:
        self.me()
        result = self.coord.unregister()
        if self.owned == result["agent"]:
            self.owned = None
        self.coord.agent = None
        return result

    def me(self, *, required: bool = True) -> str | None:
        """The acting agent; a host session's agent when nobody registered one yet."""
        coord = self.coord
        if coord.agent is None:
            found = _session_agent(coord)
            if found is not None:
                coord.agent, coord.token = found
        if coord.agent is None and required:
            from dibs.ground.errors import AuthError

            raise AuthError(
                "no agent: this MCP server does not act for anyone yet",
                hint="call `register` with a name first (the server keeps the session token)",
            )
        return coord.agent

    def worktree(self, issue: str | None) -> dict[str, Any] | None:
        """The acting agent's worktree record (for ISSUE, or its only one); None when it has
        none. Several and no ISSUE: a usage error naming them."""
        from dibs.integrations.worktrees import TABLE

        state, _ = self.coord.read()
        mine = [
            {**record, "rel": rel}
            for rel, record in state.tables.get(TABLE, {}).items()
            if record.get("agent") == self.coord.agent and not record.get("finished")
        ]
        if issue is not None:
            wanted = issue.removeprefix("issue:").upper()
            mine = [r for r in mine if str(r["issue"]).upper() == wanted]
        if len(mine) > 1:
            from dibs.ground.errors import UsageError

            raise UsageError(
                f"{self.coord.agent} has {len(mine)} worktrees: "
                + ", ".join(sorted(str(r["issue"]) for r in mine)),
                hint="name one with the `issue` argument",
            )
        return mine[0] if mine else None

    @contextlib.contextmanager
    def in_worktree(self, issue: str | None) -> Iterator[None]:
        """Act inside the agent's worktree (its repository view) for the duration."""
        own = self.worktree(issue)
        repo = self.coord.repo
        if own is None or repo is None:
            yield
            return
        from dibs.ground.git.discover import find_repo

        path = os.path.join(repo.main_root, own["rel"])
        self.coord.repo = find_repo(path)
        try:
            yield
        finally:
            self.coord.repo = repo

    def close(self) -> None:
        """Unregister the agent this server registered (the client is gone)."""
        if self.owned is None or self.coord.agent != self.owned or not self.coord.token:
            return
        from dibs.ground.errors import DibsError

        with contextlib.suppress(DibsError):
            self.coord.unregister()
        self.owned = None


def _session_agent(coord: Coordinator) -> tuple[str, str] | None:
    """The host session's agent, shared with the session's edit hook
    (`dibs.integrations.sessions`)."""
    from dibs.integrations.sessions import session_agent

    return session_agent(coord)


_INSTRUCTIONS = (
    "dibs keeps agents that share a git repository from colliding. Unless this session's "
    "edit hook already acts for you, call `register` once with a name; then `next` (or "
    "`claim`) before working on anything; `heartbeat` every minute; `release` or `finish` "
    "when done; `land` to put your branch on the target. A refusal names who holds what: "
    "pick other work."
)


def serve(coord: Coordinator) -> None:
    """Serve MCP over stdio until the client goes away, then unregister the agent the server
    registered (a SIGTERM ends the server the same way)."""
    import contextlib
    import signal

    from dibs.ground.errors import DibsError
    from dibs.ground.heap import settle_heap

    acting = Acting(coord)
    server = build(coord, acting)
    with contextlib.suppress(DibsError):  # a store that cannot be read says so per tool call
        coord.read()
    settle_heap()  # the state, loaded, lives as long as the session: no collector pauses over it

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.run("stdio")
    finally:
        signal.signal(signal.SIGTERM, previous)
        acting.close()
