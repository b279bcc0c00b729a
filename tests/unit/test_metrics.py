"""Metrics from a hand-built log whose answers are known."""

from __future__ import annotations

from typing import Any

import pytest

from dibs.core.events import new_event
from dibs.ground.errors import UsageError
from dibs.ground.now import Now, iso_time
from dibs.integrations.metrics import compute, parse_duration, percentile

T0 = 1_800_000_000.0  # wall seconds of the first event
S = 10**9


class Log:
    """Events at chosen seconds after T0, numbered in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def at(self, second: float, op: str, **fields: Any) -> None:
        now = Now("boot-a", int(second * S), T0 + second)
        event = new_event(op, now, **fields)
        event["seq"] = len(self.events) + 1
        self.events.append(event)


@pytest.fixture
def log() -> Log:
    log = Log()
    log.at(0, "register", agent="a1")
    log.at(0, "register", agent="a2")
    log.at(1, "acquire", agent="a1", resource="issue:1", token=1, mode="exclusive")
    log.at(2, "refuse", agent="a2", resource="issue:1", mode="exclusive", by="a1")
    # a2 waits 3 s, then gets issue:1 and a path in one transaction (one call, two leases)
    log.at(11, "release", agent="a1", resource="issue:1", token=1)
    log.at(12, "acquire", agent="a2", resource="issue:1", token=2, waited=3.0, txn=[6, 2])
    log.at(12, "acquire", agent="a2", resource="path:src/**", token=3, waited=3.0, txn=[6, 2])
    log.at(13, "acquire", agent="a1", resource="lock:deploy", token=4, waited=0.5)
    log.at(42, "auto-evict", agent="a2", resource="issue:1", token=2, reason="holder-dead")
    log.at(43, "force-evict", agent="a2", resource="path:src/**", token=3, by="ops", reason="x")
    log.at(50, "refuse", agent="a2", resource="lock:deploy", mode="exclusive", by="a1")
    log.at(60, "unregister", agent="a1")
    log.at(70, "record", table="pool", key="1", value={"slot": "1", "path": "p/1"})
    log.at(71, "acquire", agent="a2", resource="worktree:1", token=5)
    log.at(71, "record", table="pool", key="1", value={"slot": "1", "agent": "a2", "waited": 0.25})
    log.at(81, "release", agent="a2", resource="worktree:1", token=5)
    log.at(90, "land-done", agent="a2", table="queue", key="q1", value={"seconds": 4.0})
    log.at(95, "land-fail", agent="a2", table="queue", key="q2", value={"gate": "tests"})
    log.at(96, "land-fail", agent="a2", table="queue", key="q3", value={"files": ["a.py"]})
    log.at(100, "land-fail", agent="a2", table="queue", key="q4", value={"lease_lost": True})
    return log


def test_claims_refusals_waits_and_holds(log: Log) -> None:
    m = compute(log.events)
    claims = m["claims"]
    assert 5 == claims["acquisitions"]
    assert 4 == claims["claim_calls"]  # the two-lease transaction is one call
    assert 2 == claims["refusals"]
    assert 2 / 6 == pytest.approx(claims["conflict_rate"], abs=1e-4)
    waits = claims["wait_seconds"]  # per call: 3.0 (the two-lease call) and 0.5 (the lock)
    assert (2, 0.5, 3.0) == (waits["count"], waits["p50"], waits["p99"])
    assert 0.5 == claims["lock_wait_seconds"]["p50"]
    # holds: issue:1 by a1 10 s, issue:1 by a2 30 s, path 31 s, worktree:1 10 s
    assert 4 == claims["hold_seconds"]["count"]
    assert 81.0 == pytest.approx(claims["hold_seconds"]["sum"])
    assert 10.0 == claims["hold_seconds"]["p50"]
    assert 31.0 == claims["hold_seconds"]["max"]
    assert 1 == claims["open_leases"]  # lock:deploy is still held
    assert {"acquisitions": 1, "refusals": 1} == claims["by_kind"]["lock"]


def test_evictions_agents_pool_and_queue(log: Log) -> None:
    m = compute(log.events)
    assert {"forced": 1, "holder-dead": 1} == m["evictions"]["by_reason"]
    assert 0.2 == m["evictions"]["crash_rate"]  # 1 of 5 leases died with its holder
    assert 0.0 == m["evictions"]["stale_rate"]
    assert 60.0 == m["agents"]["uptime_seconds"]["p50"]
    a2 = m["agents"]["activity"]["a2"]
    assert (3, 2, 2, 1) == (a2["acquired"], a2["refused"], a2["evicted"], a2["landed"])
    assert 1 == m["pool"]["slots"]
    assert 0.25 == m["pool"]["allocation_seconds"]["p50"]
    assert 10 / 100 == pytest.approx(m["pool"]["utilization"])  # 10 s of 1 slot over 100 s
    queue = m["queue"]
    assert (1, 3, 0.75) == (queue["landed"], queue["failed"], queue["failure_rate"])
    assert {"conflict": 1, "gate:tests": 1, "lease-lost": 1} == queue["failed_by"]
    assert 1 == queue["merge_conflicts"]
    assert 100.0 == m["period_seconds"]
    assert 36.0 == queue["landings_per_hour"]


def test_since_keeps_only_the_later_events(log: Log) -> None:
    since = log.events[9]["wall"]  # the force-evict at 43 s
    m = compute(log.events, since=since)
    assert 1 == m["claims"]["acquisitions"]  # worktree:1 only
    assert {"forced": 1} == m["evictions"]["by_reason"]
    assert 1 == m["claims"]["refusals"]


def test_series_has_fixed_points_and_counts_everything(log: Log) -> None:
    series = compute(log.events)["series"]
    assert 30 == len(series)
    assert 5 == sum(p["acquired"] for p in series)
    assert 2 == sum(p["refused"] for p in series)


def test_empty_log() -> None:
    m = compute([])
    assert 0 == m["claims"]["acquisitions"]
    assert 0.0 == m["claims"]["conflict_rate"]
    assert [] == m["series"]


def test_durations_and_percentiles() -> None:
    assert 90 == parse_duration("90s")
    assert 900 == parse_duration("15m")
    assert 7200 == parse_duration("2h")
    assert 7 * 86400 == parse_duration("7d")
    assert 5 == parse_duration("5")
    for bad in ("", "h", "-1h", "2y", "0m"):
        with pytest.raises(UsageError, match="is not a duration"):
            parse_duration(bad)
    assert percentile([], 50) is None
    assert 2 == percentile([3, 1, 2], 50)
    assert 100 == percentile(list(range(1, 101)), 99) + 1


def test_a_wait_that_timed_out_counts_in_the_wait_times() -> None:
    """A --wait call refused when its wait ran out waited too: its seconds are in the figures."""
    log = Log()
    log.at(0, "acquire", agent="a1", resource="lock:deploy", token=1)
    log.at(5, "refuse", agent="a2", resource="lock:deploy", mode="exclusive", by="a1", waited=5.0)
    log.at(6, "refuse", agent="a3", resource="issue:9", mode="exclusive", by="a1")  # no wait
    log.at(7, "release", agent="a1", resource="lock:deploy", token=1)
    log.at(8, "acquire", agent="a2", resource="lock:deploy", token=2, waited=1.0)
    claims = compute(log.events)["claims"]
    assert (2, 6.0, 1) == (
        claims["wait_seconds"]["count"],
        claims["wait_seconds"]["sum"],
        claims["wait_timeouts"],
    )
    assert (2, 5.0) == (claims["lock_wait_seconds"]["count"], claims["lock_wait_seconds"]["max"])
    assert 2 == claims["refusals"]


def test_a_slot_taken_now_counts_as_used() -> None:
    """A pool slot still taken at the end of the period is busy, not 0% used."""
    log = Log()
    log.at(0, "record", table="pool", key="1", value={"slot": "1", "path": "p/1"})
    log.at(0, "record", table="pool", key="2", value={"slot": "2", "path": "p/2"})
    log.at(0, "acquire", agent="a1", resource="worktree:1", token=1)
    log.at(50, "register", agent="a2")
    pool = compute(log.events, now_wall=T0 + 100)["pool"]
    assert 2 == pool["slots"]
    assert 0.5 == pytest.approx(pool["utilization"])  # one of two slots, the whole 100 s


def test_a_cancelled_landing_is_counted_apart() -> None:
    """`dibs queue cancel` is neither landed nor failed."""
    log = Log()
    log.at(0, "land-cancel", agent="a1", table="queue", key="q1", value={"state": "cancelled"})
    queue = compute(log.events)["queue"]
    assert (0, 0, 1) == (queue["landed"], queue["failed"], queue["cancelled"])


def test_hot_spots_name_the_glob_that_refused(log: Log) -> None:
    """Refusals count against the held glob that blocked them, waits against what was asked."""
    log.at(101, "acquire", agent="a1", resource="path:src/api/**", token=6)
    for second, wanted in ((102, "users.py"), (103, "orders.py")):
        log.at(second, "refuse", agent="a2", resource=f"path:src/api/{wanted}", by="a1")
    log.at(104, "refuse", agent="a2", resource="path:src/api/x.py", by="a1", waited=2.0)
    spots = compute(log.events)["hotspots"]
    assert {"resource": "path:src/api/**", "refusals": 3, "waited_seconds": 2.0} == spots[0]
    by_name = {spot["resource"]: spot for spot in spots}
    assert (1, 3.0) == (by_name["issue:1"]["refusals"], by_name["issue:1"]["waited_seconds"])
    assert (1, 0.5) == (
        by_name["lock:deploy"]["refusals"],
        by_name["lock:deploy"]["waited_seconds"],
    )


def test_landing_history_newest_first_with_reason_gate_and_duration() -> None:
    """Each entry that left the queue, from the log: outcome, reason, gate, exit, seconds."""
    log = Log()
    entry = {"branch": "agent/A-1", "issue": "A-1", "agent": "a1"}
    log.at(0, "land-done", key="q1", value={**entry, "state": "landed", "seconds": 4.5})
    failed = {"state": "failed", "reason": "gate tests failed", "gate": "tests", "exit": 1}
    log.at(9, "land-fail", key="q2", value={**entry, **failed, "seconds": 61.0})
    log.at(10, "land-cancel", key="q3", value={**entry, "state": "cancelled"})
    rows = compute(log.events)["landings"]
    assert ["q3", "q2", "q1"] == [row["id"] for row in rows]
    assert ("cancelled", "failed", "landed") == tuple(row["outcome"] for row in rows)
    assert ("gate tests failed", "tests", 1, 61.0) == tuple(
        rows[1][name] for name in ("reason", "gate", "exit", "seconds")
    )
    assert ("agent/A-1", 4.5) == (rows[2]["branch"], rows[2]["seconds"])


def test_each_agent_has_a_timeline_of_holds_waits_refusals_and_landings(log: Log) -> None:
    """What a2 did, as marks with their times; the lease a1 still holds has no end."""
    timeline = compute(log.events)["timeline"]
    at = {second: log.events[n]["wall"] for n, second in ((2, 1), (3, 2), (4, 11), (5, 12))}
    a2 = [(m["kind"], m["what"]) for m in timeline["a2"]]
    assert a2[:3] == [
        ("refused", "issue:1"),
        ("waited", "issue:1"),
        ("held", "issue:1"),
    ]
    assert {"kind": "refused", "what": "issue:1", "at": at[2]} == timeline["a2"][0]
    assert ("landed", "q1") in a2
    assert ("failed", "q2") in a2
    waited = timeline["a2"][1]
    assert (iso_time(T0 + 9), at[12]) == (waited["from"], waited["to"])  # 3 s before 12 s
    assert {"kind": "held", "what": "issue:1", "from": at[1], "to": at[11]} == timeline["a1"][0]
    assert {"kind": "held", "what": "lock:deploy", "to": None} == {
        k: v for k, v in timeline["a1"][-1].items() if k != "from"
    }


def test_a_returned_entry_is_its_own_outcome_with_its_paths(log: Log) -> None:
    """An entry the queue sent back without a gate run (its ``state`` says ``returned``) is
    neither landed nor failed: the history shows it with the paths it conflicts on."""
    log.at(101, "land-fail", agent="a2", table="queue", key="q5", value={
        "state": "returned", "branch": "agent/X-1", "files": ["src/a.py", "src/b.py"],
        "reason": "conflicts with main in src/a.py, src/b.py",
    })  # fmt: skip
    log.at(102, "land-return", agent="a2", table="queue", key="q6", value={"files": ["c.py"]})
    queue = compute(log.events)["queue"]
    assert (queue["landed"], queue["failed"], queue["returned"]) == (1, 3, 2)
    newest = compute(log.events)["landings"][:2]
    assert [row["outcome"] for row in newest] == ["returned", "returned"]
    assert newest[0]["files"] == ["c.py"]
    assert newest[1]["files"] == ["src/a.py", "src/b.py"]
    assert newest[1]["reason"] == "conflicts with main in src/a.py, src/b.py"
    assert newest[1]["branch"] == "agent/X-1"


def test_stuck_periods_run_from_the_last_progress_to_the_next() -> None:
    """A ``stuck`` event opens a period from its ``since`` (the agent's last progress);
    heartbeats and renewals do not end it, the agent's next claim does; one still open at
    the end has no ``to``, and an agent's many holds do not push its periods out."""
    log = Log()
    log.at(0, "register", agent="s1")
    log.at(0, "register", agent="s2")
    log.at(10, "stuck", agent="s1", details={"idle": 50.0, "since": iso_time(T0)})
    log.at(20, "heartbeat", agent="s1")
    log.at(30, "acquire", agent="s1", resource="issue:9", token=1, mode="exclusive")
    for n in range(20):
        log.at(40 + n, "acquire", agent="s2", resource=f"issue:h{n}", token=2 + n)
    log.at(70, "stuck", agent="s2", details={"idle": 10.0, "since": iso_time(T0 + 60)})
    log.at(80, "renew", agent="s2", resource="issue:h0", token=2)
    timeline = compute(log.events)["timeline"]
    s1 = [m for m in timeline["s1"] if m["kind"] == "stuck"]
    assert s1 == [{"kind": "stuck", "what": None, "from": iso_time(T0), "to": iso_time(T0 + 30)}]
    s2 = [m for m in timeline["s2"] if m["kind"] == "stuck"]
    assert s2 == [{"kind": "stuck", "what": None, "from": iso_time(T0 + 60), "to": None}]
