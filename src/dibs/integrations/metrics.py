"""Coordination figures computed from the event log alone.

Because they need nothing but events, they work on every store and for any past period:
acquisitions and refusals (the conflict rate), how long ``--wait`` claims waited, how long
leases were held, evictions by reason (the crash and stale rates), pool utilisation and
allocation latency, queue throughput and failures by gate, and each agent's activity.

Pure: `compute` takes events and returns plain data. Durations use the monotonic ``mono``
readings when both ends share a ``boot``, else the wall times.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import deque
from datetime import UTC

from dibs.core.state import NOT_PROGRESS
from dibs.ground.now import iso_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from dibs.core.events import Event

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: The longest ``--since``: ten years (520 weeks).
MAX_DURATION = 520 * _UNITS["w"]
#: Bucket bounds (seconds) of the histograms /metrics exports.
BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400)
#: Points in the time series the dashboard charts.
SERIES_POINTS = 30
#: Eviction reasons every report names (0 when none happened), so a rate over them exists
#: from the first scrape; a person's own words for ``dibs evict`` count as ``forced``.
EVICT_REASONS = ("expired", "forced", "holder-dead", "rebooted", "replaced", "unregistered")
#: Rows of the landing history and of the hot spots a report keeps.
LANDINGS_KEPT = 50
HOTSPOTS_KEPT = 10
#: Marks (holds, waits, refusals, landings) of each agent's timeline a report keeps.
TIMELINE_KEPT = 12
#: Queue events that finish an entry, and the outcomes `landing` reads from them: a
#: *returned* entry was sent back without a gate run (it cannot merge: its conflicting paths).
LANDING_OPS = ("land-done", "land-fail", "land-cancel", "land-return")
LANDING_OUTCOMES = ("landed", "failed", "returned", "cancelled")
_OUTCOME_OF_OP = dict(zip(LANDING_OPS, ("landed", "failed", "cancelled", "returned"), strict=True))
#: What a landing row keeps of its entry: why it failed (``gate``, ``exit``, ``reason``), the
#: conflicting ``files`` of a returned one, how long it took.
LANDING_FIELDS = (
    "branch",
    "issue",
    "agent",
    "reason",
    "gate",
    "exit",
    "files",
    "seconds",
    "commit",
)
#: Stuck periods of each agent's timeline a report keeps (besides `TIMELINE_KEPT` marks).
STUCK_KEPT = 4
#: Causes of a failed landing besides ``gate:NAME`` (one per configured gate).
FAIL_CAUSES = ("conflict", "lease-lost", "other")


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``15m``, ``2h``, ``7d``, ``1w`` (or a bare number of seconds).

    At most `MAX_DURATION`: a longer one would reach before 1970 (and past what a clock can
    represent), which no log does.
    """
    pattern = r"\s*([0-9]{1,15}(?:\.[0-9]{1,9})?)\s*([smhdw]?)\s*"
    match = re.fullmatch(pattern, text) if isinstance(text, str) else None
    seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"] if match else 0.0
    if not 0 < seconds <= MAX_DURATION:
        from dibs.ground.errors import UsageError, shown

        raise UsageError(
            f"{shown(text)} is not a duration of more than 0 and at most "
            f"{MAX_DURATION // _UNITS['w']}w (ten years)",
            hint="e.g. 90s, 15m, 2h, 7d",
        )
    return seconds


def percentile(values: list[float], q: float) -> float | None:
    """The *q*-th percentile (0-100) by nearest rank; None without values."""
    return _ranked(sorted(values), q)


def _ranked(ordered: list[float], q: float) -> float | None:
    """`percentile` of values already sorted."""
    if not ordered:
        return None
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def _summary(values: list[float]) -> dict[str, Any]:
    """Count, sum, p50, p99, max and the histogram; sorted once, each bucket by bisection."""
    ordered = sorted(values)
    return {
        "count": len(values),
        "sum": round(sum(values), 6),
        "p50": _ranked(ordered, 50),
        "p99": _ranked(ordered, 99),
        "max": ordered[-1] if ordered else None,
        "buckets": [bisect_right(ordered, bound) for bound in BUCKETS],
    }


