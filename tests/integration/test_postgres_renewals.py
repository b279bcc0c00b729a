"""Renewals outside the namespace lock (dibs.live), with real processes and a real PostgreSQL.

A heartbeat that decides nothing is one statement on dibs.live; these tests hold the store to
what that must not change: it never waits for the namespace lock, a stale holder woken after
its eviction cannot renew, and many heartbeating processes racing claims and evictions keep
exactly one holder, never renew a lease already evicted, and are never evicted inside a ttl
they were told they had.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dibs.service import Coordinator
from dibs.store.postgres import PostgresStore
from tests.conftest import BIN, Cli
from tests.faults.history import History, Op, check

pytestmark = pytest.mark.postgres


def events(url: str, namespace: str) -> list[dict[str, Any]]:
    store = PostgresStore(url, namespace=namespace)
    try:
        return list(store.events())
    finally:
        store.close()


def test_heartbeat_renews_while_another_client_holds_the_namespace_lock(pg_database: str) -> None:
    """A heartbeat and a renew complete while the namespace row is locked, and log nothing."""
    store = PostgresStore(pg_database, namespace="hb", lock_wait=2.0)
    store.create()
    dibs = Coordinator(store)
    dibs.register("a1", ttl=60)
    dibs.claim(["issue:1", "issue:2"])
    before = len(events(pg_database, "hb"))
    with psycopg.connect(pg_database) as blocker:
        blocker.execute("SELECT seq FROM dibs.namespaces WHERE name = 'hb' FOR UPDATE")
        assert {"agent": "a1", "renewed": ["issue:1", "issue:2"], "lost": []} == dibs.heartbeat()
        assert [{"resource": "issue:2", "token": 2}] == dibs.renew(["issue:2"])
        blocker.rollback()
    assert before == len(events(pg_database, "hb"))
    dibs.close()


def test_stale_holder_woken_after_eviction_cannot_renew(
    cli: Cli, pg_database: str, procs: list[subprocess.Popen[Any]]
) -> None:
    """A holder paused past its ttl (SIGSTOP) is evicted by a claimant; woken, its heartbeat
    and renew exit 4 naming the eviction, and the claimant keeps the lease."""
    assert 0 == cli("init", "--store", pg_database).returncode
    holder = cli.register("holder", "--ttl", "5")
    assert 0 == cli("claim", "issue:7", "--ttl", "5", env=holder).returncode
    assert 0 == cli("heartbeat", env=holder).returncode  # a renewal outside the log
    # The holder's next heartbeat runs in a process stopped before it can send it.
    script = "import os, signal, subprocess, sys; os.kill(os.getpid(), signal.SIGSTOP); "
    script += "sys.exit(subprocess.call(sys.argv[1:]))"
    stale = subprocess.Popen(
        [sys.executable, "-c", script, str(BIN / "dibs"), "heartbeat"],
        cwd=cli.cwd,
        env=cli.env | holder,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(stale)
    taker = cli.register("taker")
    while True:  # until the lease has expired on the server's clock: then it is evicted
        taken = cli("claim", "issue:7", env=taker)
        if taken.returncode == 0:
            break
        assert 3 == taken.returncode, taken.stderr
    stale.send_signal(signal.SIGCONT)
    _, err = stale.communicate(timeout=60)
    assert 4 == stale.returncode, err
    assert "issue:7" in err
    renew = cli("renew", "issue:7", env=holder)
    assert 4 == renew.returncode, renew.stderr
    claims = cli.json("claims")
    assert [("issue:7", "taker")] == [(c["resource"], c["agent"]) for c in claims]


WORKER = textwrap.dedent(
    """
    import json, random, sys, time
    from pathlib import Path
    from dibs.ground.errors import Conflict, LeaseLost
    from dibs.service import Coordinator
    from dibs.store.postgres import PostgresStore
    from tests.faults.history import History

    url, folder, index, seconds, ttl = sys.argv[1:6]
    index, seconds, ttl = int(index), float(seconds), float(ttl)
    rng = random.Random(index)
    me = f"w{index}"
    store = PostgresStore(url, namespace="hb")
    store.profile = {}  # counts the renewals done in dibs.live alone ("renew")
    dibs = Coordinator(store)
    dibs.register(me, ttl=3600)
    history = History()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        resource = f"issue:{rng.randrange(3)}"
        op = history.record(me, "acquire", resource)
        try:
            grant = dibs.claim([resource], ttl=ttl)[0]
        except Conflict:
            history.done(op, "refused")
            time.sleep(rng.uniform(0, ttl / 4))
            continue
        history.done(op, "ok", grant["token"])
        for _ in range(rng.randrange(1, 6)):
            # Mostly in time; now and then late enough for a claimant to evict the lease.
            time.sleep(rng.uniform(0, ttl * 0.6) if rng.random() < 0.8 else ttl * 1.3)
            beat = history.record(me, "heartbeat", resource)
            beat.token = grant["token"]
            try:
                renewed = dibs.heartbeat()["renewed"]
            except LeaseLost:
                history.done(beat, "lost", grant["token"])
                break
            history.done(beat, "ok" if resource in renewed else "lost", grant["token"])
            if resource not in renewed:
                break
        else:
            try:
                dibs.release([resource])
            except LeaseLost:
                pass
    out = {"history": history.dump(), "lock_free": store.profile.get("renew", 0)}
    Path(folder, f"{me}.json").write_text(json.dumps(out))
    """
)


def evicted_by(log: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[str, int]]:
    """(resource, token evicted as expired) -> (resource, token of the grant that evicted it)."""
    found: dict[tuple[str, int], tuple[str, int]] = {}
    waiting: dict[str, list[int]] = {}
    for event in log:
        if event["op"] == "auto-evict" and event["reason"] == "expired":
            waiting.setdefault(event["resource"], []).append(event["token"])
        elif event["op"] == "acquire":
            for token in waiting.pop(event["resource"], []):
                found[(event["resource"], token)] = (event["resource"], event["token"])
    return found


#: How far behind the server's clock a decision may be taken: an up-to-date client decides at
#: an estimate that stays behind the server (its clock margin, 1 ms, plus the return trip of
#: the reading it extrapolates from), so a renewal's ttl may count from a moment that much
#: before the heartbeat was sent. The lease then ends that much early, never late.
CLOCK_LAG = 0.05


def renewal_violations(history: History, log: list[dict[str, Any]], ttl: float) -> list[str]:
    """Renewals the store must never acknowledge, judged on the clients' common clock.

    * a heartbeat that began after the grant evicting its lease was acknowledged, yet renewed;
    * an eviction as expired acknowledged less than a ttl (less `CLOCK_LAG`) after the start of
      a heartbeat that renewed that lease.
    """
    grants = {(op.resource, op.token): op for op in history.ops if op.kind == "acquire"}
    beats: dict[tuple[str, int], list[Op]] = {}
    for op in history.ops:
        if op.kind == "heartbeat" and op.outcome == "ok" and op.token is not None:
            beats.setdefault((op.resource, op.token), []).append(op)
    found = []
    for lease, grant_key in evicted_by(log).items():
        grant = grants.get(grant_key)
        if grant is None or grant.returned is None:
            continue
        for beat in beats.get(lease, []):
            if beat.invoked > grant.returned:
                found.append(f"{lease} renewed by a heartbeat begun after its eviction")
            elif grant.returned < beat.invoked + ttl - CLOCK_LAG:
                found.append(f"{lease} evicted within the ttl of an acknowledged renewal")
    return found


@pytest.mark.parametrize("workers", [8])
def test_heartbeating_processes_racing_claims_keep_one_holder(
    pg_database: str, tmp_path: Path, workers: int
) -> None:
    """Processes claim three issues with a 0.5 s ttl and heartbeat, sometimes too late: one
    holder at a time, increasing tokens, and no renewal of an evicted or expiring lease."""
    ttl, seconds = 0.5, 6.0
    setup = PostgresStore(pg_database, namespace="hb")
    setup.create()
    setup.close()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                pg_database,
                str(tmp_path),
                str(i),
                str(seconds),
                str(ttl),
            ],
            cwd=Path(__file__).resolve().parents[2],
        )
        for i in range(workers)
    ]
    try:
        for p in procs:
            assert 0 == p.wait(timeout=seconds + 300)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    history, lock_free = History(), 0
    for i in range(workers):
        data = json.loads((tmp_path / f"w{i}.json").read_text())
        history.ops += History.load(data["history"]).ops
        lock_free += data["lock_free"]
    log = events(pg_database, "hb")
    verdict = check(log, history)
    verdict.assert_clean()
    renewed = [op for op in history.ops if op.kind == "heartbeat" and op.outcome == "ok"]
    evictions = evicted_by(log)
    assert renewed  # both sides of the race ran
    assert evictions
    # dibs.live agrees with a replay of the log: every row a current lease or registration,
    # none expiring before the log says (the lock holder's SQL and the core's apply agree).
    doctor = PostgresStore(pg_database, namespace="hb")
    assert [] == doctor.check()
    doctor.close()
    # Renewals in dibs.live alone raced the evictions, not only heartbeats in the log.
    assert lock_free > 0
    logged = sum(e["op"] == "heartbeat" for e in log)
    assert len(renewed) <= logged + lock_free
    assert [] == renewal_violations(history, log, ttl)


def test_doctor_finds_and_mends_rows_of_no_current_lease(pg_database: str) -> None:
    """A dibs.live row of a lease the log does not hold, and one behind the log: found,
    then mended by --repair, after which the lease's holder still renews without the lock."""
    store = PostgresStore(pg_database, namespace="hb")
    store.create()
    dibs = Coordinator(store)
    dibs.register("a1", ttl=60)
    dibs.claim(["issue:1"])
    with psycopg.connect(pg_database, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dibs.live (namespace, agent, resource, token, ttl_ns, expires) "
            "VALUES ('hb', 'ghost', 'issue:9', 99, 1, 1)"
        )
        conn.execute("UPDATE dibs.live SET expires = 0 WHERE resource = 'issue:1'")
    kinds = [f["kind"] for f in store.check()]
    assert ["live-row-stale", "live-row-behind"] == kinds
    assert all(f["repaired"] for f in store.check(repair=True))
    assert [] == store.check()
    before = len(events(pg_database, "hb"))
    assert ["issue:1"] == dibs.heartbeat()["renewed"]
    assert before == len(events(pg_database, "hb"))
    dibs.close()
