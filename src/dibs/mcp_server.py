"""``dibs mcp``: the service verbs as MCP tools, over stdio (the official ``mcp`` SDK).

One server process acts for one agent at a time: ``register`` starts a session (its token
stays in the server), or the server starts as the agent named by ``--agent``/``DIBS_AGENT``
or the worktree it runs in. Every tool takes JSON arguments described by a schema; a failure
is an MCP tool error whose text is the CLI's message, with the same code and exit code::

    dibs: issue:ROOSE-158 is held by agent-2, exclusive, expires in 74 s
    hint: wait for it with --wait, or pick other work
    {"error": "conflict", "exit_code": 3, ...}
"""

from __future__ import annotations

import json
from typing import Any  # at run time: the SDK reads the tools' annotations for their schemas

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from dibs.service import Coordinator


def config_snippet(repo_root: str) -> dict[str, Any]:
    """What to add to an agent's MCP settings (Claude Code: .mcp.json) to use dibs."""
    return {"mcpServers": {"dibs": {"command": "dibs", "args": ["mcp", "-C", repo_root]}}}


def build(dibs: Coordinator) -> Any:  # noqa: PLR0915 - one short function per tool
    """The MCP server with every verb this build of dibs has."""
    try:
        from mcp.server.mcpserver import MCPServer
        from mcp.server.mcpserver.exceptions import ToolError
    except ImportError as exc:
        from dibs.errors import UsageError

        raise UsageError(
            f"`dibs mcp` needs the mcp extra ({exc.name} is missing)",
            hint="pip install 'dibs[mcp]'",
        ) from None
    from dibs.errors import DibsError

    server = MCPServer("dibs", instructions=_INSTRUCTIONS)

    def tool(fn: Callable[..., Any]) -> Callable[..., Any]:
        import functools

        @functools.wraps(fn)  # keeps the signature: the SDK builds the schema from it
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except DibsError as exc:
                text = f"dibs: {exc.message}\n"
                if exc.hint:
                    text += f"hint: {exc.hint}\n"
                raise ToolError(text + json.dumps(exc.to_json())) from None

        server.tool(name=fn.__name__)(wrapped)
        return fn

    @tool
    def register(name: str, ttl: float | None = None) -> dict[str, Any]:
        """Register agent NAME and act as it from now on (the token stays in this server)."""
        result = dibs.register(name, ttl=ttl)
        return {k: v for k, v in result.items() if k != "token"}

    @tool
    def claim(
        resources: list[str],
        shared: bool = False,
        ttl: float | None = None,
        wait: float | None = None,
        note: str | None = None,
    ) -> list[dict[str, Any]]:
        """Claim resources (issue:X, path:GLOB, path:FILE#L1-9, worktree:N, lock:NAME), all or
        none; wait up to WAIT seconds while held. Refused: the holder and when it expires."""
        return dibs.claim(resources, shared=shared, ttl=ttl, wait=wait, note=note)

    @tool
    def renew(resources: list[str], ttl: float | None = None) -> list[dict[str, Any]]:
        """Extend leases this agent holds."""
        return dibs.renew(resources, ttl=ttl)

    @tool
    def release(resources: list[str] | None = None) -> list[dict[str, Any]]:
        """Let go of RESOURCES, or of everything this agent holds when omitted."""
        return dibs.release(resources)

    @tool
    def heartbeat() -> dict[str, Any]:
        """Renew every lease this agent holds; names any already lost."""
        return dibs.heartbeat()

    @tool
    def status() -> dict[str, Any]:
        """Who holds what: agents, claims, queue, pool and a one-line summary."""
        return dibs.status()

    @tool
    def ready(role: str | None = None) -> dict[str, Any]:
        """Tasks ready to take (dependencies done, nobody holds them), and why others wait;
        ROLE: only tasks labelled with it."""
        from dibs import tasks

        return tasks.ready(dibs, role=role)

    @tool
    def next(  # noqa: A001
        steal: bool = False, start: bool = False, role: str | None = None
    ) -> dict[str, Any]:
        """Take the best ready task for this agent, atomically (no task goes to two agents);
        START also makes its worktree; STEAL takes over a task whose holder is dead; ROLE
        takes only tasks labelled with it (default: the roles the agent registered with)."""
        from dibs import tasks

        return tasks.next_task(dibs, steal=steal, start=start, role=role)

    @tool
    def start(issue: str, files: list[str] | None = None) -> dict[str, Any]:
        """Claim ISSUE (and FILES) and make its worktree and branch; returns the path."""
        from dibs import worktrees

        result = worktrees.start(dibs, issue, files=files or ())
        return {k: v for k, v in result.items() if k != "token"}

    @tool
    def finish(issue: str | None = None, force: bool = False) -> dict[str, Any]:
        """Release the agent's claims and remove its worktree; refuses to lose work."""
        from dibs import worktrees

        return worktrees.finish(dibs, issue, force=force)

    @tool
    def check(base: str | None = None) -> dict[str, Any]:
        """Compare the agent's branch changes with its claims (unclaimed and foreign edits)."""
        from dibs import violations

        return violations.check(dibs, base=base)

    @tool
    def land(branch: str | None = None, issue: str | None = None) -> dict[str, Any]:
        """Queue BRANCH for the target and see it through the merge queue and its gates."""
        from dibs import queue

        return queue.land(dibs, branch, issue=issue)

    @tool
    def limit_take(name: str, cost: float = 1.0, wait: float | None = None) -> dict[str, Any]:
        """Take COST tokens from the shared rate limit NAME (waiting up to WAIT seconds)."""
        from dibs import limits

        return limits.take(dibs, name, cost=cost, wait=wait)

    return server


_INSTRUCTIONS = (
    "dibs keeps agents that share a git repository from colliding. Call `register` once with "
    "a name, then `next` (or `claim`) before working on anything; `heartbeat` every minute; "
    "`release` or `finish` when done; `land` to put your branch on the target. A refusal "
    "names who holds what: pick other work."
)


def serve(dibs: Coordinator) -> None:
    """Serve MCP over stdio until the client goes away."""
    server = build(dibs)
    server.run("stdio")