_minutes: dict[str, float] = {}


def _wall_seconds(iso: str) -> float:
    """Unix seconds of ``2026-11-23T10:00:00.123Z``: the minute parsed once and cached (a
    day of events spans 1,440 of them), seconds and milliseconds read as digits."""
    minute = iso[:16]
    base = _minutes.get(minute)
    if base is None:
        from datetime import datetime

        base = datetime.fromisoformat(minute).replace(tzinfo=UTC).timestamp()
        if len(_minutes) > 100_000:
            _minutes.clear()
        _minutes[minute] = base
    fraction = iso[20:23] if len(iso) >= 23 and iso[19] == "." else "0"
    return base + int(iso[17:19]) + int(fraction) / 1000


def landing(event: Event) -> dict[str, Any]:
    """The landing history's row for a queue event that finished an entry: ``id``,
    ``outcome``, ``at`` and those of `LANDING_FIELDS` it has.

    The only reader of those events: the outcome is the entry's ``state`` when the event
    names one of `LANDING_OUTCOMES` (a new outcome the queue writes shows as it says), else
    what its op means.
    """
    value: dict[str, Any] = event.get("value") or {}
    outcome = value.get("state")
    if outcome not in LANDING_OUTCOMES:
        outcome = _OUTCOME_OF_OP.get(event["op"], "cancelled")
    row: dict[str, Any] = {"id": event.get("key"), "outcome": outcome, "at": event["wall"]}
    for name in LANDING_FIELDS:
        if value.get(name) is not None:
            row[name] = value[name]
    return row


def _nested(a: str, b: str) -> bool:
    """Whether folder *a* is *b*, inside it or holds it ("" is the root): the only way two
    path claims under those literal prefixes can cover a common file."""
    if len(a) > len(b):
        a, b = b, a
    return not a or b == a or b.startswith(a + "/")


def _between(start: Event, end: Event) -> float:
    if start["boot"] == end["boot"]:
        return max(0.0, (end["mono"] - start["mono"]) / 1e9)
    return max(0.0, _wall_seconds(end["wall"]) - _wall_seconds(start["wall"]))


