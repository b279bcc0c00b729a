"""The lease state machine: ``decide(state, command, ctx)`` (``apply`` is in `dibs.core.state`).

``decide`` reads a state and a command at a given time and returns a `Decision`: the events to
append (possibly none) and, when the command is refused, the error. It never changes the state.
`dibs.core.state.apply` folds each event into the state. Both stores run exactly this code, so
they cannot disagree on the rules; replaying the log through ``apply`` rebuilds any state.

Rules kept here (docs/explanation/architecture.md, "The rules that never bend"):

* exclusive claims exclude everyone else; shared claims coexist only with shared ones;
* acquiring several resources takes all of them or none;
* a lease met by an operation after its expiry, after a reboot, or whose holder's process is
  gone is evicted by that operation (``auto-evict`` with the reason);
* renew, release and heartbeat need the holder's session token; a lost lease is reported as
  lost (`LeaseLost`), never as success;
* every acquire gets a fencing token from one counter that only grows; a re-acquire by the
  holder extends the lease and keeps its token.

Pure: no I/O, no clock. Holder liveness comes in through ``Context.alive``, which the caller
answers from ``/proc`` (see `dibs.ground.host`).
"""

from __future__ import annotations

from dibs.core import deadlock
from dibs.core.commands import (
    Acquire,
    ForceEvict,
    Heartbeat,
    Register,
    Release,
    Renew,
    Unregister,
    refusal,
)
from dibs.core.events import new_event
from dibs.core.rules import (
    Context,
    Decision,
    Evictions,
    agent_status,
    authenticate,
    eviction_reason,
    expires_in,
    idle_for,
    lease_view,
    stuck_for,
)
from dibs.core.state import NOT_PROGRESS, NS, SHARED, State, ttl_ns
from dibs.ground.errors import Conflict, DibsError, LeaseLost, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dibs.core.events import Event
    from dibs.core.resources import Resource
    from dibs.core.state import LeaseRecord

__all__ = [
    "Acquire",
    "Context",
    "Decision",
    "ForceEvict",
    "Heartbeat",
    "Register",
    "Release",
    "Renew",
    "State",
    "Unregister",
    "agent_status",
    "authenticate",
    "decide",
    "eviction_reason",
    "expires_in",
    "idle_for",
    "lease_view",
    "refusal",
    "stuck_events",
    "stuck_for",
]


# Decisions --------------------------------------------------------------------------------


def decide(state: State, command: object, ctx: Context) -> Decision:
    """Decide *command* against *state* at ``ctx.now``; never changes *state*."""
    handler = _DECIDE.get(type(command))
    if handler is None:
        raise TypeError(f"not a lease command: {command!r}")
    return handler(state, command, ctx)


def _conflict_error(resource: Resource, blockers: list[LeaseRecord], ctx: Context) -> Conflict:
    first = blockers[0]
    holders = ", ".join(sorted({b["agent"] for b in blockers}))
    expiry = round(expires_in(first, ctx.now))
    where = "" if first["resource"] == resource.text else f" (via {first['resource']})"
    return Conflict(
        f"{resource.text} is held by {holders}{where}, {first['mode']}, expires in {expiry} s",
        hint="wait for it with --wait, or pick other work",
        resource=resource.text,
        holders=[
            {
                "agent": b["agent"],
                "resource": b["resource"],
                "mode": b["mode"],
                "token": b["token"],
                "expires_in": round(expires_in(b, ctx.now), 3),
                **({"note": b["note"]} if "note" in b else {}),
            }
            for b in blockers
        ],
    )


