"""The current state and how events change it: ``apply(state, event)``.

The state is what the log says now: registered agents, leases, the two counters (``seq`` and
the last fencing token) and the integrations' tables. Replaying every event through `apply`
from an empty `State` rebuilds it exactly; the local store's checkpoint is `State.to_json`.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_left, insort

from dibs.core import inbox
from dibs.core import resources as res
from dibs.core.due import NS, Expiry, Stuck, agent_expiry, ttl_ns
from dibs.core.events import SCHEMA_VERSION
from dibs.ground.errors import CorruptLog

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any, NotRequired, TypedDict

    from dibs.core.events import Event
    from dibs.core.resources import Resource

    class LostRecord(TypedDict):
        """Why an agent no longer holds a resource it held (kept to explain `LeaseLost`)."""

        token: int
        reason: str
        seq: int
        by: NotRequired[str]

    class AgentRecord(TypedDict):
        """A registered agent as the state keeps it."""

        name: str
        host: str
        pid: int | None
        pid_start: int | None
        boot: str
        secret: str
        ttl: float
        registered: str
        seen: int
        seen_boot: str
        seen_wall: str
        heartbeat_seq: int
        lost: dict[str, LostRecord]
        worktree: NotRequired[str]
        branch: NotRequired[str]
        host_boot: NotRequired[str]
        retired: NotRequired[list[str]]
        progress: NotRequired[int]
        progress_boot: NotRequired[str]
        progress_wall: NotRequired[str]
        stuck: NotRequired[int]

    class LeaseRecord(TypedDict):
        """One agent's hold on one resource."""

        resource: str
        agent: str
        mode: str
        token: int
        ttl: float
        acquired: str
        acquired_mono: int
        boot: str
        expires: int
        note: NotRequired[str]


#: Events that are no sign of progress by their ``agent``: keeping alive, waiting, being
#: evicted or told something (`agents.stuck_after`, docs/reference/events.md).
NOT_PROGRESS = frozenset(
    (
        "heartbeat",
        "renew",
        "auto-evict",
        "force-evict",
        "refuse",
        "wait",
        "wait-end",
        "inbox-read",
        "stuck",
        "unregister",
    )
)

EXCLUSIVE = "exclusive"
SHARED = "shared"
#: How many lost leases an agent remembers, to explain a later renew or release.
MAX_LOST = 64

__all__ = [
    "EXCLUSIVE",
    "MAX_LOST",
    "NOT_PROGRESS",
    "NS",
    "SHARED",
    "State",
    "apply",
    "seal",
    "ttl_ns",
]


