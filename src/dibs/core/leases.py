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
from dibs.core.events import new_event
from dibs.core.state import EXCLUSIVE, NOT_PROGRESS, NS, SHARED, State, ttl_ns
from dibs.ground.errors import AuthError, Conflict, DibsError, LeaseLost, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dibs.core.events import Event
    from dibs.core.resources import Resource
    from dibs.core.state import AgentRecord, LeaseRecord
    from dibs.ground.now import Now

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
    "stuck_for",
]


class Context:
    """What a decision needs besides the state: the time and a way to ask after holders.

    ``alive(agent)`` answers True (its watched process runs), False (it is gone, or its pid
    now belongs to another process) or None (cannot tell: another host, or no watched pid).
    Answers are cached for the decision, so each holder is looked up once.

    ``stuck_after`` (seconds, None: never) is when a live agent without progress counts as
    stuck (`stuck_for`); with ``evict_stuck`` its leases no longer hold (`eviction_reason`).
    """

    __slots__ = ("_alive", "_answers", "evict_stuck", "now", "stuck_after")

    def __init__(
        self,
        now: Now,
        alive: Callable[[AgentRecord], bool | None] | None = None,
        *,
        stuck_after: float | None = None,
        evict_stuck: bool = False,
    ):
        self.now = now
        self._alive = alive
        self._answers: dict[str, bool | None] = {}
        self.stuck_after = stuck_after
        self.evict_stuck = evict_stuck and stuck_after is not None

    def alive(self, agent: AgentRecord) -> bool | None:
        """Whether *agent*'s watched process is running (None: cannot tell)."""
        if self._alive is None:
            return None
        name = agent["name"]
        if name not in self._answers:
            self._answers[name] = self._alive(agent)
        return self._answers[name]


class Decision:
    """The outcome of `decide`: events to append, and the error when refused.

    A refused command may still carry events: evictions made on the way are real and are
    appended before the error is raised.
    """

    __slots__ = ("error", "events", "result")

    def __init__(
        self, events: list[Event] | None = None, error: DibsError | None = None, result: Any = None
    ):
        self.events: list[Event] = events if events is not None else []
        self.error = error
        self.result = result


# Commands ---------------------------------------------------------------------------------


class Register:
    """Register agent *name* with the hash of its new session token."""

    __slots__ = (
        "branch",
        "host",
        "host_boot",
        "name",
        "pid",
        "pid_start",
        "proof",
        "secret",
        "ttl",
        "worktree",
    )

    def __init__(
        self,
        name: str,
        secret: str,
        *,
        host: str,
        ttl: float,
        pid: int | None = None,
        pid_start: int | None = None,
        worktree: str | None = None,
        branch: str | None = None,
        host_boot: str | None = None,
        proof: str | None = None,
    ):
        self.name = name
        self.secret = secret
        #: The hash of the token of the registration this one replaces, when the caller
        #: knows it: only that proof re-registers a name that still holds live leases.
        self.proof = proof
        self.host = host
        #: The boot id of the agent's host, when the deciding clock's is another one (the
        #: PostgreSQL store's clock is the server's): liveness by pid compares against it.
        self.host_boot = host_boot
        self.ttl = ttl
        self.pid = pid
        self.pid_start = pid_start
        self.worktree = worktree
        self.branch = branch


class _AgentCommand:
    __slots__ = ("agent", "secret")

    def __init__(self, agent: str, secret: str):
        self.agent = agent
        self.secret = secret


class Unregister(_AgentCommand):
    """Release everything *agent* holds and forget it."""

    __slots__ = ()


class Heartbeat(_AgentCommand):
    """Renew every lease *agent* holds; report the ones already lost."""

    __slots__ = ()


class Acquire(_AgentCommand):
    """Claim *resources* for *agent*, all or none."""

    __slots__ = ("log_refusal", "mode", "note", "resources", "tries", "ttl", "waited", "waiter")

    def __init__(
        self,
        agent: str,
        secret: str,
        resources: list[Resource],
        *,
        mode: str = EXCLUSIVE,
        ttl: float | None = None,
        note: str | None = None,
        waited: float | None = None,
        log_refusal: bool = False,
        tries: int | None = None,
        waiter: dict[str, Any] | None = None,
    ):
        super().__init__(agent, secret)
        self.resources = resources
        self.mode = mode
        self.ttl = ttl
        self.note = note
        self.waited = waited
        #: Record a refusal as a ``refuse`` event (the last try of a claim call), so the
        #: conflict rate can be computed from the log alone.
        self.log_refusal = log_refusal
        self.tries = tries
        #: A ``--wait`` claim's waiting process (``host``, ``pid``, ``pid_start``,
        #: ``host_boot``) and ``horizon`` (seconds a wait record holds unrefreshed): when
        #: blocked, the wait is recorded, or refused as a deadlock (`dibs.core.deadlock`).
        self.waiter = waiter