class _Tally:
    """One pass over the events, keeping what the figures need."""

    def __init__(self) -> None:
        self.first: Event | None = None
        self.last: Event | None = None
        self.calls = 0  # claim calls granted (one txn may grant several resources)
        self.acquired = 0
        self.refused = 0
        self.refused_by_kind: dict[str, int] = {}
        self.acquired_by_kind: dict[str, int] = {}
        self.waits: list[float] = []
        self.lock_waits: list[float] = []
        self.holds: list[float] = []
        self.open: dict[tuple[str, int], Event] = {}
        self.evictions: dict[str, int] = {}
        self.registered = 0
        self.uptimes: list[float] = []
        self.sessions: dict[str, Event] = {}
        self.agents: dict[str, dict[str, int]] = {}
        self.pool_waits: list[float] = []
        self.pool_slots: set[str] = set()
        self.pool_busy = 0.0
        self.landed = 0
        self.failed = 0
        self.failed_by: dict[str, int] = {}
        self.cancelled = 0
        self.returned = 0
        self.stuck: dict[str, str] = {}  # agent -> wall time its stuck period began
        self.stuck_periods: dict[str, deque[tuple[str, Any, str, str | None]]] = {}
        self.wait_timeouts = 0
        self.landings: deque[dict[str, Any]] = deque(maxlen=LANDINGS_KEPT)
        self.spots: dict[str, list[float]] = {}  # resource -> [refusals, seconds waited]
        self.held_by: dict[str, set[tuple[str, int]]] = {}
        self.parsed: dict[str, Any] = {}
        self.prefixes: dict[str, str] = {}
        self.marks: dict[str, deque[tuple[str, Any, str, str | None]]] = {}
        self.merge_conflicts = 0
        self.flaky: dict[str, int] = {}  # gate -> landings where it failed, then passed
        self.cached_failures = 0  # failures answered by the failure cache (no gate run)
        self.land_seconds: list[float] = []
        self.timeline: list[tuple[str, str, float | None]] = []
        self._txn = -1

    def agent(self, name: str | None, what: str) -> None:
        if name:
            row = self.agents.setdefault(name, {})
            row[what] = row.get(what, 0) + 1

    def add(self, event: Event) -> None:
        if self.first is None:
            self.first = event
        self.last = event
        op = event["op"]
        if self.stuck and op not in NOT_PROGRESS and event.get("agent") in self.stuck:
            since = self.stuck.pop(event["agent"])
            self._stuck_period(event["agent"], since, event["wall"])
        if op == "acquire":
            self._acquire(event)
        elif op in ("release", "auto-evict", "force-evict"):
            self._end(event)
        elif op == "refuse":
            self._refuse(event)
        elif op == "register":
            self.registered += 1
            self.sessions[event["agent"]] = event
            self.agent(event["agent"], "registered")
        elif op == "unregister":
            started = self.sessions.pop(event["agent"], None)
            if started is not None:
                self.uptimes.append(_between(started, event))
        elif op in LANDING_OPS:
            self._finished(event)
        elif op == "stuck":
            self._stuck(event)
        elif op == "record" and event.get("table") == "pool":
            self._pool(event)

    def _acquire(self, event: Event) -> None:
        self.acquired += 1
        resource = event["resource"]
        kind = resource.split(":", 1)[0]
        self.acquired_by_kind[kind] = self.acquired_by_kind.get(kind, 0) + 1
        txn = event.get("txn")
        first = txn[0] if txn else event["seq"]
        if first != self._txn:
            self._txn = first
            self.calls += 1
            if "waited" in event:
                self.waits.append(float(event["waited"]))
                self._spot(resource, 0, float(event["waited"]))
                waited_from = iso_time(_wall_seconds(event["wall"]) - float(event["waited"]))
                self.mark(
                    event.get("agent"),
                    ("waited", resource, waited_from, event["wall"]),
                )
                if kind == "lock":
                    self.lock_waits.append(float(event["waited"]))
        key = (resource, event["token"])
        self.open[key] = event
        held = self.held_by.get(event.get("agent", ""))
        if held is None:
            held = self.held_by[event.get("agent", "")] = set()
        held.add(key)
        self.agent(event.get("agent"), "acquired")
        self.timeline.append((event["wall"], "acquire", None))

    def _refuse(self, event: Event) -> None:
        self.refused += 1
        kind = event.get("resource", "?").split(":", 1)[0]
        self.refused_by_kind[kind] = self.refused_by_kind.get(kind, 0) + 1
        self.agent(event.get("agent"), "refused")
        self.timeline.append((event["wall"], "refuse", None))
        self.mark(
            event.get("agent"),
            ("refused", event.get("resource"), event["wall"], None),
        )
        waited = float(event.get("waited", 0.0))
        if "waited" in event:  # a --wait that ran out waited too
            self.wait_timeouts += 1
            self.waits.append(waited)
            if kind == "lock":
                self.lock_waits.append(waited)
        self._spot(self._blocker(event), 1, waited)

    def _blocker(self, event: Event) -> str:
        """The held resource (often a glob) that refused *event*, else the one asked for.

        Of the blockers' held resources that overlap the one asked for, the first in text
        order. Most of an agent's other claims lie under another folder: their literal
        prefixes (`dibs.core.resources.prefix_key`) rule them out before any glob is matched.
        """
        asked = event.get("resource", "?")
        found: str | None = None
        for agent in str(event.get("by", "")).split(","):
            for resource, _token in self.held_by.get(agent, ()):
                if (found is None or resource < found) and self._meets(asked, resource):
                    found = resource
        return asked if found is None else found

    def _meets(self, asked: str, held: str) -> bool:
        """Whether claims on *asked* and *held* (resource texts) overlap."""
        kind = asked.split(":", 1)[0]
        if kind != held.split(":", 1)[0]:
            return False
        if kind == "path" and not _nested(self._prefix(asked), self._prefix(held)):
            return False
        wanted, parsed = self._parsed(asked), self._parsed(held)
        if wanted is None or parsed is None:
            return False
        from dibs.core.resources import overlaps

        return overlaps(parsed, wanted)

    def _prefix(self, text: str) -> str:
        found = self.prefixes.get(text)
        if found is None:
            from dibs.core.resources import prefix_key

            found = self.prefixes[text] = prefix_key(text)
        return found

    def _parsed(self, text: str) -> Any:
        """*text* as a Resource (parsed once), or None: the edit guard may name no resource."""
        if text not in self.parsed:
            from dibs.core.resources import parse_resource
            from dibs.ground.errors import DibsError

            try:
                self.parsed[text] = parse_resource(text)
            except DibsError:
                self.parsed[text] = None
        return self.parsed[text]

    def _spot(self, resource: str, refusals: int, waited: float) -> None:
        spot = self.spots.setdefault(resource, [0, 0.0])
        spot[0] += refusals
        spot[1] += waited

    def mark(self, agent: str | None, row: tuple[str, Any, str, str | None]) -> None:
        """(kind, what, from or at, to): a tuple, as most leases end and few are shown."""
        if agent:
            marks = self.marks.get(agent)
            if marks is None:
                marks = self.marks[agent] = deque(maxlen=TIMELINE_KEPT)
            marks.append(row)

    def _finished(self, event: Event) -> None:
        """A queue entry that landed, failed, was returned or was cancelled."""
        row = landing(event)
        outcome = row["outcome"]
        if outcome == "landed":
            self.landed += 1
            self.land_seconds.append(float(row.get("seconds") or 0.0))
            self.agent(event.get("agent"), "landed")
            for gate in (event.get("value") or {}).get("flaky") or ():
                self.flaky[gate] = self.flaky.get(gate, 0) + 1
        elif outcome == "failed":
            self._land_failed(event)
        elif outcome == "returned":
            self.returned += 1
            self.agent(event.get("agent"), "returned")
        else:
            self.cancelled += 1
        self.landings.append(row)
        self.mark(row.get("agent") or event.get("agent"), (outcome, row["id"], row["at"], None))

    def _stuck_period(self, agent: str, start: str, end: str | None) -> None:
        """Kept apart from the other marks: a busy agent's holds would push them out."""
        periods = self.stuck_periods.get(agent)
        if periods is None:
            periods = self.stuck_periods[agent] = deque(maxlen=STUCK_KEPT)
        periods.append(("stuck", None, start, end))

    def _stuck(self, event: Event) -> None:
        """An agent found stuck: a period from its last progress until its next."""
        agent = event.get("agent")
        if agent and agent not in self.stuck:
            since = (event.get("details") or {}).get("since")
            self.stuck[agent] = since if isinstance(since, str) else event["wall"]

    def _end(self, event: Event) -> None:
        op = event["op"]
        key = (event.get("resource", ""), event.get("token", -1))
        started = self.open.pop(key, None)
        if started is not None:
            self.held_by.get(started.get("agent", ""), set()).discard(key)
            self.mark(
                started.get("agent"),
                ("held", key[0], started["wall"], event["wall"]),
            )
            held = _between(started, event)
            self.holds.append(held)
            self.timeline.append((event["wall"], "hold", held))
            if started["resource"].startswith("worktree:"):
                self.pool_busy += held
        if op == "release":
            self.agent(event.get("agent"), "released")
            return
        reason = "forced" if op == "force-evict" else str(event.get("reason", "unknown"))
        if op == "force-evict" and event.get("by") == "doctor":
            reason = str(event.get("reason", "forced"))
        self.evictions[reason] = self.evictions.get(reason, 0) + 1
        self.agent(event.get("agent"), "evicted")

    def _land_failed(self, event: Event) -> None:
        self.failed += 1
        value: dict[str, Any] = event.get("value") or {}
        if value.get("cached"):
            self.cached_failures += 1
        if value.get("gate"):
            why = f"gate:{value['gate']}"
        elif value.get("files"):
            why = "conflict"
            self.merge_conflicts += 1
        elif value.get("lease_lost"):
            why = "lease-lost"
        else:
            why = "other"
        self.failed_by[why] = self.failed_by.get(why, 0) + 1
        self.agent(event.get("agent"), "land_failed")

    def _pool(self, event: Event) -> None:
        self.pool_slots.add(str(event["key"]))
        value = event.get("value") or {}
        if "waited" in value and value.get("agent"):
            self.pool_waits.append(float(value["waited"]))


