"""What falls due: the state's times in order, so that finding the agents that may be stuck
(`dibs.core.leases.stuck_events`) and the rows that may have expired
(`dibs.store.postgres.live.expiring`) costs what they find, not the size of the fleet.

Every write runs both questions; scanning every agent and lease for them made each step of a
10,000-agent fleet cost milliseconds. Two indexes keep sorted lists of ``(time, key)``, told
of every change of a record's time (by `dibs.core.state.apply`, and by `State.touch` after the
PostgreSQL store takes a time from ``dibs.live``) and lazy about it: an entry's time is at
most the record's, a time that grows leaves its entry in place until a question reaches it
(`_Lazy`). Each index is built on the first question that needs it (the local and memory
stores never ask for `Expiry`):

* `Stuck`: the agents not yet told they are stuck for their current stretch, by last
  progress. One found idle for ``stuck_after`` but with a ``gap`` (when it turns stale minus
  its last progress) below it cannot be stuck until its times change (it went stale before
  it was idle that long: an agent gone without unregistering): it is parked by gap, so such
  agents are not read on every step;
* `Expiry`: agents by when they turn stale (last seen + ttl), and leases by expiry; rows
  confirmed expired under the lock are parked while their time is the confirmed one.

The lists answer supersets; the callers check each candidate with the same rule as before,
so the answers are the naive scans' exactly (`tests/unit/test_due.py` compares both). A move
is a bisect plus a memory move of the list's tail (microseconds at 100,000 entries).

Pure: no I/O, no clock.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

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
        items = self.items
        at = bisect_left(items, item)
        if at < len(items) and items[at] == item:
            del items[at]


#: A key above every real one: an entry ``(time, _LAST)`` sorts after every entry at time.
_LAST = ("\U0010ffff", "\U0010ffff")


class _Lazy:
    """Keys listed by a time that is at most their current one.

    A record's time mostly grows (a heartbeat, a renewal, progress): its entry is then left
    where it is and moved only when a question reaches it (`upto`), so keeping the list costs
    a step almost nothing. A time that shrinks (a renewal with a shorter ttl, a decision at an
    earlier estimate of the server's clock) moves its entry at once (`note`), and a key whose
    record is gone is dropped when reached.
    """

    __slots__ = ("items", "listed")

    def __init__(self, times: dict[Key, int]) -> None:
        self.listed = times
        self.items = sorted((time, key) for key, time in times.items())

    def note(self, key: Key, time: int) -> None:
        """*key*'s time is now *time*."""
        old = self.listed.get(key)
        if old is not None and old <= time:
            return
        if old is not None:
            _remove(self.items, (old, key))
        insort(self.items, (time, key))
        self.listed[key] = time

    def forget(self, key: Key) -> None:
        old = self.listed.pop(key, None)
        if old is not None:
            _remove(self.items, (old, key))

    def upto(self, before: int, current: Callable[[Key], int | None]) -> list[tuple[int, Key]]:
        """The keys whose *current* time (None: gone) is at or before *before*, with it."""
        items = self.items
        end = bisect_right(items, (before, _LAST))
        found: list[tuple[int, Key]] = []
        later: list[tuple[int, Key]] = []
        moved = False
        for time, key in items[:end]:
            now = current(key)
            if now == time:
                found.append((time, key))
                continue
            moved = True
            if now is None:
                del self.listed[key]
            elif now <= before:
                found.append((now, key))
                self.listed[key] = now
            else:
                later.append((now, key))
                self.listed[key] = now
        if moved:
            found.sort()
            items[:end] = found
            for item in later:
                insort(items, item)
        return found


def _remove(items: list[tuple[int, Key]], item: tuple[int, Key]) -> None:
    at = bisect_left(items, item)
    if at < len(items) and items[at] == item:
        del items[at]


class Stuck:
    """The agents not yet told they are stuck for their current stretch, by last progress;
    those found idle but unable to be stuck are parked by gap (see the module docstring)."""

    __slots__ = ("agents", "gaps", "parked", "progress")

    def __init__(self, agents: dict[str, AgentRecord]) -> None:
        self.agents = agents
        times: dict[Key, int] = {}
        for name, agent in agents.items():
            progress = _progress(agent)
            if progress is not None:
                times[(name, "")] = progress
        self.progress = _Lazy(times)
        #: Parked agents: name -> (progress, gap) when parked; by gap in `gaps`.
        self.parked: dict[str, tuple[int, int]] = {}
        self.gaps = _Sorted()

    def touch(self, name: str, agent: AgentRecord | None) -> None:
        """Take *agent*'s times as they are now (None: it is gone)."""
        parked = self.parked.get(name)
        if parked is not None:
            if agent is not None and _parking(agent) == parked:
                return
            del self.parked[name]
            self.gaps.remove((parked[1], (name, "")))
            self.progress.forget((name, ""))
        if agent is not None:
            progress = _progress(agent)
            if progress is not None:
                self.progress.note((name, ""), progress)

    def _current(self, key: Key) -> int | None:
        agent = self.agents.get(key[0])
        return None if agent is None else _progress(agent)

    def candidates(
        self, agents: dict[str, AgentRecord], mono: int, stuck_after_ns: int
    ) -> list[str]:
        """A superset of the agents that may be stuck at *mono* (idle for *stuck_after_ns*
        and live), of those not yet told for their current stretch."""
        self.agents = agents
        found: list[str] = []
        for progress, key in self.progress.upto(mono - stuck_after_ns + SLACK, self._current):
            agent = agents[key[0]]
            gap = int(agent["seen"]) + int(agent["ttl"] * NS) - progress
            if gap >= stuck_after_ns - SLACK:
                found.append(key[0])
            else:
                # Stale before it was idle long enough: never stuck until its times change.
                self.progress.forget(key)
                self.parked[key[0]] = (progress, gap)
                self.gaps.add((gap, key))
        gaps = self.gaps.items
        wide = bisect_left(gaps, (stuck_after_ns - SLACK, ("", "")))
        found.extend(key[0] for _, key in gaps[wide:])
        return found


class Expiry:
    """Agents by when they turn stale and leases by expiry, but for the rows parked as
    confirmed expired (see `expiring`)."""

    __slots__ = ("agents", "claims", "leases", "parked", "parked_for", "rows")

    def __init__(
        self, agents: dict[str, AgentRecord], claims: dict[str, dict[str, LeaseRecord]]
    ) -> None:
        self.agents = agents
        self.claims = claims
        self.rows = _Lazy({(name, ""): agent_expiry(agent) for name, agent in agents.items()})
        self.leases = _Lazy(
            {
                (name, text): lease["expires"]
                for text, holders in claims.items()
                for name, lease in holders.items()
            }
        )
        #: Rows left out of the lists while their time is the one confirmed expired.
        self.parked: dict[Key, int] = {}
        self.parked_for: object = None

    def touch(self, key: Key, time: int | None) -> None:
        """Take the time of the row *key* as it is now (None: it is gone)."""
        entries = self.leases if key[1] else self.rows
        parked = self.parked.get(key)
        if parked is not None:
            if parked == time:
                return
            del self.parked[key]
        if time is not None:
            entries.note(key, time)

    def _agent(self, key: Key) -> int | None:
        agent = self.agents.get(key[0])
        return None if agent is None else agent_expiry(agent)

    def _lease(self, key: Key) -> int | None:
        lease = self.claims.get(key[1], {}).get(key[0])
        return None if lease is None else lease["expires"]

    def expiring(
        self,
        agents: dict[str, AgentRecord],
        claims: dict[str, dict[str, LeaseRecord]],
        before: int,
        confirmed: dict[Key, int],
    ) -> list[Key]:
        """The agents and leases whose time is at or before *before*, but for those
        *confirmed* expired at that very time (which this leaves out of the lists until the
        time changes: a confirmed row stays expired whatever *before* is asked later)."""
        self.agents, self.claims = agents, claims
        if self.parked_for is not confirmed:
            for key, time in self.parked.items():
                (self.leases if key[1] else self.rows).note(key, time)
            self.parked = {}
            self.parked_for = confirmed
        found: list[Key] = []
        for entries, current in ((self.rows, self._agent), (self.leases, self._lease)):
            for time, key in entries.upto(before, current):
                if confirmed.get(key) == time:
                    entries.forget(key)
                    self.parked[key] = time
                else:
                    found.append(key)
        return found


def _progress(agent: AgentRecord) -> int | None:
    """When *agent* last made progress; None once it was told it is stuck for this stretch
    (no new notice until it progresses)."""
    if agent.get("stuck", -1) == agent.get("progress", 0):
        return None
    return agent.get("progress", agent["seen"])


def _parking(agent: AgentRecord) -> tuple[int, int] | None:
    """What a parked agent was parked with: (progress, gap)."""
    progress = _progress(agent)
    if progress is None:
        return None
    return progress, int(agent["seen"]) + int(agent["ttl"] * NS) - progress


def ttl_ns(ttl: float) -> int:
    """A ttl in seconds as monotonic nanoseconds."""
    return int(ttl * NS)


def agent_expiry(agent: AgentRecord) -> int:
    """When *agent* turns stale (`dibs.core.rules.agent_status`): last seen + its ttl."""
    return int(agent["seen"]) + ttl_ns(agent["ttl"])