class State:
    """The current state: agents, leases, the counters, and the integrations' tables.

    ``claims`` maps resource text to {agent: lease}. ``tables`` holds records that the
    integrations (worktrees, queue, plans, ...) keep through ``record`` events. The path-prefix
    and per-agent indexes are derived on load and kept current by `apply`; they are never
    persisted. So are the sorted times (`stuck`, `expiry`: `dibs.core.due`), built on first
    use: a guard that opens the store for one check never pays for them.
    """

    __slots__ = (
        "_by_agent",
        "_expiry",
        "_prefix_order",
        "_prefixes",
        "_stuck",
        "agents",
        "claims",
        "last_token",
        "seq",
        "tables",
    )

    def __init__(self) -> None:
        self.seq = 0
        self.last_token = 0
        self.agents: dict[str, AgentRecord] = {}
        self.claims: dict[str, dict[str, LeaseRecord]] = {}
        self.tables: dict[str, dict[str, Any]] = {}
        self._prefixes: dict[str, set[str]] = {}  # literal prefix -> path resource texts
        self._prefix_order: list[str] | None = None  # the prefixes sorted, built on first use
        self._by_agent: dict[str, set[str]] = {}
        self._stuck: Stuck | None = None
        self._expiry: Expiry | None = None

    def stuck(self) -> Stuck:
        """The agents that may be stuck, in order of their times (built on first use)."""
        if self._stuck is None:
            self._stuck = Stuck(self.agents)
        return self._stuck

    def expiry(self) -> Expiry:
        """Agents and leases in order of expiry (built on first use)."""
        if self._expiry is None:
            self._expiry = Expiry(self.agents, self.claims)
        return self._expiry

    def touch(self, agent: str, resource: str = "") -> None:
        """Take the times of *agent* (with *resource*: of its lease on it) into the indexes
        after they changed outside `apply` (the PostgreSQL store's renewals in ``dibs.live``)."""
        if resource:
            if self._expiry is not None:
                lease = self.claims.get(resource, {}).get(agent)
                self._expiry.touch((agent, resource), None if lease is None else lease["expires"])
            return
        record = self.agents.get(agent)
        if self._stuck is not None:
            self._stuck.touch(agent, record)
        if self._expiry is not None:
            self._expiry.touch((agent, ""), None if record is None else agent_expiry(record))

    def to_json(self) -> dict[str, Any]:
        """The state as a JSON-ready dict (the checkpoint format)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "seq": self.seq,
            "last_token": self.last_token,
            "agents": self.agents,
            "claims": self.claims,
            "tables": self.tables,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> State:
        """Rebuild a state from `to_json` or `to_checkpoint` output.

        A checkpoint carries the derived indexes too, which saves rebuilding them on every
        open (a guard opens the store on every edit); without them they are recomputed.
        """
        state = cls()
        state.seq = int(data["seq"])
        state.last_token = int(data["last_token"])
        state.agents = data["agents"]
        state.claims = data["claims"]
        state.tables = data.get("tables", {})
        indexes = data.get("indexes")
        if indexes is not None:
            state._prefixes = {k: set(v) for k, v in indexes["prefixes"].items()}
            state._by_agent = {k: set(v) for k, v in indexes["by_agent"].items()}
        else:
            for resource_text, holders in state.claims.items():
                state._index(resource_text, holders)
        return state

    def to_checkpoint(self) -> dict[str, Any]:
        """`to_json` plus the derived indexes, for a fast `from_json`."""
        data = self.to_json()
        data["indexes"] = {
            "prefixes": {k: sorted(v) for k, v in self._prefixes.items()},
            "by_agent": {k: sorted(v) for k, v in self._by_agent.items()},
        }
        return data

    def _index(self, resource_text: str, holders: dict[str, LeaseRecord]) -> None:
        if resource_text.startswith("path:"):
            key = res.prefix_key(resource_text)
            bucket = self._prefixes.get(key)
            if bucket is None:
                bucket = self._prefixes[key] = set()
                if self._prefix_order is not None:
                    insort(self._prefix_order, key)
            bucket.add(resource_text)
        for agent in holders:
            self._by_agent.setdefault(agent, set()).add(resource_text)

    def leases(self) -> Iterator[LeaseRecord]:
        """Every lease, expired or not (eviction is lazy)."""
        for holders in self.claims.values():
            yield from holders.values()

    def leases_of(self, agent: str) -> list[LeaseRecord]:
        """The leases *agent* holds, in resource order."""
        return [self.claims[r][agent] for r in sorted(self._by_agent.get(agent, ()))]

    def lease_count(self, agent: str) -> int:
        """How many leases *agent* holds (without sorting them, as `leases_of` does)."""
        return len(self._by_agent.get(agent, ()))

    def path_candidates(self, path: str) -> Iterator[tuple[LeaseRecord, Resource]]:
        """Leases on path claims that may cover file *path*: those indexed under a prefix of it."""
        parts = path.split("/")
        for size in range(len(parts) + 1):
            for text in sorted(self._prefixes.get("/".join(parts[:size]), ())):
                resource = res.parse_resource(text)
                for lease in self.claims[text].values():
                    yield lease, resource

    def overlapping(self, resource: Resource) -> Iterator[LeaseRecord]:
        """Leases on resources that overlap *resource* (any holder, any mode)."""
        if resource.kind != "path":
            yield from self.claims.get(resource.text, {}).values()
            return
        # Two patterns can only meet when one's literal prefix lies on the other's path: the
        # prefixes above this one are looked up, those below it are a range of the sorted ones.
        key = res.prefix_key(resource.text)
        candidates: set[str] = set()
        if not key:
            for texts in self._prefixes.values():
                candidates |= texts
        else:
            parts = key.split("/")
            for size in range(len(parts) + 1):
                candidates |= self._prefixes.get("/".join(parts[:size]), set())
            order = self._prefix_order
            if order is None:
                order = self._prefix_order = sorted(self._prefixes)
            below = key + "/"
            at = bisect_left(order, below)
            while at < len(order) and order[at].startswith(below):
                candidates |= self._prefixes[order[at]]
                at += 1
        for text in sorted(candidates):
            if res.overlaps(resource, res.parse_resource(text)):
                yield from self.claims[text].values()


def seal(events: list[Event], last_seq: int) -> list[Event]:
    """Number *events* after *last_seq* and mark a multi-event batch as one transaction."""
    first = last_seq + 1
    for offset, event in enumerate(events):
        event["seq"] = first + offset
        if len(events) > 1:
            event["txn"] = [first, len(events)]
    return events


# Applying events --------------------------------------------------------------------------


def apply(state: State, event: Event) -> State:
    """Fold *event* into *state* (in place) and return it.

    Raises:
        CorruptLog: the event does not follow the state (a gap in ``seq``, an unknown op).
    """
    seq = event["seq"]
    if seq != state.seq + 1:
        raise CorruptLog(
            f"event seq {seq} does not follow {state.seq}",
            hint="the log has a gap or a repeat; run `dibs doctor`",
        )
    op = event["op"]
    handler = _APPLY.get(op)
    before = None
    if op == "wait-end":
        before = state.tables.get("waits", {}).get(event.get("agent", ""))
    held: list[str] = []
    if state._expiry is not None and op == "heartbeat":
        held = list(state._by_agent.get(event["agent"], ()))
    if handler is not None:
        handler(state, event)
    elif "table" in event:
        _apply_record(state, event)
    else:
        raise CorruptLog(
            f"event seq {seq} has unknown op {op!r}",
            hint="it may come from a newer dibs: upgrade, then run `dibs doctor`",
        )
    state.seq = seq
    if op not in NOT_PROGRESS and "agent" in event:
        _progress(state, event)
    if "agent" in event and (state._stuck is not None or state._expiry is not None):
        _touch(state, event, held)
    inbox.note(state, event, before)
    return state


def _touch(state: State, event: Event, held: list[str]) -> None:
    """Keep the sorted times current: those of the event's agent and of the leases the event
    may have changed (*held*: every lease the agent holds, for a heartbeat)."""
    agent = event["agent"]
    state.touch(agent)
    if state._expiry is not None:
        if "resource" in event:
            state.touch(agent, event["resource"])
        for text in held:
            state.touch(agent, text)


def _progress(state: State, event: Event) -> None:
    """Mark *event* as progress of its agent (`dibs.core.leases.stuck_for`)."""
    record = state.agents.get(event["agent"])
    if record is not None:
        record["progress"] = event["mono"]
        record["progress_boot"] = event["boot"]
        record["progress_wall"] = event["wall"]


def _apply_register(state: State, event: Event) -> None:
    name = event["agent"]
    details = event.get("details", {})
    record: AgentRecord = {
        "name": name,
        "host": event["host"],
        "pid": event.get("pid"),
        "pid_start": event.get("pid_start"),
        "boot": event["boot"],
        "secret": event["secret"],
        "ttl": event["ttl"],
        "registered": event["wall"],
        "seen": event["mono"],
        "seen_boot": event["boot"],
        "seen_wall": event["wall"],
        "heartbeat_seq": event["seq"],
        "lost": {},
    }
    if "host_boot" in event:
        record["host_boot"] = event["host_boot"]
    if "retired" in event:
        record["retired"] = event["retired"]
    if "worktree" in details:
        record["worktree"] = details["worktree"]
    if "branch" in details:
        record["branch"] = details["branch"]
    state.agents[name] = record


def _apply_unregister(state: State, event: Event) -> None:
    state.agents.pop(event["agent"], None)
    for text in list(state._by_agent.pop(event["agent"], ())):
        _drop_lease(state, text, event["agent"])


def _seen(state: State, event: Event) -> None:
    agent = state.agents.get(event["agent"])
    if agent is not None:
        agent["seen"] = event["mono"]
        agent["seen_boot"] = event["boot"]
        agent["seen_wall"] = event["wall"]


def _apply_heartbeat(state: State, event: Event) -> None:
    _seen(state, event)
    agent = state.agents.get(event["agent"])
    if agent is not None:
        agent["heartbeat_seq"] = event["seq"]
    for lease in state.leases_of(event["agent"]):
        lease["expires"] = event["mono"] + ttl_ns(lease["ttl"])
        lease["boot"] = event["boot"]


def _apply_acquire(state: State, event: Event) -> None:
    agent = event["agent"]
    text = event["resource"]
    lease: LeaseRecord = {
        "resource": text,
        "agent": agent,
        "mode": event["mode"],
        "token": event["token"],
        "ttl": event["ttl"],
        "acquired": event["wall"],
        "acquired_mono": event["mono"],
        "boot": event["boot"],
        "expires": event["mono"] + ttl_ns(event["ttl"]),
    }
    if "note" in event:
        lease["note"] = event["note"]
    holders = state.claims.setdefault(text, {})
    if not holders:
        state._index(text, {})
    holders[agent] = lease
    state._by_agent.setdefault(agent, set()).add(text)
    state.last_token = max(state.last_token, event["token"])
    _seen(state, event)
    record = state.agents.get(agent)
    if record is not None:
        record["lost"].pop(text, None)


def _apply_renew(state: State, event: Event) -> None:
    lease = state.claims[event["resource"]][event["agent"]]
    if "ttl" in event:
        lease["ttl"] = event["ttl"]
    lease["expires"] = event["mono"] + ttl_ns(lease["ttl"])
    lease["boot"] = event["boot"]
    if "note" in event:
        lease["note"] = event["note"]
    _seen(state, event)


def _drop_lease(state: State, text: str, agent: str) -> None:
    holders = state.claims.get(text)
    if holders is None or holders.pop(agent, None) is None:
        return
    owned = state._by_agent.get(agent)
    if owned is not None:
        owned.discard(text)
        if not owned:
            del state._by_agent[agent]
    if not holders:
        del state.claims[text]
        if text.startswith("path:"):
            key = res.prefix_key(text)
            bucket = state._prefixes.get(key)
            if bucket is not None:
                bucket.discard(text)
                if not bucket:
                    del state._prefixes[key]
                    order = state._prefix_order
                    if order is not None:
                        del order[bisect_left(order, key)]


def _apply_release(state: State, event: Event) -> None:
    _drop_lease(state, event["resource"], event["agent"])


def _apply_evict(state: State, event: Event) -> None:
    _drop_lease(state, event["resource"], event["agent"])
    record = state.agents.get(event["agent"])
    if record is None:
        return
    lost: LostRecord = {"token": event["token"], "reason": event["reason"], "seq": event["seq"]}
    if "by" in event:
        lost["by"] = event["by"]
    record["lost"][event["resource"]] = lost
    while len(record["lost"]) > MAX_LOST:
        del record["lost"][next(iter(record["lost"]))]


def _apply_record(state: State, event: Event) -> None:
    table = state.tables.setdefault(event["table"], {})
    value = event.get("value")
    if value is None:
        table.pop(event["key"], None)
        if not table:
            del state.tables[event["table"]]
    else:
        table[event["key"]] = value


def _apply_log_repair(state: State, event: Event) -> None:
    """A log found cut back was accepted: tokens continue above every one ever granted."""
    state.last_token = max(state.last_token, event["token"])


def _apply_nothing(state: State, event: Event) -> None:
    """Events that record what happened without changing who holds what (``refuse``,
    ``message``, ``progress``; `inbox.note` indexes messages and acknowledgements)."""


def _apply_stuck(state: State, event: Event) -> None:
    """An agent was found stuck: remember for which stretch without progress, so the next
    notice waits for new progress and another stretch."""
    record = state.agents.get(event["agent"])
    if record is not None:
        record["stuck"] = record.get("progress", 0)


_APPLY: dict[str, Callable[[State, Event], None]] = {
    "refuse": _apply_nothing,
    "message": _apply_nothing,
    "progress": _apply_nothing,
    "inbox-read": _apply_nothing,
    "stuck": _apply_stuck,
    "register": _apply_register,
    "unregister": _apply_unregister,
    "heartbeat": _apply_heartbeat,
    "acquire": _apply_acquire,
    "renew": _apply_renew,
    "release": _apply_release,
    "auto-evict": _apply_evict,
    "force-evict": _apply_evict,
    "log-repair": _apply_log_repair,
}