def compute(
    events: Iterable[Event], *, since: str | None = None, now_wall: float | None = None
) -> dict[str, Any]:
    """Every figure, over the events whose wall time is at or after *since* (ISO text).

    Leases still open at the end of the period count in ``open_leases``, not in hold times.
    """
    tally = _Tally()
    for event in events:
        if since is None or event["wall"] >= since:
            tally.add(event)
    period = 0.0
    if tally.first is not None and tally.last is not None:
        end_wall = now_wall if now_wall is not None else _wall_seconds(tally.last["wall"])
        period = max(0.0, end_wall - _wall_seconds(tally.first["wall"]))
        # a slot taken now is busy up to the end of the period, not idle
        tally.pool_busy += sum(
            max(0.0, end_wall - _wall_seconds(started["wall"]))
            for (resource, _token), started in tally.open.items()
            if resource.startswith("worktree:")
        )
    attempts = tally.calls + tally.refused
    total_evictions = sum(tally.evictions.values())
    landings = tally.landed + tally.failed
    slots = len(tally.pool_slots)
    return {
        "since": since or (tally.first["wall"] if tally.first else None),
        "until": iso_time(now_wall)
        if now_wall is not None
        else (tally.last["wall"] if tally.last else None),
        "period_seconds": round(period, 3),
        "events": 0
        if tally.last is None or tally.first is None
        else tally.last["seq"] - tally.first["seq"] + 1,
        "claims": {
            "acquisitions": tally.acquired,
            "claim_calls": tally.calls,
            "refusals": tally.refused,
            "conflict_rate": round(tally.refused / attempts, 4) if attempts else 0.0,
            "by_kind": {
                kind: {
                    "acquisitions": tally.acquired_by_kind.get(kind, 0),
                    "refusals": tally.refused_by_kind.get(kind, 0),
                }
                for kind in sorted(set(tally.acquired_by_kind) | set(tally.refused_by_kind))
            },
            "wait_seconds": _summary(tally.waits),
            "wait_timeouts": tally.wait_timeouts,
            "lock_wait_seconds": _summary(tally.lock_waits),
            "hold_seconds": _summary(tally.holds),
            "open_leases": len(tally.open),
        },
        "evictions": {
            "by_reason": dict(sorted(tally.evictions.items())),
            "total": total_evictions,
            "crash_rate": round(tally.evictions.get("holder-dead", 0) / tally.acquired, 4)
            if tally.acquired
            else 0.0,
            "stale_rate": round(tally.evictions.get("expired", 0) / tally.acquired, 4)
            if tally.acquired
            else 0.0,
        },
        "agents": {
            "registered": tally.registered,
            "uptime_seconds": _summary(tally.uptimes),
            "activity": {name: tally.agents[name] for name in sorted(tally.agents)},
        },
        "pool": {
            "slots": slots,
            "utilization": round(tally.pool_busy / (slots * period), 4)
            if slots and period
            else 0.0,
            "allocation_seconds": _summary(tally.pool_waits),
        },
        "queue": {
            "landed": tally.landed,
            "failed": tally.failed,
            "cancelled": tally.cancelled,
            "returned": tally.returned,
            "failure_rate": round(tally.failed / landings, 4) if landings else 0.0,
            "failed_by": dict(sorted(tally.failed_by.items())),
            "merge_conflicts": tally.merge_conflicts,
            "flaky": sum(tally.flaky.values()),
            "flaky_by_gate": dict(sorted(tally.flaky.items())),
            "cached_failures": tally.cached_failures,
            "landings_per_hour": round(tally.landed * 3600 / period, 2) if period else 0.0,
            "land_seconds": _summary(tally.land_seconds),
        },
        "series": _series(tally.timeline),
        "hotspots": [
            {"resource": resource, "refusals": int(spot[0]), "waited_seconds": round(spot[1], 3)}
            for resource, spot in sorted(
                tally.spots.items(), key=lambda item: (-item[1][0], -item[1][1], item[0])
            )[:HOTSPOTS_KEPT]
        ],
        "landings": list(reversed(tally.landings)),
        "timeline": _timeline(tally),
    }


