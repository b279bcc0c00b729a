"""The lease commands `dibs.core.leases.decide` takes, and the event of a refused claim.

Plain values (``__slots__`` classes, no dataclasses: the claim path does not import them).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dibs.core.events import new_event
from dibs.core.state import EXCLUSIVE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.events import Event
    from dibs.core.resources import Resource
    from dibs.core.rules import Context
    from dibs.core.state import LeaseRecord


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
