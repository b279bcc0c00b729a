"""The service API: `Coordinator`, the one object every face (CLI, MCP, web, hooks) calls.

It validates input before touching the store, turns each use case into one atomic
`Store.transact` of the core rules, raises the decision's error, and shapes results as plain
JSON-ready dicts (the same shapes the CLI prints with ``--json``).

Example::

    from dibs import Coordinator

    with Coordinator.open(".") as coord:
        me = coord.register("agent-1")          # remembers the session token
        coord.claim(["issue:ROOSE-158", "path:src/auth/**"], wait=30)
        ...
        coord.release()                         # everything this agent holds
"""

from __future__ import annotations

import itertools
import os
import time

from dibs.core import deadlock, leases
from dibs.core.leases import Context, Decision
from dibs.core.resources import KINDS, parse_resource, parse_resources, scope
from dibs.core.state import EXCLUSIVE, SHARED
from dibs.ground import host
from dibs.ground.backoff import Backoff
from dibs.ground.errors import (
    Conflict,
    Deadlock,
    DibsError,
    LockTimeout,
    NotFound,
    UsageError,
)
from dibs.service.checks import (
    MAX_NOTE,
    MAX_PID,
    MAX_REASON,
    MAX_SEQ,
    _check_text,
    check_agent_name,
    check_number,
    check_ttl,
    check_wait,
)
from dibs.service.identity import operator, require, secret_hash
from dibs.service.opening import is_postgres_url, last_opened, open_store, preopened
from dibs.service.views import (
    agent_view,
    event_filter,
    lease_view,
    split_leases,
    status_view,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from types import TracebackType
    from typing import Any

    from dibs.core.events import Event
    from dibs.core.resources import Resource
    from dibs.core.rules import LeaseView
    from dibs.core.state import AgentRecord, State
    from dibs.ground.git.discover import Repo
    from dibs.ground.now import Now
    from dibs.ground.settings import Settings
    from dibs.service.views import AgentView, Registered
    from dibs.store.base import Finding, Store

_BACKOFF_CAP = 1.0
#: With a store that wakes waiters on a release, the longest wait between two tries.
_WAKE_POLL = 5.0
#: Seconds past a blocking lease's expiry at which a waiting claim looks again.
_EXPIRY_SLACK = 0.05


#: Seconds a recorded wait holds without a refresh (a waiter refreshes it at half of this): a
#: waiter that died on another host (whose process this host cannot look up) stops counting
#: in the wait-for graph this long after its last try at most.
WAIT_HORIZON = 30.0


def _waiter() -> dict[str, Any]:
    """This process as a waiter (`leases.Acquire.waiter`): a SIGKILLed waiter on this host is
    seen as gone by its pid, so its wait cannot make a phantom cycle."""
    pid = os.getpid()
    return {
        "host": host.host_id(),
        "pid": pid,
        "pid_start": host.process_start(pid),
        "host_boot": host.boot_id(),
        "horizon": WAIT_HORIZON,
    }


class Coordinator:
    """The dibs service: register agents, claim, renew, release, look, repair.

    A coordinator acts for at most one agent at a time (``agent`` and ``token``); `register`
    sets both. Queries need no identity. Not thread-safe for identity changes; share a store
    rather than a coordinator between threads.

    Args:
        store: where events and state live (see `dibs.store`).
        agent: the agent to act as (``DIBS_AGENT``).
        token: that agent's session token (``DIBS_TOKEN``).
        settings: resolved settings (default: the defaults).
        repo: the repository, when there is one (worktree features need it).
    """

    def __init__(
        self,
        store: Store,
        *,
        agent: str | None = None,
        token: str | None = None,
        settings: Settings | None = None,
        repo: Repo | None = None,
        liveness: Callable[[AgentRecord], bool | None] | None = None,
    ):
        if settings is None:
            from dibs.ground.settings import Settings

            settings = Settings.defaults()
        self.store = store
        self.agent = agent
        self.token = token
        self.settings = settings
        self.repo = repo
        self.liveness = liveness if liveness is not None else host.Liveness()
        self._hashed: tuple[str | None, str] = (None, "")

    @classmethod
    def open(
        cls,
        where: str | os.PathLike[str] | None = None,
        *,
        agent: str | None = None,
        token: str | None = None,
        store: Store | None = None,
    ) -> Coordinator:
        """Open the store of the repository at *where* (default: the current directory).

        ``DIBS_STORE`` (or ``store.url`` in dibs.toml) names another store folder.
        """
        from dibs.ground import settings as config
        from dibs.ground.git.discover import find_repo

        repo = find_repo(os.fspath(where) if where is not None else None)
        settings = config.load(repo.root, cache_dir=repo.store_dir)
        if store is None:
            url, namespace = settings["store.url"], settings["store.namespace"]
            store = preopened.pop((repo.common_dir, url, namespace), None) or open_store(
                url, repo, namespace=namespace, sync=settings["store.sync"]
            )
            if is_postgres_url(url):
                last_opened[:] = [(repo.common_dir, url, namespace, store)]
        return cls(store, agent=agent, token=token, settings=settings, repo=repo)

    def __enter__(self) -> Coordinator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the store."""
        self.store.close()

    def create(self) -> str:
        """Make the store's files or tables where they are missing (``dibs init``); its URL."""
        self.store.create()
        return str(self.store.url)

    # Plumbing ---------------------------------------------------------------------------

    def context(self, now: Now) -> Context:
        """A decision context at *now* that asks this host about holders' processes and
        knows when an agent is stuck (``agents.stuck_after``, ``agents.on_stuck``)."""
        stuck_after = float(self.settings["agents.stuck_after"]) or None
        evict = self.settings["agents.on_stuck"] == "evict"
        return Context(now, self.liveness, stuck_after=stuck_after, evict_stuck=evict)

    def transact(
        self,
        decide: Callable[[State, Context], Decision],
        *,
        footprint: Sequence[str] | None = None,
    ) -> Decision:
        """Run *decide* atomically against the store; raise its error after appending.

        *footprint*: *decide* is a plain claim or release and these are the resources it reads
        besides its agent's record (see `dibs.store.base.Store.transact`); only the lease
        commands below pass it.

        The same step acts on the stuck agents it meets (`leases.stuck_events`): lazy, like
        eviction, so no daemon is needed. Integrations (worktrees, the merge queue, plans)
        build their use cases on this.
        """

        def step(state: State, now: Now) -> Decision:
            ctx = self.context(now)
            decision = decide(state, ctx)
            if ctx.stuck_after is not None:
                decision.events += leases.stuck_events(state, ctx, decision.events)
            return decision

        decision = self.store.transact(step, footprint=footprint)
        if decision.error is not None:
            raise decision.error
        return decision

    def fork(self) -> Coordinator:
        """Another coordinator on the same store, settings and repository, acting for no one
        yet: a use case that must act as a helper agent of its own (a document write's lock
        holder) without changing who this one acts for."""
        return Coordinator(
            self.store, settings=self.settings, repo=self.repo, liveness=self.liveness
        )

    @property
    def store_folder(self) -> str | None:
        """The folder the store keeps its files in (the local store's), or None."""
        root = getattr(self.store, "root", None)
        return None if root is None else str(root)

    # Reading ----------------------------------------------------------------------------
    # Integrations and faces read through these, never through ``coord.store``: the service
    # is the one door to the store (docs/explanation/architecture.md).

    def read(self) -> tuple[State, Now]:
        """The current state and the store's time now (to decide from, or to show)."""
        return self.store.read()

    def events(self, since: int = 0, limit: int | None = None) -> list[Event]:
        """The events after sequence number *since*, oldest first: the first *limit* of them,
        or all (page through a long log by passing the last ``seq`` seen as *since*)."""
        check_number(since, "since", low=0, high=MAX_SEQ, whole=True)
        if limit is not None:
            check_number(limit, "limit", low=0, high=MAX_SEQ, whole=True)
        if limit is None:
            return list(self.store.events(since))
        return list(itertools.islice(self.store.events(since), limit))

    def table(self, name: str) -> dict[str, Any]:
        """An integration's table as it is now (``key -> record``); empty when it has none."""
        return dict(self.store.read()[0].tables.get(name, {}))

    def seq(self) -> int:
        """The sequence number of the last event: it changes whenever anything happens."""
        return self.store.read()[0].seq

    def _command(self, command: object) -> Decision:
        # A plain claim or release reads only its agent and the leases on its resources; a
        # waiting claim also reads the recorded waits, so it does not commute.
        footprint: list[str] | None = None
        if isinstance(command, leases.Release):
            footprint = [r.text for r in command.resources or ()]
        elif isinstance(command, leases.Acquire) and command.waiter is None:
            footprint = [r.text for r in command.resources]
        return self.transact(
            lambda state, ctx: leases.decide(state, command, ctx), footprint=footprint
        )

    def _identity(self) -> tuple[str, str]:
        if not self.agent or not self.token or self._hashed[0] != self.token:
            agent, secret = require(self.agent, self.token)
            self._hashed = (self.token, secret)
            return agent, secret
        return self.agent, self._hashed[1]

    def _default_ttl(self) -> float:
        return float(self.settings["leases.ttl"])

    # Agents -----------------------------------------------------------------------------

    def register(
        self,
        name: str,
        *,
        ttl: float | None = None,
        pid: int | None = None,
        worktree: str | None = None,
        branch: str | None = None,
        token: str | None = None,
    ) -> Registered:
        """Register agent *name* and act as it from now on.

        Args:
            name: the agent id, ``[a-z0-9][a-z0-9._-]{0,63}``.
            ttl: seconds its leases live without a heartbeat (default: settings).
            pid: a long-lived process to watch: when it dies, the agent's claims are evicted
                at once. Without one, the agent's leases expire by ttl alone.
            token: the session token of the registration this one replaces: needed to take
                over a name that is live or still holds live leases.

        Returns:
            ``{"agent", "token", "ttl", "pid", "replaced"}``; keep the token secret.

        Raises:
            Conflict: a live agent already has that name, or its leases still hold, and
                *token* is not its token.
        """
        check_agent_name(name)
        ttl = check_ttl(ttl) or self._default_ttl()
        pid_start = None
        if pid is not None:
            check_number(pid, "pid", low=1, high=MAX_PID, whole=True, hint="name a process id")
            pid_start = host.process_start(pid)
            if pid_start is None:
                raise UsageError(
                    f"process {pid} is not running", hint="name a running process with --pid"
                )
        proof = secret_hash(token) if token else None
        token = os.urandom(16).hex()
        command = leases.Register(
            name,
            secret_hash(token),
            host=host.host_id(),
            host_boot=host.boot_id(),
            ttl=ttl,
            pid=pid,
            pid_start=pid_start,
            worktree=worktree,
            branch=branch,
            proof=proof,
        )
        decision = self._command(command)
        self.agent, self.token = name, token
        return {
            "agent": name,
            "token": token,
            "ttl": ttl,
            "pid": pid,
            "replaced": decision.result["replaced"],
        }

    def unregister(self) -> dict[str, Any]:
        """Release everything this agent holds and forget it."""
        agent, secret = self._identity()
        decision = self._command(leases.Unregister(agent, secret))
        result: dict[str, Any] = {"agent": agent, **decision.result}
        self.token = None
        return result

    def agents(self) -> list[AgentView]:
        """Every registered agent, by name."""
        state, now = self.store.read()
        ctx = self.context(now)
        return [agent_view(state.agents[n], state, ctx) for n in sorted(state.agents)]

    def agent_info(self, name: str) -> AgentView:
        """One agent and its claims."""
        state, now = self.store.read()
        record = state.agents.get(name)
        if record is None:
            raise NotFound(f"no agent named {name!r}", hint="list agents with `dibs agent list`")
        view = agent_view(record, state, self.context(now))
        view["holding"] = [lease_view(lease, now) for lease in state.leases_of(name)]
        return view

    # Claims -----------------------------------------------------------------------------

    def claim(
        self,
        resources: Iterable[str],
        *,
        shared: bool = False,
        ttl: float | None = None,
        wait: float | None = None,
        note: str | None = None,
        record_refusal: bool = True,
    ) -> list[LeaseView]:
        """Claim every resource in *resources*, all or none.

        Args:
            resources: ``kind:name`` texts, e.g. ``issue:ROOSE-158``, ``path:src/**``.
            shared: a shared claim (coexists with other shared claims, not exclusive ones).
            ttl: seconds the lease lives without a heartbeat (default: the agent's).
            wait: seconds to keep trying while held by others (exponential backoff with
                jitter); None or 0 tries once.
            note: a word for people about why.
            record_refusal: log a refusal as a ``refuse`` event (the conflict rate); off
                for try-locks that are refused as a matter of course.

        Returns:
            One lease view per resource, each with its fencing ``token``.

        Raises:
            Conflict: held by another agent (no wait).
            LockTimeout: still held when the wait ran out.
        """
        parsed = parse_resources(list(resources) if not isinstance(resources, str) else [resources])
        if not parsed:
            raise UsageError("nothing to claim", hint="name resources, e.g. issue:ROOSE-158")
        ttl = check_ttl(ttl)
        _check_text(note, "note", MAX_NOTE)
        wait = check_wait(wait)
        agent, secret = self._identity()
        mode = SHARED if shared else EXCLUSIVE
        pause = Backoff(wait or 0.0, cap=_BACKOFF_CAP)
        waited: float | None = None
        tries = 0
        waiter = _waiter() if wait else None
        try:
            while True:
                tries += 1
                command = leases.Acquire(
                    agent,
                    secret,
                    parsed,
                    mode=mode,
                    ttl=ttl,
                    note=note,
                    waited=waited,
                    log_refusal=record_refusal and not wait,
                    tries=tries if wait else None,
                    waiter=waiter,
                )
                try:
                    decision = self._command(command)
                    break
                except Conflict as exc:
                    remaining = pause.remaining()
                    if remaining <= 0:
                        if not wait:
                            raise
                        waited = pause.waited()
                        self._give_up(
                            leases.Acquire(
                                agent, secret, parsed, mode=mode, waited=waited, tries=tries
                            ),
                            exc,
                            log=record_refusal,
                        )
                        waiter = None  # the give-up step ended the wait
                        raise LockTimeout(
                            f"{exc.message}; gave up after waiting {pause.waited():.1f} s",
                            hint="wait longer (--wait SECONDS) or pick other work",
                            **exc.details,
                        ) from exc
                    self._wait_for_change(pause.pause(), remaining, parsed, exc)
                    waited = pause.waited()
        except Deadlock:
            raise  # the step that refused it ended the wait
        except BaseException:
            if waiter is not None:
                self._give_up(None, None, log=False)  # interrupted: no phantom edge left
            raise
        return list(decision.result)

    def _give_up(self, command: leases.Acquire | None, exc: Conflict | None, *, log: bool) -> None:
        """End a waiting claim call that gave up: drop its recorded wait and, with *log*,
        record the refusal (its tries were not logged one by one)."""
        import contextlib

        agent, secret = self._identity()

        def decide(state: State, ctx: Context) -> Decision:
            events: list[Event] = []
            try:
                leases.authenticate(state, agent, secret)
            except DibsError:
                return Decision()
            if log and command is not None and exc is not None:
                text = exc.details.get("resource") or command.resources[0].text
                blockers: Any = [{"agent": h["agent"]} for h in exc.details.get("holders", [])]
                events.append(leases.refusal(command, parse_resource(text), blockers, ctx))
            if agent in state.tables.get(deadlock.TABLE, {}):
                events.append(deadlock.wait_end(agent, "gave-up", ctx.now))
            return Decision(events)

        with contextlib.suppress(DibsError):  # a record of a refusal must not hide it
            self.transact(decide)

    def _wait_for_change(
        self, backoff: float, remaining: float, waiting_for: list[Resource], refused: Conflict
    ) -> None:
        """`wait_for_release` for a claim refused by *refused*: woken only by a release of
        something that may overlap *waiting_for*.

        A lease that runs out frees its resource without a release to wake anyone, so the
        wait also ends just after the soonest expiry among the holders that *refused* it
        (a renewal may have moved it on since: then one more look finds that out)."""
        expiring = [h.get("expires_in") for h in refused.details.get("holders") or ()]
        known = [float(x) for x in expiring if isinstance(x, int | float)]
        if known:
            remaining = min(remaining, max(min(known), 0.0) + _EXPIRY_SLACK)
        scopes = [text for r in waiting_for if (text := scope(r.text)) is not None]
        self.wait_for_release(backoff, remaining, scopes)

    def wait_for_release(
        self, backoff: float, remaining: float, scopes: list[str] | None = None
    ) -> None:
        """Sleep *backoff* seconds, or, when the store can tell (``wait_for_change``: the
        PostgreSQL store's LISTEN/NOTIFY), until something is let go (a release, an
        eviction, an agent leaving; with *scopes*, only something that may overlap one of
        them), for at most *remaining* seconds and `_WAKE_POLL` (in case a notification is
        lost, and for a change that sends none, such as a task landing)."""
        wait = getattr(self.store, "wait_for_change", None)
        if wait is None:
            time.sleep(backoff)
            return
        wait(min(remaining, _WAKE_POLL), scopes)

    def renew(self, resources: Iterable[str], *, ttl: float | None = None) -> list[dict[str, Any]]:
        """Extend this agent's leases on *resources*.

        Raises:
            LeaseLost: one of them was evicted or expired (the others are still renewed).
        """
        parsed = parse_resources(resources)
        if not parsed:
            raise UsageError("nothing to renew", hint="name the resources you hold")
        ttl = check_ttl(ttl)
        agent, secret = self._identity()
        decision = self._command(leases.Renew(agent, secret, parsed, ttl=ttl))
        return list(decision.result)

    def release(self, resources: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Let go of *resources*, or of everything this agent holds when None.

        Raises:
            LeaseLost: one of them had already been evicted (the others are released).
        """
        parsed = None if resources is None else parse_resources(resources)
        if parsed is not None and not parsed:
            raise UsageError("nothing to release", hint="name resources, or release --all")
        agent, secret = self._identity()
        decision = self._command(leases.Release(agent, secret, parsed))
        return list(decision.result)

    def heartbeat(self) -> dict[str, Any]:
        """Renew every lease this agent holds; raises `LeaseLost` naming any already lost."""
        agent, secret = self._identity()
        decision = self._command(leases.Heartbeat(agent, secret))
        return {"agent": agent, **decision.result}

    def evict(
        self, resource: str, *, reason: str, agent: str | None = None
    ) -> list[dict[str, Any]]:
        """Force every hold on *resource* (or only *agent*'s) away: a person's act, logged
        with why and who (``by``: the OS user and host running this, never a typed name)."""
        parsed = parse_resource(resource)
        _check_text(reason, "reason", MAX_REASON, required=True)
        if agent is not None:
            check_agent_name(agent)
        command = leases.ForceEvict(parsed, by=operator(), reason=reason, agent=agent)
        return list(self._command(command).result)

    def claims(self, *, agent: str | None = None, kind: str | None = None) -> list[LeaseView]:
        """Live claims (expired ones awaiting eviction are left out), by resource."""
        if kind is not None and kind not in KINDS:
            raise UsageError(f"unknown kind {kind!r}", hint=f"use one of {', '.join(KINDS)}")
        state, now = self.store.read()
        ctx = self.context(now)
        out = []
        for text in sorted(state.claims):
            if kind is not None and not text.startswith(kind + ":"):
                continue
            for lease in state.claims[text].values():
                if agent is not None and lease["agent"] != agent:
                    continue
                if leases.eviction_reason(state, lease, ctx) is None:
                    out.append(lease_view(lease, now))
        return out

    # Looking ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Agents, claims (live and awaiting eviction) and a one-line summary."""
        state, now = self.store.read()
        ctx = self.context(now)
        live, stale = split_leases(state, ctx)
        return status_view(state, ctx, self.store.url, live, stale)

    def log(
        self,
        *,
        limit: int | None = None,
        since: int = 0,
        agent: str | None = None,
        resource: str | None = None,
        op: str | None = None,
    ) -> list[Event]:
        """Events, oldest first: the last *limit* of them, or all after *since*."""
        if limit is not None:
            check_number(limit, "limit", low=0, high=MAX_SEQ, whole=True)
        check_number(since, "since", low=0, high=MAX_SEQ, whole=True)
        match = event_filter(agent, resource, op)
        if limit is not None and since == 0 and match is None:
            return self.store.tail(limit)
        found = [e for e in self.store.events(since) if match is None or match(e)]
        return found[-limit:] if limit is not None else found

    def follow(
        self,
        *,
        since: int | None = None,
        poll: float = 0.2,
        agent: str | None = None,
        resource: str | None = None,
        op: str | None = None,
    ) -> Iterator[Event]:
        """Yield events as they are appended (from *since*, default: now), forever."""
        if since is not None:
            check_number(since, "since", low=0, high=MAX_SEQ, whole=True)
        match = event_filter(agent, resource, op)
        last = self.store.read()[0].seq if since is None else since
        while True:
            for event in self.store.events(last):
                last = event["seq"]
                if match is None or match(event):
                    yield event
            time.sleep(poll)

    def doctor(self, *, repair: bool = False) -> dict[str, Any]:
        """Check the log and the cached state; with *repair*, mend what can be mended."""
        from dibs.ground import platform

        findings: list[Finding] = self.store.check(repair=repair)
        report = {"store": self.store.url, "ok": not findings, "findings": findings}
        sync = getattr(self.store, "sync", None)
        if sync is not None:
            # The local store decides with this machine's primitives (docs: Platforms).
            report["platform"] = platform.describe(sync)
        return report
