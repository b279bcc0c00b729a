"""What every decision shares: its `Context` (the time, and a way to ask after holders), the
`Decision` it returns, when a lease no longer holds, an agent's status, who may act as an
agent, the evictions met on the way, and a lease as a caller is told about it.

`dibs.core.leases` (the lease state machine) and `dibs.core.waits` (recorded waits) both
decide with these; keeping them here lets both import them without importing each other.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dibs.core.events import new_event
from dibs.core.state import NS, ttl_ns
from dibs.ground.errors import AuthError, DibsError, LeaseLost, NotFound

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NotRequired, TypedDict

    from dibs.core.events import Event
    from dibs.core.state import AgentRecord, LeaseRecord, State
    from dibs.ground.now import Now

    class LeaseView(TypedDict):
        """A lease as callers are told about it (`lease_view`)."""

        resource: str
        agent: str
        mode: str
        token: int
        ttl: float
        acquired: str
        expires_in: float
        note: NotRequired[str]
        #: In a claim's result: whether this call took it (False: it renewed a hold).
        new: NotRequired[bool]
        #: In the status: why an expired lease will be evicted on the next touch.
        evictable: NotRequired[str]


class Context:
    """What a decision needs besides the state: the time and a way to ask after holders.

    ``alive(agent)`` answers True (its watched process runs), False (it is gone, or its pid
    now belongs to another process) or None (cannot tell: another host, or no watched pid).
    Answers are cached for the decision, so each holder is looked up once.
    """

    __slots__ = ("_alive", "_answers", "now")

    def __init__(self, now: Now, alive: Callable[[AgentRecord], bool | None] | None = None):
        self.now = now
        self._alive = alive
        self._answers: dict[str, bool | None] = {}

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


def eviction_reason(state: State, lease: LeaseRecord, ctx: Context) -> str | None:
    """Why *lease* no longer holds at ``ctx.now`` (``rebooted``, ``holder-dead``, ``expired``)."""
    if lease["boot"] != ctx.now.boot:
        return "rebooted"
    agent = state.agents.get(lease["agent"])
    if agent is not None and ctx.alive(agent) is False:
        return "holder-dead"
    if ctx.now.mono >= lease["expires"]:
        return "expired"
    return None


def agent_status(agent: AgentRecord, ctx: Context) -> str:
    """``live``, ``stale`` (no sign of life within its ttl) or ``dead`` (its process is gone)."""
    if ctx.alive(agent) is False:
        return "dead"
    if agent["seen_boot"] != ctx.now.boot or ctx.now.mono - agent["seen"] >= ttl_ns(agent["ttl"]):
        return "stale"
    return "live"


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


class Evictions:
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


def lease_view(lease: LeaseRecord, *, ttl: float, expires_in: float) -> LeaseView:
    """A lease as a caller is told about it: what, who, how, its fencing ``token``, its ttl
    and seconds left (the full *ttl* when just granted; what the clock says when looked at)."""
    view: LeaseView = {
        "resource": lease["resource"],
        "agent": lease["agent"],
        "mode": lease["mode"],
        "token": lease["token"],
        "ttl": ttl,
        "acquired": lease["acquired"],
        "expires_in": expires_in,
    }
    if "note" in lease:
        view["note"] = lease["note"]
    return view