def _acquire(state: State, cmd: Acquire, ctx: Context) -> Decision:
    try:
        agent = authenticate(state, cmd.agent, cmd.secret)
    except DibsError as exc:
        return Decision(error=exc)
    ev = Evictions(state, ctx)
    if ctx.alive(agent) is False:
        for lease in state.leases_of(cmd.agent):
            ev.evict(lease, "holder-dead")
        return Decision(
            ev.events,
            LeaseLost(
                f"agent {cmd.agent!r} is dead: its watched process {agent['pid']} is gone",
                hint="register again (a new session) before claiming",
            ),
        )
    blocked: list[tuple[Resource, list[LeaseRecord]]] = []
    for resource in cmd.resources:
        blockers = [
            lease
            for lease in state.overlapping(resource)
            if lease["agent"] != cmd.agent
            and not (lease["mode"] == SHARED and cmd.mode == SHARED)
            and not ev.check(lease)
        ]
        if blockers:
            blocked.append((resource, blockers))
    if blocked:
        resource, blockers = blocked[0]
        error = _conflict_error(resource, blockers, ctx)
        if len(blocked) > 1:
            error.details["blocked"] = [r.text for r, _ in blocked]
        return _blocked(state, cmd, blocked, ev, error)

    ttl = cmd.ttl if cmd.ttl is not None else agent["ttl"]
    events = ev.events
    if cmd.waiter is not None and cmd.agent in state.tables.get(deadlock.TABLE, {}):
        events.append(deadlock.wait_end(cmd.agent, "granted", ctx.now))  # the waiting call
    token = state.last_token
    granted: list[dict[str, Any]] = []
    for resource in cmd.resources:
        existing = state.claims.get(resource.text, {}).get(cmd.agent)
        if existing is not None and ev.check(existing):
            existing = None
        if existing is not None and existing["mode"] == cmd.mode:
            events.append(
                new_event(
                    "renew",
                    ctx.now,
                    resource=resource.text,
                    agent=cmd.agent,
                    mode=cmd.mode,
                    token=existing["token"],
                    ttl=ttl,
                    reason="re-acquire",
                    note=cmd.note,
                )
            )
            granted.append(_grant(existing, ttl, new=False))
            continue
        if existing is not None:
            # A mode change is a new hold: it gets a new fencing token.
            events.append(
                new_event(
                    "release",
                    ctx.now,
                    resource=resource.text,
                    agent=cmd.agent,
                    token=existing["token"],
                    reason="mode-change",
                )
            )
        token += 1
        events.append(
            new_event(
                "acquire",
                ctx.now,
                resource=resource.text,
                agent=cmd.agent,
                mode=cmd.mode,
                token=token,
                ttl=ttl,
                note=cmd.note,
                waited=cmd.waited,
            )
        )
        granted.append(_grant_new(cmd, resource, token, ttl, events[-1]["wall"]))
    return Decision(events, result=granted)


def _blocked(
    state: State,
    cmd: Acquire,
    blocked: list[tuple[Resource, list[LeaseRecord]]],
    ev: Evictions,
    error: Conflict,
) -> Decision:
    if cmd.waiter is not None:
        from dibs.core import waits  # only a --wait claim that is blocked needs it

        return waits.decide_wait(state, cmd, blocked, ev, error)
    if cmd.log_refusal:
        ev.events.append(refusal(cmd, blocked[0][0], blocked[0][1], ev.ctx))
    return Decision(ev.events, error)


def _grant(lease: LeaseRecord, ttl: float, *, new: bool) -> dict[str, Any]:
    """What a claimant is told about a lease it now holds (``expires_in``: the full ttl)."""
    return {**lease_view(lease, ttl=ttl, expires_in=ttl), "new": new}


def _grant_new(
    cmd: Acquire, resource: Resource, token: int, ttl: float, wall: str
) -> dict[str, Any]:
    """What a claimant is told about a lease just acquired (no record of it exists yet)."""
    lease: Any = {
        "resource": resource.text,
        "agent": cmd.agent,
        "mode": cmd.mode,
        "token": token,
        "acquired": wall,
    }
    if cmd.note is not None:
        lease["note"] = cmd.note
    return _grant(lease, ttl, new=True)


def _lost_error(
    state: State, agent: str, lost: list[str], fresh: dict[str, str] | None = None
) -> LeaseLost:
    """Explain which of *agent*'s leases are gone and why (*fresh*: evicted just now)."""
    record = state.agents.get(agent)
    reasons = []
    for text in lost:
        why = record["lost"].get(text) if record is not None else None
        if fresh and text in fresh:
            reasons.append(f"{text} ({fresh[text]} just now)")
        elif why is not None:
            by = f" by {why['by']}" if "by" in why else ""
            reasons.append(f"{text} ({why['reason']}{by}, seq {why['seq']})")
        else:
            reasons.append(text)
    return LeaseLost(
        f"lease lost: {agent} no longer holds {', '.join(reasons)}",
        hint="claim it again if it is free; work done under the old token may be refused",
        lost=lost,
    )


def _held(
    state: State, cmd: Renew | Release, resources: list[Resource], ev: Evictions
) -> tuple[list[LeaseRecord], list[str], list[str]]:
    """Split *resources* into leases still held, leases lost, and resources never held."""
    held: list[LeaseRecord] = []
    lost: list[str] = []
    never: list[str] = []
    record = state.agents[cmd.agent]
    for resource in resources:
        lease = state.claims.get(resource.text, {}).get(cmd.agent)
        if lease is not None and not ev.check(lease):
            held.append(lease)
        elif lease is not None or resource.text in record["lost"]:
            lost.append(resource.text)
        else:
            never.append(resource.text)
    return held, lost, never


def _lost_or_never(
    state: State, agent: str, lost: list[str], never: list[str], ev: Evictions
) -> DibsError | None:
    if lost:
        fresh = {e["resource"]: e["reason"] for e in ev.events if e.get("agent") == agent}
        error = _lost_error(state, agent, lost, fresh)
        if never:
            error.details["not_held"] = never
        return error
    if never:
        return NotFound(
            f"{agent} does not hold {', '.join(never)}",
            hint=f"see what you hold with `dibs claims --agent {agent}`",
            not_held=never,
        )
    return None


