"""Recording ``--wait`` claims in the state, and refusing the wait that closes a cycle.

A blocked ``--wait`` try (`dibs.core.leases.Acquire` with a ``waiter``) lands here, inside
the same decision that found it blocked: the store appends what this returns in one step, so
the check and the record are atomic on every store. The graph search itself is
`dibs.core.deadlock.find_cycle`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dibs.core import deadlock
from dibs.core.commands import refusal
from dibs.core.events import new_event
from dibs.core.resources import parse_resource
from dibs.core.rules import Decision, eviction_reason
from dibs.core.state import NS, SHARED
from dibs.ground.errors import Deadlock

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.commands import Acquire
    from dibs.core.resources import Resource
    from dibs.core.rules import Evictions
    from dibs.core.state import LeaseRecord, State
    from dibs.ground.errors import Conflict

__all__ = ["decide_wait", "wait_graph"]


def decide_wait(
    state: State,
    cmd: Acquire,
    blocked: list[tuple[Resource, list[LeaseRecord]]],
    ev: Evictions,
    error: Conflict,
) -> Decision:
    """A blocked ``--wait`` try: refuse a wait that closes a cycle, else record (or refresh)
    the wait, in the same step, so two waits closing one cycle cannot both be recorded."""
    ctx = ev.ctx
    wants: dict[str, str] = {}
    for resource, blockers in blocked:
        for lease in blockers:
            wants.setdefault(lease["agent"], resource.text)
    waits = state.tables.get(deadlock.TABLE, {})
    cycle = deadlock.find_cycle(wait_graph(state, waits, cmd.agent, ev), cmd.agent, wants)
    events = ev.events
    if cycle is not None:
        first = blocked[0]
        event = refusal(cmd, first[0], first[1], ctx)
        event["reason"] = "deadlock"
        events.append(event)
        if cmd.agent in waits:
            events.append(deadlock.wait_end(cmd.agent, "deadlock", ctx.now))
        message = deadlock.describe(cycle)
        return Decision(
            events,
            Deadlock(
                message,
                hint="release what you hold that the others wait for, or pick other work",
                cycle=[{"agent": a, "waits_for": r, "held_by": h} for a, r, h in cycle],
                **error.details,
            ),
        )
    waiter = cmd.waiter or {}
    horizon = int(float(waiter.get("horizon", 30.0)) * NS)
    texts = [r.text for r in cmd.resources]
    old = waits.get(cmd.agent)
    if (
        old is None
        or old.get("resources") != texts
        or old.get("clock") != ctx.now.boot
        or old.get("pid") != waiter.get("pid")
        or old.get("until", 0) - ctx.now.mono < horizon // 2
    ):
        value: dict[str, Any] = {
            "resources": texts,
            "mode": cmd.mode,
            "until": ctx.now.mono + horizon,
            "clock": ctx.now.boot,
            **{k: waiter[k] for k in ("host", "pid", "pid_start", "host_boot") if k in waiter},
        }
        events.append(
            new_event(
                "wait",
                ctx.now,
                agent=cmd.agent,
                resource=texts[0],
                by=",".join(sorted(wants)),
                table=deadlock.TABLE,
                key=cmd.agent,
                value=value,
            )
        )
    return Decision(events, error)


def wait_graph(
    state: State, waits: dict[str, Any], agent: str, ev: Evictions
) -> dict[str, dict[str, str]]:
    """Who waits for whom now: the live waits of others, against the current holders.

    A wait is dead when its record ran out (``until``, on the deciding clock) or its waiting
    process is gone (this host only; elsewhere the record's short horizon bounds it)."""
    now = ev.ctx.now
    graph: dict[str, dict[str, str]] = {}
    for waiter, wait in waits.items():
        if waiter == agent or wait.get("clock") != now.boot or wait.get("until", 0) <= now.mono:
            continue
        if "pid" in wait and "host_boot" in wait:
            process: Any = {"name": f"wait {waiter}", "boot": wait["host_boot"], **wait}
            if ev.ctx.alive(process) is False:
                continue
        edges: dict[str, str] = {}
        for text in wait["resources"]:
            for lease in state.overlapping(parse_resource(text)):
                holder = lease["agent"]
                if holder == waiter or (lease["mode"] == SHARED and wait["mode"] == SHARED):
                    continue
                if (lease["resource"], holder) in ev.gone or eviction_reason(state, lease, ev.ctx):
                    continue
                edges.setdefault(holder, text)
        if edges:
            graph[waiter] = edges
    return graph
