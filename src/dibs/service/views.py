"""What faces show: leases and agents (JSON-ready dicts with seconds left and status), the
status line with the queue and the pool, and which events a face asked for."""

from __future__ import annotations

from dibs.core import rules
from dibs.core.leases import agent_status, eviction_reason, expires_in
from dibs.core.resources import parse_resource
from dibs.core.state import NS
from dibs.core.tables import POOL, QUEUE, QUEUE_OPEN, WORKTREES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any, NotRequired, TypedDict

    from dibs.core.events import Event
    from dibs.core.leases import Context
    from dibs.core.rules import LeaseView
    from dibs.core.state import AgentRecord, LeaseRecord, State
    from dibs.ground.now import Now

    class Registered(TypedDict):
        """What `Coordinator.register` returns: keep the token secret."""

        agent: str
        token: str
        ttl: float
        pid: int | None
        #: Whether an earlier registration of this name existed (it is replaced).
        replaced: bool
        #: ``dibs agent register --role``: the roles recorded with it (the CLI adds them).
        roles: NotRequired[list[str]]

    class AgentView(TypedDict):
        """An agent as faces show it (`agent_view`)."""

        name: str
        status: str
        host: str
        pid: int | None
        ttl: float
        registered: str
        last_seen: str
        seen_ago: float | None
        claims: int
        worktree: NotRequired[str | None]
        branch: NotRequired[str | None]
        issue: NotRequired[str | None]
        #: In `Coordinator.agent_info`: the leases it holds.
        holding: NotRequired[list[LeaseView]]


def lease_view(lease: LeaseRecord, now: Now) -> LeaseView:
    """A lease as faces show it, with seconds left (``expires_in``)."""
    return rules.lease_view(lease, ttl=lease["ttl"], expires_in=round(expires_in(lease, now), 3))


def agent_view(agent: AgentRecord, state: State, ctx: Context) -> AgentView:
    """An agent as faces show it: status, seconds since last sign of life, claim count."""
    seen = (ctx.now.mono - agent["seen"]) / NS if agent["seen_boot"] == ctx.now.boot else None
    view: AgentView = {
        "name": agent["name"],
        "status": agent_status(agent, ctx),
        "host": agent["host"],
        "pid": agent["pid"],
        "ttl": agent["ttl"],
        "registered": agent["registered"],
        "last_seen": agent["seen_wall"],
        "seen_ago": None if seen is None else round(seen, 3),
        "claims": state.lease_count(agent["name"]),
    }
    if "worktree" in agent:
        view["worktree"] = agent.get("worktree")
    if "branch" in agent:
        view["branch"] = agent.get("branch")
    for path, record in state.tables.get(WORKTREES, {}).items():
        if record.get("agent") == agent["name"]:
            view["worktree"] = path
            view["branch"] = record.get("branch")
            view["issue"] = record.get("issue")
    return view


def queue_view(state: State) -> list[dict[str, Any]]:
    """The merge queue's open entries, in order (the status shows them)."""
    return sorted(
        (e for e in state.tables.get(QUEUE, {}).values() if e["state"] in QUEUE_OPEN),
        key=lambda e: e["number"],
    )


def ordered_leases(state: State) -> list[LeaseRecord]:
    """Every lease, expired or not, in resource order (then holder): the order faces list."""
    return [lease for text in sorted(state.claims) for lease in state.claims[text].values()]


def split_leases(
    state: State, ctx: Context, ordered: Iterable[LeaseRecord] | None = None
) -> tuple[list[LeaseRecord], list[tuple[LeaseRecord, str]]]:
    """The leases that hold at ``ctx.now``, and those awaiting eviction with the reason.

    *ordered* is `ordered_leases` of *state* when the caller kept it (the dashboard keeps it
    per log seq: sorting 10,000 claims on every look costs more than deciding them).
    """
    live: list[LeaseRecord] = []
    stale: list[tuple[LeaseRecord, str]] = []
    for lease in ordered_leases(state) if ordered is None else ordered:
        reason = eviction_reason(state, lease, ctx)
        if reason is None:
            live.append(lease)
        else:
            stale.append((lease, reason))
    return live, stale


def status_view(
    state: State,
    ctx: Context,
    store_url: str,
    live: list[LeaseRecord],
    stale: list[tuple[LeaseRecord, str]],
    *,
    claims: bool = True,
) -> dict[str, Any]:
    """What `Coordinator.status` reports, from `split_leases`; without *claims* the live
    claims' views are left out (a caller that renders them itself, as the dashboard does)."""
    now = ctx.now
    agents = [agent_view(state.agents[n], state, ctx) for n in sorted(state.agents)]
    expired = [{**lease_view(lease, now), "evictable": reason} for lease, reason in stale]
    kinds = ("live", "stuck", "stale", "dead")  # stuck: live, without progress (issue 19)
    counts = {s: sum(1 for a in agents if a["status"] == s) for s in kinds}
    parts = [f"{counts['live'] + counts['stuck']} agents live"]
    parts += [f"{counts[s]} {s}" for s in kinds[1:] if counts[s]]
    summary = ", ".join(parts) + f"; {len(live)} claims"
    if stale:
        summary += f" ({len(stale)} expired, evicted on next touch)"
    queue = queue_view(state)
    summary += f"; queue {len(queue)}"
    pool = _pool(state, live)
    if pool:
        summary += f"; pool {sum(1 for p in pool if p['agent'])}/{len(pool)}"
    view: dict[str, Any] = {
        "summary": summary,
        "seq": state.seq,
        "store": store_url,
        "agents": agents,
    }
    if claims:
        view["claims"] = [lease_view(lease, now) for lease in live]
    view.update(expired=expired, queue=queue, pool=pool, inbox=inbox_depths(state))
    return view


def inbox_depths(state: State) -> dict[str, int]:
    """Unread messages per agent with any (``tables.inbox``: per recipient its pending
    messages; names with ``@`` are streams, such as the watchers', not agents)."""
    return {
        name: len(box["pending"])
        for name, box in sorted(state.tables.get("inbox", {}).items())
        if not name.startswith("@") and box.get("pending")
    }


def _pool(state: State, live: list[LeaseRecord]) -> list[dict[str, Any]]:
    """The pool's slots, each with the agent holding it now (None: free)."""
    slots = state.tables.get(POOL)
    if not slots:
        return []
    busy = {
        lease["resource"][len("worktree:") :]
        for lease in live
        if lease["resource"].startswith("worktree:")
    }
    return [
        {**slot, "agent": slot.get("agent") if key in busy else None}
        for key, slot in sorted(slots.items(), key=lambda kv: kv[0])
    ]


def event_filter(
    agent: str | None, resource: str | None, op: str | None
) -> Callable[[Event], bool] | None:
    """A test for the events a face asked for (by agent, resource, op), or None for all."""
    if agent is None and resource is None and op is None:
        return None
    text = parse_resource(resource).text if resource is not None else None

    def match(event: Event) -> bool:
        return (
            (agent is None or event.get("agent") == agent)
            and (text is None or event.get("resource") == text)
            and (op is None or event["op"] == op)
        )

    return match