def _renew(state: State, cmd: Renew, ctx: Context) -> Decision:
    ttl = cmd.ttl
    return _each_held(
        state, cmd, ctx, "renew", lambda lease: {"ttl": ttl if ttl is not None else lease["ttl"]}
    )


def _release(state: State, cmd: Release, ctx: Context) -> Decision:
    return _each_held(state, cmd, ctx, "release", lambda _lease: {})


def _each_held(
    state: State,
    cmd: Renew | Release,
    ctx: Context,
    op: str,
    extra: Callable[[LeaseRecord], dict[str, Any]],
) -> Decision:
    """Renew or release: for the holder (its token checked), one *op* event per lease of
    ``cmd.resources`` it still holds (every lease it holds when they are None); the ones it
    lost or never held make the error, the others are still done."""
    try:
        authenticate(state, cmd.agent, cmd.secret)
    except DibsError as exc:
        return Decision(error=exc)
    ev = Evictions(state, ctx)
    if cmd.resources is None:
        held = [lease for lease in state.leases_of(cmd.agent) if not ev.check(lease)]
        lost: list[str] = []
        never: list[str] = []
    else:
        held, lost, never = _held(state, cmd, cmd.resources, ev)
    events = ev.events
    for lease in held:
        events.append(
            new_event(
                op,
                ctx.now,
                resource=lease["resource"],
                agent=cmd.agent,
                mode=lease["mode"],
                token=lease["token"],
                **extra(lease),
            )
        )
    result = [{"resource": lease["resource"], "token": lease["token"]} for lease in held]
    return Decision(events, _lost_or_never(state, cmd.agent, lost, never, ev), result)


def _heartbeat(state: State, cmd: Heartbeat, ctx: Context) -> Decision:
    try:
        agent = authenticate(state, cmd.agent, cmd.secret)
    except DibsError as exc:
        return Decision(error=exc)
    ev = Evictions(state, ctx)
    leases = state.leases_of(cmd.agent)
    if ctx.alive(agent) is False:
        for lease in leases:
            ev.evict(lease, "holder-dead")
        return Decision(
            ev.events,
            LeaseLost(
                f"agent {cmd.agent!r} is dead: its watched process {agent['pid']} is gone",
                hint="register again (a new session)",
                lost=[lease["resource"] for lease in leases],
            ),
        )
    lost = [lease["resource"] for lease in leases if ev.check(lease)]
    kept = [lease for lease in leases if lease["resource"] not in lost]
    # Leases others evicted since the last heartbeat: say so once, never renew in silence.
    lost += [
        text
        for text, why in agent["lost"].items()
        if why["seq"] > agent["heartbeat_seq"] and text not in lost
    ]
    fresh = {e["resource"]: e["reason"] for e in ev.events}
    events = [*ev.events, new_event("heartbeat", ctx.now, agent=cmd.agent)]
    result = {"renewed": [lease["resource"] for lease in kept], "lost": lost}
    error = _lost_error(state, cmd.agent, lost, fresh) if lost else None
    if error is not None:
        error.details["renewed"] = result["renewed"]
    return Decision(events, error, result)


def _register(state: State, cmd: Register, ctx: Context) -> Decision:
    events: list[Event] = []
    existing = state.agents.get(cmd.name)
    retired = None
    if existing is not None:
        proven = cmd.proof is not None and cmd.proof == existing["secret"]
        status = agent_status(existing, ctx)
        if status == "live" and not proven:
            pid = f"pid {existing['pid']} on {existing['host']}, " if existing["pid"] else ""
            seen = round((ctx.now.mono - existing["seen"]) / NS)
            return Decision(
                error=Conflict(
                    f"agent {cmd.name!r} is already registered and live ({pid}seen {seen} s ago)",
                    hint="pick another name, or unregister that agent with its token",
                    agent=cmd.name,
                )
            )
        held = state.leases_of(cmd.name)
        # A quiet agent (stale by its own ttl) may still hold leases that run longer: they
        # are its, and only its token may end them before they expire.
        live = [lease for lease in held if eviction_reason(state, lease, ctx) is None]
        if live and not proven:
            left = round(max(expires_in(lease, ctx.now) for lease in live))
            return Decision(
                error=Conflict(
                    f"agent {cmd.name!r} still holds {len(live)} live lease(s) "
                    f"({', '.join(lease['resource'] for lease in live[:5])}), the last "
                    f"expiring in {left} s: the name cannot be taken over without its token",
                    hint="pass that agent's token (--token or DIBS_TOKEN) to register it "
                    "again, wait until its leases expire, or pick another name",
                    agent=cmd.name,
                    holding=[lease["resource"] for lease in live],
                )
            )
        ev = Evictions(state, ctx)
        for lease in held:
            # Each lease goes for the reason it really has; a live one only because its
            # own agent (proven by its token) registered again.
            ev.evict(lease, eviction_reason(state, lease, ctx) or "replaced")
        events = ev.events
        events.append(new_event("unregister", ctx.now, agent=cmd.name, reason="replaced"))
        # The replaced session's token is remembered (hashed), so its holder is told its
        # leases are lost (exit 4) rather than that its token is wrong.
        retired = [existing["secret"], *existing.get("retired", [])][:8]
    events.append(
        new_event(
            "register",
            ctx.now,
            agent=cmd.name,
            host=cmd.host,
            pid=cmd.pid,
            pid_start=cmd.pid_start,
            secret=cmd.secret,
            ttl=cmd.ttl,
            host_boot=cmd.host_boot if cmd.host_boot != ctx.now.boot else None,
            details={k: v for k, v in (("worktree", cmd.worktree), ("branch", cmd.branch)) if v}
            or None,
            retired=retired,
        )
    )
    return Decision(events, result={"agent": cmd.name, "replaced": existing is not None})