class Renew(_AgentCommand):
    """Extend *agent*'s leases on *resources* (optionally with a new ttl)."""

    __slots__ = ("resources", "ttl")

    def __init__(
        self, agent: str, secret: str, resources: list[Resource], *, ttl: float | None = None
    ):
        super().__init__(agent, secret)
        self.resources = resources
        self.ttl = ttl


class Release(_AgentCommand):
    """Let go of *resources*, or of everything when *resources* is None."""

    __slots__ = ("resources",)

    def __init__(self, agent: str, secret: str, resources: list[Resource] | None):
        super().__init__(agent, secret)
        self.resources = resources


class ForceEvict:
    """A person removes every hold on *resource* (or only *agent*'s), with a reason."""

    __slots__ = ("agent", "by", "reason", "resource")

    def __init__(self, resource: Resource, *, by: str, reason: str, agent: str | None = None):
        self.resource = resource
        self.by = by
        self.reason = reason
        self.agent = agent


# Decisions --------------------------------------------------------------------------------


def decide(state: State, command: object, ctx: Context) -> Decision:
    """Decide *command* against *state* at ``ctx.now``; never changes *state*."""
    handler = _DECIDE.get(type(command))
    if handler is None:
        raise TypeError(f"not a lease command: {command!r}")
    return handler(state, command, ctx)


def eviction_reason(state: State, lease: LeaseRecord, ctx: Context) -> str | None:
    """Why *lease* no longer holds at ``ctx.now`` (``rebooted``, ``holder-dead``, ``expired``)."""
    if lease["boot"] != ctx.now.boot:
        return "rebooted"
    agent = state.agents.get(lease["agent"])
    if agent is not None and ctx.alive(agent) is False:
        return "holder-dead"
    if ctx.now.mono >= lease["expires"]:
        return "expired"
    if ctx.evict_stuck and agent is not None and stuck_for(agent, ctx) is not None:
        return "stuck"
    return None


def idle_for(agent: AgentRecord, now: Now) -> float | None:
    """Seconds since *agent*'s last progress (None: not on this clock, e.g. after a reboot)."""
    progress = agent.get("progress", agent["seen"])
    if agent.get("progress_boot", agent["seen_boot"]) != now.boot:
        return None
    return (now.mono - progress) / NS


def stuck_for(agent: AgentRecord, ctx: Context) -> float | None:
    """Seconds *agent* has gone without progress when it is stuck: alive (seen within its
    ttl, its process not gone) yet no event of its own but heartbeats and renewals, no
    commit and no guarded edit for ``ctx.stuck_after``; None when it is not stuck."""
    if ctx.stuck_after is None:
        return None
    idle = idle_for(agent, ctx.now)
    if idle is None or idle < ctx.stuck_after:
        return None  # the cheap test first: the liveness test may read /proc
    if agent_status(agent, ctx) != "live":
        return None
    return idle


def agent_status(agent: AgentRecord, ctx: Context) -> str:
    """``live``, ``stale`` (no sign of life within its ttl) or ``dead`` (its process is gone)."""
    if ctx.alive(agent) is False:
        return "dead"
    if agent["seen_boot"] != ctx.now.boot or ctx.now.mono - agent["seen"] >= ttl_ns(agent["ttl"]):
        return "stale"
    return "live"


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
    for name in sorted(state.agents):
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


def expires_in(lease: LeaseRecord, now: Now) -> float:
    """Seconds until *lease* expires at *now* (0 when it already has, or after a reboot)."""
    if lease["boot"] != now.boot:
        return 0.0
    return max(0.0, (lease["expires"] - now.mono) / NS)


def authenticate(state: State, agent: str, secret: str) -> AgentRecord:
    """*agent*'s record when *secret* is the hash of its session token (hashed by
    `dibs.service.identity`).

    Raises:
        NotFound: no such agent.
        AuthError: the token is missing or wrong.
        LeaseLost: the token belonged to an earlier registration of this name, replaced
            since: whatever that session held is gone.
    """
    record = state.agents.get(agent)
    if record is None:
        raise NotFound(
            f"no agent named {agent!r} is registered",
            hint=f"register it with `dibs agent register {agent}` and use the token it prints",
        )
    # The stored value is a hash of the token: comparing hashes leaks nothing usable.
    if secret and secret in record.get("retired", ()):
        raise LeaseLost(
            f"lease lost: agent {agent!r} was registered again (at {record['registered']}) "
            "after this session's leases ended; this session holds nothing now",
            hint="register under a new name (or claim again as the new session)",
            lost=[],
        )
    if not secret or record["secret"] != secret:
        raise AuthError(
            f"wrong or missing session token for agent {agent!r}",
            hint="pass the token from `dibs agent register` (--token or DIBS_TOKEN)",
        )
    return record


