"""What falls due: the state's times in order, so that finding the agents that may be stuck
(`dibs.core.leases.stuck_events`) and the rows that may have expired
(`dibs.store.postgres.live.expiring`) costs what they find, not the size of the fleet.

Every write runs both questions; scanning every agent and lease for them made each step of a
10,000-agent fleet cost milliseconds. `Due` keeps four sorted lists of ``(time, key)``, each
entry exact (replaced whenever the record's time changes, by `dibs.core.state.apply` and by
the PostgreSQL store's `touch` after it takes a time from ``dibs.live``):

* agents not yet told they are stuck for their current stretch, by last progress, and by
  ``gap`` (when they turn stale minus their last progress): an agent can only be stuck when
  it has been idle for ``stuck_after`` and is still live, so when its gap exceeds
  ``stuck_after``. The smaller of the two candidate sets is read (bisect counts them);
* agents by when they turn stale (last seen + ttl);
* leases by expiry.

The lists answer supersets; the callers check each candidate with the same rule as before,
so the answers are the naive scans' exactly (a property test compares both). An insert or
removal is a bisect plus a memory move of the list's tail (microseconds at 100,000 entries).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

    from dibs.core.state import AgentRecord, LeaseRecord

    #: (agent, resource): a lease, or with resource '' the agent itself.
    Key = tuple[str, str]

NS = 1_000_000_000

#: Nanoseconds of slack in the stuck bounds: ``idle_for`` divides in floating point, so the
#: lists may answer a candidate a hair early (it is then checked exactly), never late.
SLACK = 1_000_000


class _Sorted:
    """A sorted list of ``(time, key)`` with exact removal."""

    __slots__ = ("items",)

    def __init__(self, items: Iterable[tuple[int, Key]] = ()) -> None:
        self.items = sorted(items)

    def add(self, item: tuple[int, Key]) -> None:
        insort(self.items, item)

    def remove(self, item: tuple[int, Key]) -> None:
        at = bisect_left(self.items, item)
        if at < len(self.items) and self.items[at] == item:
            del self.items[at]

    def upto(self, time: int) -> int:
        """How many entries have a time at or before *time*."""
        return bisect_right(self.items, (time, ("\U0010ffff", "\U0010ffff")))


class Due:
    """The sorted times of one `State` (built on first use, then kept by `touch_*`)."""

    __slots__ = ("agents", "gaps", "keys", "leases", "parked", "parked_for", "progress")

    def __init__(
        self, agents: dict[str, AgentRecord], claims: dict[str, dict[str, LeaseRecord]]
    ) -> None:
        #: The entries each record has now: agent -> (progress, gap, expiry); lease -> expiry.
        self.keys: dict[Key, tuple[int | None, int | None, int]] = {}
        #: Rows left out of the expiry lists while their time is the one confirmed expired.
        self.parked: dict[Key, int] = {}
        self.parked_for: object = None
        progress, gaps, expiries = [], [], []
        for name, agent in agents.items():
            entry = _agent_entry(agent)
            self.keys[(name, "")] = entry
            if entry[0] is not None and entry[1] is not None:
                progress.append((entry[0], (name, "")))
                gaps.append((entry[1], (name, "")))
            expiries.append((entry[2], (name, "")))
        self.progress = _Sorted(progress)
        self.gaps = _Sorted(gaps)
        self.agents = _Sorted(expiries)
        leases = []
        for text, holders in claims.items():
            for name, lease in holders.items():
                key = (name, text)
                self.keys[key] = (None, None, lease["expires"])
                leases.append((lease["expires"], key))
        self.leases = _Sorted(leases)

    # Keeping the lists ------------------------------------------------------------------

    def touch_agent(self, name: str, agent: AgentRecord | None) -> None:
        """Take *agent*'s times as they are now (None: it is gone)."""
        key = (name, "")
        old = self.keys.get(key)
        new = _agent_entry(agent) if agent is not None else None
        if old == new:
            return
        if old is not None:
            if old[0] is not None and old[1] is not None:
                self.progress.remove((old[0], key))
                self.gaps.remove((old[1], key))
            self._unlist(self.agents, key, old[2])
        if new is None:
            del self.keys[key]
            return
        self.keys[key] = new
        if new[0] is not None and new[1] is not None:
            self.progress.add((new[0], key))
            self.gaps.add((new[1], key))
        self._list(self.agents, key, new[2])

    def touch_lease(self, key: Key, lease: LeaseRecord | None) -> None:
        """Take the expiry of the lease *key* as it is now (None: it is gone)."""
        old = self.keys.get(key)
        expiry = lease["expires"] if lease is not None else None
        if old is not None and old[2] == expiry:
            return
        if old is not None:
            self._unlist(self.leases, key, old[2])
        if expiry is None:
            self.keys.pop(key, None)
            return
        self.keys[key] = (None, None, expiry)
        self._list(self.leases, key, expiry)

    def _unlist(self, entries: _Sorted, key: Key, time: int) -> None:
        if self.parked.get(key) == time:
            del self.parked[key]
        else:
            entries.remove((time, key))

    def _list(self, entries: _Sorted, key: Key, time: int) -> None:
        self.parked.pop(key, None)
        entries.add((time, key))

    # Asking -----------------------------------------------------------------------------

    def stuck_candidates(self, mono: int, stuck_after_ns: int) -> list[str]:
        """A superset of the agents that may be stuck at *mono* (idle for *stuck_after_ns*
        and live), of those not yet told for their current stretch."""
        idle = self.progress.upto(mono - stuck_after_ns + SLACK)
        wide = len(self.gaps.items) - self.gaps.upto(stuck_after_ns - SLACK - 1)
        if idle <= wide:
            chosen = self.progress.items[:idle]
        else:
            chosen = self.gaps.items[len(self.gaps.items) - wide :]
        return [key[0] for _, key in chosen]

    def expiring(self, before: int, confirmed: dict[Key, int]) -> list[Key]:
        """The agents and leases whose time is at or before *before*, but for those
        *confirmed* expired at that very time (which this leaves out of the lists until the
        time changes: a confirmed row stays expired whatever *before* is asked later)."""
        if self.parked_for is not confirmed:
            for key, time in self.parked.items():
                (self.agents if key[1] == "" else self.leases).add((time, key))
            self.parked = {}
            self.parked_for = confirmed
        found: list[Key] = []
        for entries in (self.agents, self.leases):
            end = entries.upto(before)
            kept: list[tuple[int, Key]] = []
            for time, key in entries.items[:end]:
                if confirmed.get(key) == time:
                    self.parked[key] = time
                else:
                    kept.append((time, key))
                    found.append(key)
            if len(kept) < end:
                entries.items[:end] = kept
        return found


def _agent_entry(agent: AgentRecord) -> tuple[int | None, int | None, int]:
    """An agent's (progress, gap, expiry); progress and gap are None once it was told it is
    stuck for its current stretch (no new notice until it progresses)."""
    expiry = agent_expiry(agent)
    if told(agent):
        return None, None, expiry
    progress = progress_of(agent)
    return progress, expiry - progress, expiry


def ttl_ns(ttl: float) -> int:
    """A ttl in seconds as monotonic nanoseconds."""
    return int(ttl * NS)


def agent_expiry(agent: AgentRecord) -> int:
    """When *agent* turns stale (`dibs.core.rules.agent_status`): last seen + its ttl."""
    return int(agent["seen"]) + ttl_ns(agent["ttl"])


def progress_of(agent: AgentRecord) -> int:
    """When *agent* last made progress (`dibs.core.rules.idle_for`)."""
    return agent.get("progress", agent["seen"])


def told(agent: AgentRecord) -> bool:
    """Whether *agent* was told it is stuck for its current stretch without progress."""
    return agent.get("stuck", -1) == agent.get("progress", 0)