def _unregister(state: State, cmd: Unregister, ctx: Context) -> Decision:
    try:
        authenticate(state, cmd.agent, cmd.secret)
    except DibsError as exc:
        return Decision(error=exc)
    events = [
        new_event(
            "release",
            ctx.now,
            resource=lease["resource"],
            agent=cmd.agent,
            mode=lease["mode"],
            token=lease["token"],
            reason="unregistered",
        )
        for lease in state.leases_of(cmd.agent)
    ]
    events.append(new_event("unregister", ctx.now, agent=cmd.agent))
    return Decision(events, result={"released": [e["resource"] for e in events[:-1]]})


def _force_evict(state: State, cmd: ForceEvict, ctx: Context) -> Decision:
    holders = state.claims.get(cmd.resource.text, {})
    targets = [lease for agent, lease in holders.items() if cmd.agent is None or agent == cmd.agent]
    if not targets:
        who = f" by {cmd.agent}" if cmd.agent else ""
        return Decision(
            error=NotFound(
                f"nothing holds {cmd.resource.text}{who}",
                hint="see the live claims with `dibs claims`; evict takes the exact resource",
            )
        )
    ev = Evictions(state, ctx)
    for lease in targets:
        ev.evict(lease, cmd.reason, op="force-evict", by=cmd.by)
    result = [{"resource": e["resource"], "agent": e["agent"]} for e in ev.events]
    return Decision(ev.events, result=result)


_DECIDE: dict[type, Callable[[State, Any, Context], Decision]] = {
    Acquire: _acquire,
    Renew: _renew,
    Release: _release,
    Heartbeat: _heartbeat,
    Register: _register,
    Unregister: _unregister,
    ForceEvict: _force_evict,
}


def stuck_events(state: State, ctx: Context, decided: list[Event]) -> list[Event]:
    """What meeting stuck agents at ``ctx.now`` writes, after *decided* (the step's own
    events): one ``stuck`` event per agent and stretch without progress (it reaches the
    agent's inbox and the watchers'), and with ``ctx.evict_stuck`` the eviction of its
    leases (reason ``stuck``). Lazy like expiry: whichever step meets it acts."""
    if ctx.stuck_after is None:
        return []
    active = {e.get("agent") for e in decided if e["op"] not in NOT_PROGRESS}
    gone = {
        (e.get("resource"), e.get("agent"))
        for e in decided
        if e["op"] in ("auto-evict", "force-evict", "release")
    }
    events: list[Event] = []
    # Only agents idle for stuck_after and still live can be stuck: `State.stuck` finds them
    # without looking at the others (a superset, checked below by the same rule).
    candidates = state.stuck().candidates(state.agents, ctx.now.mono, ttl_ns(ctx.stuck_after))
    for name in sorted(candidates):
        agent = state.agents[name]
        if name in active or agent.get("stuck", -1) == agent.get("progress", 0):
            continue  # progressing in this very step, or already told for this stretch
        idle = stuck_for(agent, ctx)
        if idle is None:
            continue
        action = "evict" if ctx.evict_stuck else "notify"
        details = {"idle": round(idle, 3), "action": action, "since": agent.get("progress_wall")}
        events.append(new_event("stuck", ctx.now, agent=name, details=details))
        held = state.leases_of(name) if ctx.evict_stuck else []
        events.extend(
            new_event(
                "auto-evict",
                ctx.now,
                resource=lease["resource"],
                agent=name,
                mode=lease["mode"],
                token=lease["token"],
                reason="stuck",
            )
            for lease in held
            if (lease["resource"], name) not in gone
        )
    return events
