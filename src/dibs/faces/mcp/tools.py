"""The MCP tools of `dibs.faces.mcp.server`: each verb with its argument schema and annotations.

Every argument carries a description with its units, pattern and default (the SDK puts it in
the tool's JSON schema); every tool says whether it only reads, may destroy work, or may be
repeated safely. Imported only when the server is built (it needs the mcp extra: pydantic).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from dibs.ground.names import NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from dibs.faces.mcp.server import Acting
    from dibs.service import Coordinator

    Decorator = Callable[..., Callable[[Callable[..., Any]], Callable[..., Any]]]

# Argument types, each with its description (units, pattern, default). The SDK evaluates the
# tools' annotations in this module's namespace.
Seconds = Annotated[
    float | None,
    Field(description="seconds, more than 0; omitted: the default from dibs.toml", gt=0),
]
Resources = Annotated[
    list[str],
    Field(
        description="resources as KIND:NAME: issue:ID, path:GLOB (relative to the repository "
        "root, e.g. path:src/auth/**), path:FILE#L10-20 (lines), worktree:N, lock:NAME",
        min_length=1,
    ),
]
Issue = Annotated[
    str | None,
    Field(
        description="an issue id such as ROOSE-158 (letters, digits, '.', '_', '-'); omitted: "
        "the issue of this agent's own worktree"
    ),
]


def add_tools(coord: Coordinator, acting: Acting, tool: Decorator) -> None:  # noqa: PLR0915
    """Define every tool on the server *tool* registers with, acting through *acting*."""

    @tool(idempotent=True)
    def register(
        name: Annotated[
            str,
            Field(
                description="the agent's name: 1-64 of a-z, 0-9, '.', '_', '-', starting "
                "with a letter or digit",
                pattern=f"^{NAME}$",
            ),
        ],
        ttl: Annotated[
            float | None,
            Field(
                description="seconds this agent's leases live without a heartbeat; "
                "omitted: leases.ttl from dibs.toml (90)",
                gt=0,
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Register agent NAME and act as it from now on; the session token stays in this
        server. The agent lives as long as the client: it is unregistered when the client
        disconnects. Calling it again with the same name changes nothing; with another name,
        the agent registered before is unregistered first (refused while it holds claims)."""
        return acting.register(name, ttl)

    @tool(destructive=True)
    def unregister() -> dict[str, Any]:
        """Release everything this agent holds and forget it (its name is free again)."""
        return acting.unregister()

    @tool(idempotent=True)
    def claim(
        resources: Resources,
        shared: Annotated[
            bool,
            Field(description="a shared claim: other shared claims may coexist (default: false)"),
        ] = False,
        ttl: Seconds = None,
        wait: Annotated[
            float | None,
            Field(
                description="seconds to wait while a resource is held (default: refuse at once); "
                "a wait that would close a cycle of waiting agents is refused at once (deadlock)",
                ge=0,
            ),
        ] = None,
        note: Annotated[
            str | None, Field(description="what the claim is for, shown to others", max_length=1000)
        ] = None,
    ) -> list[dict[str, Any]]:
        """Claim RESOURCES, all or none. Refused: who holds what, and when it expires."""
        acting.me()
        claimed: list[Any] = coord.claim(resources, shared=shared, ttl=ttl, wait=wait, note=note)
        return claimed

    @tool(idempotent=True)
    def renew(resources: Resources, ttl: Seconds = None) -> list[dict[str, Any]]:
        """Extend leases this agent holds by TTL seconds."""
        acting.me()
        return coord.renew(resources, ttl=ttl)

    @tool(destructive=True, idempotent=True)
    def release(
        resources: Annotated[
            list[str] | None,
            Field(description="resources as KIND:NAME; omitted: everything this agent holds"),
        ] = None,
    ) -> list[dict[str, Any]]:
        """Let go of RESOURCES, or of everything this agent holds when omitted."""
        acting.me()
        return coord.release(resources)

    @tool(idempotent=True)
    def heartbeat() -> dict[str, Any]:
        """Renew every lease this agent holds; names any already lost. Call it about once
        a minute while working."""
        acting.me()
        return coord.heartbeat()

    @tool(read_only=True, idempotent=True)
    def status() -> dict[str, Any]:
        """Who holds what: agents, claims, queue, pool and a one-line summary."""
        return coord.status()

    @tool(read_only=True, idempotent=True)
    def ready(
        role: Annotated[
            str | None,
            Field(description="only tasks labelled with this role (default: every task)"),
        ] = None,
    ) -> dict[str, Any]:
        """Tasks ready to take (dependencies done, nobody holds them), and why others wait."""
        from dibs.integrations import tasks

        return tasks.ready(coord, role=role)

    @tool()
    def next(  # noqa: A001 - the verb's name
        steal: Annotated[
            bool, Field(description="take over a task whose holder is dead (default: false)")
        ] = False,
        start: Annotated[
            bool,
            Field(description="also make the task's worktree and branch (default: false)"),
        ] = False,
        role: Annotated[
            str | None,
            Field(
                description="only tasks labelled with this role (default: the roles the agent "
                "registered with, else every task)"
            ),
        ] = None,
        wait: Annotated[
            float | None,
            Field(
                description="seconds to wait for a task while nothing is ready (default: "
                "answer at once)",
                ge=0,
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Take the best ready task for this agent, atomically (no task goes to two agents)."""
        from dibs.integrations import tasks

        acting.me()
        return tasks.next_task(coord, steal=steal, start=start, role=role, wait=wait)

    @tool(idempotent=True)
    def start(
        issue: Annotated[
            str, Field(description="the issue id, e.g. ROOSE-158 (letters, digits, '.', '_', '-')")
        ],
        files: Annotated[
            list[str] | None,
            Field(description="globs to claim too, relative to the repository root"),
        ] = None,
    ) -> dict[str, Any]:
        """Claim ISSUE (and FILES) and make its worktree and branch; returns the worktree's
        path. Called again by the same agent, it resumes."""
        from dibs.integrations import worktrees

        acting.me(required=False)
        result = worktrees.start(coord, issue, files=files or ())
        if result.get("registered"):
            acting.owned = result["agent"]
        return {k: v for k, v in result.items() if k != "token"}

    @tool(destructive=True)
    def finish(
        issue: Issue = None,
        force: Annotated[
            bool,
            Field(
                description="drop uncommitted changes; an unlanded branch is still kept "
                "(default: false)"
            ),
        ] = False,
    ) -> dict[str, Any]:
        """Release the claims of this agent's task (ISSUE, or its only worktree) and remove
        its worktree; refuses to lose work. Claims of the agent's other tasks stay."""
        from dibs.integrations import worktrees

        acting.me()
        own = acting.worktree(issue)
        return worktrees.finish(coord, own["issue"] if own else issue, force=force)

    @tool(read_only=True, idempotent=True)
    def check(
        base: Annotated[
            str | None,
            Field(description="the git ref to compare with; omitted: merge.target (main)"),
        ] = None,
        issue: Issue = None,
    ) -> dict[str, Any]:
        """Compare the changes in this agent's worktree with its claims: files changed
        without a claim, and files other agents hold."""
        from dibs.integrations.guard import violations

        acting.me()
        with acting.in_worktree(issue):
            return violations.check(coord, base=base)

    @tool(idempotent=True)
    def land(
        branch: Annotated[
            str | None,
            Field(description="the branch to land; omitted: this agent's worktree's branch"),
        ] = None,
        issue: Issue = None,
        priority: Annotated[
            Literal["normal", "high"],
            Field(description="high: ahead of every normal entry not yet being tested"),
        ] = "normal",
    ) -> dict[str, Any]:
        """Queue this agent's branch for the target and see it through the merge queue and
        its gates; returns the finished entry (landed or failed, with the reason: the gate
        and its output, or the conflicting files and the entries ahead that changed them)."""
        from dibs.integrations import queue

        acting.me()
        if branch is None:
            own = acting.worktree(issue)
            if own is not None:
                branch, issue = own["branch"], issue or own["issue"]
        return queue.land(coord, branch, issue=issue, priority=priority)

    @tool(read_only=True, idempotent=True)
    def queue_history(
        limit: Annotated[int, Field(description="rows, newest first", ge=1, le=50)] = 20,
    ) -> list[dict[str, Any]]:
        """Recent landings, failures and cancellations of the merge queue, with reasons (gate,
        output tail, conflicting files), durations and flaky gates."""
        from dibs.integrations import queue

        return queue.history(coord, limit)

    @tool()
    def limit_take(
        name: Annotated[str, Field(description="the rate limit's name, as set in dibs.toml")],
        cost: Annotated[float, Field(description="tokens to take (default: 1)", gt=0)] = 1.0,
        wait: Annotated[
            float | None,
            Field(description="seconds to wait for tokens (default: refuse at once)", ge=0),
        ] = None,
    ) -> dict[str, Any]:
        """Take COST tokens from the shared rate limit NAME."""
        from dibs.integrations import limits

        return limits.take(coord, name, cost=cost, wait=wait)

    @tool()
    def inbox(
        peek: Annotated[
            bool,
            Field(description="show without marking read (default: false: marked read)"),
        ] = False,
        limit: Annotated[
            int | None,
            Field(description="at most this many messages (1-1000; default: all)", ge=1, le=1000),
        ] = None,
    ) -> dict[str, Any]:
        """This agent's unread messages, oldest first, then marked read: messages sent to
        it, evictions of its leases (by whom, why), its landings (landed, or failed: gate,
        output tail, conflicting files), resources it gave up waiting for that are free,
        plan overlaps, and being stuck."""
        from dibs.integrations import inbox as inboxes

        acting.me()
        return inboxes.read(coord, peek=peek, limit=limit)

    @tool()
    def send(
        text: Annotated[
            str, Field(description="the message: UTF-8, 1-4000 characters", max_length=4000)
        ],
        to: Annotated[
            list[str] | None,
            Field(description="agent names to send it to (default: none)"),
        ] = None,
        everyone: Annotated[
            bool, Field(description="send it to every registered agent (default: false)")
        ] = False,
        holder: Annotated[
            str | None,
            Field(
                description="send it to whoever holds a live claim overlapping this resource, "
                "e.g. path:src/auth/** (default: none)"
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Send TEXT to agents' inboxes (TO, EVERYONE, or the HOLDER of a resource), logged
        with this agent as the sender."""
        from dibs.integrations import inbox as inboxes

        acting.me()
        return inboxes.send(coord, text, to=to, everyone=everyone, holder=holder)