class _Evictions:
    """Evictions decided so far in one decision, so later checks see them as gone."""

    def __init__(self, state: State, ctx: Context):
        self.state = state
        self.ctx = ctx
        self.events: list[Event] = []
        self.gone: set[tuple[str, str]] = set()
        self.dead: set[str] = set()

    def check(self, lease: LeaseRecord) -> bool:
        """Evict *lease* if it no longer holds; True when it was (or already is) gone."""
        if (lease["resource"], lease["agent"]) in self.gone:
            return True
        reason = eviction_reason(self.state, lease, self.ctx)
        if reason is None:
            return False
        if reason == "holder-dead":
            # A dead holder's leases are all void: evict them together, not one by one.
            self.dead.add(lease["agent"])
            for other in self.state.leases_of(lease["agent"]):
                self.evict(other, reason)
        else:
            self.evict(lease, reason)
        return True

    def evict(self, lease: LeaseRecord, reason: str, op: str = "auto-evict", **extra: Any) -> None:
        key = (lease["resource"], lease["agent"])
        if key in self.gone:
            return
        self.gone.add(key)
        self.events.append(
            new_event(
                op,
                self.ctx.now,
                resource=lease["resource"],
                agent=lease["agent"],
                mode=lease["mode"],
                token=lease["token"],
                reason=reason,
                **extra,
            )
        )


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
    ev = _Evictions(state, ctx)
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
        granted.append(
            {
                "resource": resource.text,
                "agent": cmd.agent,
                "mode": cmd.mode,
                "token": token,
                "ttl": ttl,
                "acquired": events[-1]["wall"],
                "expires_in": ttl,
                **({"note": cmd.note} if cmd.note is not None else {}),
                "new": True,
            }
        )
    return Decision(events, result=granted)


def _blocked(
    state: State,
    cmd: Acquire,
    blocked: list[tuple[Resource, list[LeaseRecord]]],
    ev: _Evictions,
    error: Conflict,
) -> Decision:
    if cmd.waiter is not None:
        from dibs.core import waits  # only a --wait claim that is blocked needs it

        return waits.decide_wait(state, cmd, blocked, ev, error)
    if cmd.log_refusal:
        ev.events.append(refusal(cmd, blocked[0][0], blocked[0][1], ev.ctx))
    return Decision(ev.events, error)


def refusal(cmd: Acquire, resource: Resource, blockers: list[LeaseRecord], ctx: Context) -> Event:
    """The ``refuse`` event of a claim call that ended refused (one per call, not per try)."""
    return new_event(
        "refuse",
        ctx.now,
        agent=cmd.agent,
        resource=resource.text,
        mode=cmd.mode,
        by=",".join(sorted({lease["agent"] for lease in blockers})),
        waited=cmd.waited,
        tries=cmd.tries,
    )


def _grant(lease: LeaseRecord, ttl: float, *, new: bool) -> dict[str, Any]:
    """What a claimant is told about a lease it now holds (``expires_in``: the full ttl)."""
    view: dict[str, Any] = {
        "resource": lease["resource"],
        "agent": lease["agent"],
        "mode": lease["mode"],
        "token": lease["token"],
        "ttl": ttl,
        "acquired": lease["acquired"],
        "expires_in": ttl,
    }
    if "note" in lease:
        view["note"] = lease["note"]
    view["new"] = new
    return view


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
    state: State, cmd: _AgentCommand, resources: list[Resource], ev: _Evictions
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
    state: State, agent: str, lost: list[str], never: list[str], ev: _Evictions
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
    try:
        authenticate(state, cmd.agent, cmd.secret)
    except DibsError as exc:
        return Decision(error=exc)
    ev = _Evictions(state, ctx)
    held, lost, never = _held(state, cmd, cmd.resources, ev)
    events = ev.events
    for lease in held:
        events.append(
            new_event(
                "renew",
                ctx.now,
                resource=lease["resource"],
                agent=cmd.agent,
                mode=lease["mode"],
                token=lease["token"],
                ttl=cmd.ttl if cmd.ttl is not None else lease["ttl"],
            )
        )
    result = [{"resource": lease["resource"], "token": lease["token"]} for lease in held]
    return Decision(events, _lost_or_never(state, cmd.agent, lost, never, ev), result)


def _release(state: State, cmd: Release, ctx: Context) -> Decision:
    try:
        authenticate(state, cmd.agent, cmd.secret)
    except DibsError as exc:
        return Decision(error=exc)
    ev = _Evictions(state, ctx)
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
                "release",
                ctx.now,
                resource=lease["resource"],
                agent=cmd.agent,
                mode=lease["mode"],
                token=lease["token"],
            )
        )
    result = [{"resource": lease["resource"], "token": lease["token"]} for lease in held]
    return Decision(events, _lost_or_never(state, cmd.agent, lost, never, ev), result)


def _heartbeat(state: State, cmd: Heartbeat, ctx: Context) -> Decision:
    try:
        agent = authenticate(state, cmd.agent, cmd.secret)
    except DibsError as exc:
        return Decision(error=exc)
    ev = _Evictions(state, ctx)
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
        ev = _Evictions(state, ctx)
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
    ev = _Evictions(state, ctx)
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