def _timeline(tally: _Tally) -> dict[str, list[dict[str, Any]]]:
    """Each agent's last marks in log order, then the leases it still holds (``to``: None),
    then its last stuck periods (``to``: None while it still makes no progress)."""
    for (resource, _token), started in tally.open.items():
        tally.mark(
            started.get("agent"),
            ("held", resource, started["wall"], None),
        )
    for agent, since in tally.stuck.items():
        tally._stuck_period(agent, since, None)
    return {
        agent: [
            {"kind": kind, "what": what, "from": start, "to": end}
            if kind in ("held", "waited", "stuck")
            else {"kind": kind, "what": what, "at": start}
            for kind, what, start, end in (
                *tally.marks.get(agent, ()),
                *tally.stuck_periods.get(agent, ()),
            )
        ]
        for agent in sorted(tally.marks.keys() | tally.stuck_periods.keys())
    }


def _series(timeline: list[tuple[str, str, float | None]]) -> list[dict[str, Any]]:
    """Contention and hold times over time, in `SERIES_POINTS` equal slices, for charts."""
    if not timeline:
        return []
    start, end = _wall_seconds(timeline[0][0]), _wall_seconds(timeline[-1][0])
    width = max((end - start) / SERIES_POINTS, 1e-3)
    points: list[dict[str, Any]] = [
        {
            "at": iso_time(start + i * width),
            "acquired": 0,
            "refused": 0,
            "hold_sum": 0.0,
            "holds": 0,
        }
        for i in range(SERIES_POINTS)
    ]
    for wall, what, held in timeline:
        point = points[min(SERIES_POINTS - 1, int((_wall_seconds(wall) - start) / width))]
        if what == "acquire":
            point["acquired"] += 1
        elif what == "refuse":
            point["refused"] += 1
        elif held is not None:
            point["hold_sum"] += held
            point["holds"] += 1
    for point in points:
        holds = point.pop("holds")
        hold_sum = point.pop("hold_sum")
        point["mean_hold_seconds"] = round(hold_sum / holds, 3) if holds else None
        tried = point["acquired"] + point["refused"]
        point["conflict_rate"] = round(point["refused"] / tried, 4) if tried else 0.0
    return points


def of_store(coord: Any, *, since: str | None = None) -> dict[str, Any]:
    """`compute` over a coordinator's whole log, or the last *since* (``2h``, ``7d``...)."""
    _, now = coord.read()
    start = iso_time(max(0.0, now.wall - parse_duration(since))) if since else None
    return compute(coord.events(0), since=start, now_wall=now.wall)
