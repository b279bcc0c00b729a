"""Fleet simulation: N agents on one PostgreSQL namespace, every figure against a raw baseline.

    python -P bench/fleet.py [--quick] [--runs AGENTSxCLIENTS ...] [--seconds S]
                             [--speedup X] [--json FILE] [--url postgresql://USER@HOST/DB]

Each run registers N agents (real registrations, real tokens) and spreads them over C client
processes (real processes, one `PostgresStore` connection each, all on one namespace). Every
agent then lives by a schedule, phases spread at random so the load is steady from the first
second:

- a heartbeat every 30 s;
- a claim twice a minute (period drawn from 0.5-1.5x 30 s): 90% on a resource of its own (an
  ``issue:`` or a ``path:`` glob), 10% on one of N/50 shared "hot" resources (contention:
  some are refused); a granted claim is released after a hold of 0.2-0.6x the period (hot
  ones after 1.5-4.5 s);
- the agents of one client process in eight (at least one) are "waiters": their hot claims
  use ``wait`` (5 s), as ``dibs claim --wait`` does, blocking that process as it would block
  the agent.

That is about 6 writes per agent-minute (2 heartbeats, 2 claims, 2 releases): 1,000 ops/s for
10,000 agents. Time runs at real speed by default, so the figures are those of a real fleet
of N agents; ``--speedup X`` divides every period by X (a run covers X times as many agent
minutes, and the offered load is that of N*X agents on N agents' state), for quick looks.

Figures for each run, all measured in the same run against the same server:

- sustained ops/s (operations done / seconds) against the offered rate (operations that fell
  due; when the fleet falls behind, the releases of claims never made are not counted, so it
  is a lower bound: the schedule's own rate is printed beside it); "sustained" means at least
  95% of the operations that fell due were done and the p99 of their start lag behind the
  schedule stayed under 1 s (outside the waiter processes, which block on purpose);
- claim latency p50/p99 (non-waiting claims, granted or refused), against a raw single-row
  ``UPDATE ... RETURNING`` sent by the same number of client processes at the same offered
  rate (paced raw);
- throughput ratio: sustained ops/s / the raw UPDATE loop's closed-loop ops/s at the same
  client count (the server's ceiling for one-row serialised writes);
- lock wait: the mean number of client backends in a ``Lock`` wait (``pg_stat_activity``,
  sampled every 20 ms), the fleet's against the paced raw loop's;
- client CPU: CPU seconds the client processes used per wall second (the clients share this
  machine's cores with the server; a real fleet's clients run elsewhere).

Goal (issue 22): 10,000 agents sustained with claim p99 under 50 ms on this 2-core machine,
server included. The server is DIBS_TEST_PG's (default postgresql://postgres@127.0.0.1:5432/
postgres); the benchmark creates and drops its own database. Never run as a test.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import multiprocessing
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dibs import (
    Conflict,
    Coordinator,
    DibsError,
    LeaseLost,
    LockTimeout,
    PostgresStore,
    settle_heap,
)

ADMIN = os.environ.get("DIBS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
RAW = b"UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n"
HEARTBEAT = 30.0  # seconds between an agent's heartbeats
CLAIM_PERIOD = 30.0  # mean seconds between an agent's claims
HOT_SHARE = 0.10  # share of claims on shared resources
HOT_HOLD = 3.0  # mean seconds a hot resource is held
WAIT = 5.0  # seconds a waiter's claim waits
LAG_LIMIT = 1.0  # p99 start lag (s) under which the schedule counts as kept
DONE_SHARE = 0.95  # share of scheduled operations that must be done
LOCK_SAMPLE = 0.02
ctx = multiprocessing.get_context("fork")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def with_db(url: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


def cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


# The fleet ----------------------------------------------------------------------------------


#: How a client's writes were made (`PostgresStore.profile`): one commuting statement (moved
#: past others' writes or not), a clash that fell back to the lock, the optimistic append, a
#: locked write, a renewal outside the lock; and two reads: a waiting claim still blocked,
#: decided on a lock-free catch-up (current-read), and a wait woken by a release (woken).
WRITES = (
    "commuting",
    "commuting-moved",
    "commuting-clash",
    "optimistic",
    "locked",
    "renew",
    "current-read",
    "woken",
)


class Client:
    """One client process: its agents' schedules in a heap, run one operation at a time."""

    def __init__(
        self, target: tuple[str, str], names: list[str], hot: int, speedup: float, waiter: bool
    ):
        url, namespace = target
        self.store = PostgresStore(url, namespace=namespace, lock_wait=120.0, lock_hold=30.0)
        self.names = names
        self.hot = hot
        self.speedup = speedup
        self.waiter = waiter
        self.rng = random.Random(os.getpid())
        self.coords: list[Coordinator] = []
        self.heap: list[tuple[float, int, int, str, str]] = []
        self.counter = 0
        self.stats: dict[str, Any] = {
            "latency": {"claim": [], "claim-wait": [], "release": [], "heartbeat": []},
            "lag": [],
            "done": 0,
            "scheduled": 0,
            "granted": 0,
            "refused": 0,
            "timed_out": 0,
            "lost": 0,
            "errors": {},
            "waiter": waiter,
        }

    def register(self) -> None:
        ttl = 4 * HEARTBEAT / self.speedup
        for name in self.names:
            coord = Coordinator(self.store)
            coord.register(name, ttl=ttl)
            self.coords.append(coord)

    def push(self, due: float, index: int, action: str, resource: str = "") -> None:
        self.counter += 1
        heapq.heappush(self.heap, (due, self.counter, index, action, resource))

    def period(self, mean: float) -> float:
        return mean * self.rng.uniform(0.5, 1.5) / self.speedup

    def plan(self, start: float) -> None:
        for index in range(len(self.coords)):
            self.push(start + self.rng.uniform(0, HEARTBEAT) / self.speedup, index, "heartbeat")
            self.push(start + self.rng.uniform(0, CLAIM_PERIOD) / self.speedup, index, "claim")

    def pick(self, index: int) -> tuple[str, bool]:
        """A resource to claim, and whether it is a shared (hot) one."""
        if self.rng.random() < HOT_SHARE:
            return f"issue:hot-{self.rng.randrange(self.hot)}", True
        name = self.names[index]
        if self.rng.random() < 0.5:
            return f"issue:{name}-{self.counter}", False
        return f"path:src/{name}/m{self.counter}/**", False

    def run(self, start: float, end: float) -> dict[str, Any]:
        self.store.profile = {}  # how each write of the run was made (`WRITES`)
        self.plan(start)
        cpu0 = cpu_seconds()
        while self.heap:
            due, _n, index, action, resource = self.heap[0]
            now = time.monotonic()
            if due >= end or now >= end:
                break
            if due > now:
                time.sleep(due - now)
            heapq.heappop(self.heap)
            self.stats["scheduled"] += 1
            began = time.monotonic()
            self.stats["lag"].append(began - due)
            try:
                self.act(index, action, resource, due)
            except DibsError as exc:
                kind = type(exc).__name__
                self.stats["errors"][kind] = self.stats["errors"].get(kind, 0) + 1
            self.stats["done"] += 1
        self.count_backlog(end)
        self.stats["timeouts"] = self.store.timeouts
        self.stats["settled"] = self.store.settled
        self.stats["writes"] = {
            key: int(self.store.profile.get(key, 0))
            for key in WRITES
            if self.store.profile is not None
        }
        self.stats["cpu"] = cpu_seconds() - cpu0
        return self.stats

    def count_backlog(self, end: float) -> None:
        """What fell due before *end* and never started: scheduled, not done, and lagging.

        An operation left in the heap never scheduled its successors: those that would have
        fallen due before the end count too (at their mean period).
        """
        for due, _n, _index, action, _resource in self.heap:
            if due >= end:
                continue
            period = {"heartbeat": HEARTBEAT, "claim": CLAIM_PERIOD}.get(action)
            missed = 1 + (int((end - due) * self.speedup / period) if period else 0)
            self.stats["scheduled"] += missed
            self.stats["lag"] += [end - due] * missed

    def act(self, index: int, action: str, resource: str, due: float) -> None:
        coord = self.coords[index]
        latency = self.stats["latency"]
        if action == "heartbeat":
            self.push(due + HEARTBEAT / self.speedup, index, "heartbeat")
            t = time.perf_counter()
            try:
                coord.heartbeat()
            finally:
                latency["heartbeat"].append(time.perf_counter() - t)
            return
        if action == "release":
            t = time.perf_counter()
            try:
                coord.release([resource])
            except LeaseLost:
                self.stats["lost"] += 1
            finally:
                latency["release"].append(time.perf_counter() - t)
            return
        period = self.period(CLAIM_PERIOD)
        self.push(due + period, index, "claim")
        text, hot = self.pick(index)
        wait = WAIT / self.speedup if hot and self.waiter else None
        t = time.perf_counter()
        try:
            coord.claim([text], wait=wait, record_refusal=True)
        except LockTimeout:
            self.stats["timed_out"] += 1
            return
        except Conflict:
            self.stats["refused"] += 1
            return
        finally:
            latency["claim-wait" if wait else "claim"].append(time.perf_counter() - t)
        self.stats["granted"] += 1
        hold = self.period(HOT_HOLD) if hot else period * self.rng.uniform(0.2, 0.6)
        self.push(time.monotonic() + hold, index, "release", text)


class Clock:
    """The start time every client process schedules from (CLOCK_MONOTONIC is system-wide)."""

    def __init__(self) -> None:
        self.started = ctx.Event()
        self._value = ctx.Value("d", 0.0)

    @property
    def value(self) -> float:
        return float(self._value.value)

    def start(self, when: float) -> None:
        self._value.value = when
        self.started.set()


def _fleet_worker(  # noqa: PLR0917 -- a process target takes positional arguments
    target: tuple[str, str],
    names: list[str],
    hot: int,
    speedup: float,
    waiter: bool,
    registered: Any,
    go: Any,
    clock: Any,
    seconds: float,
    out: Any,
) -> None:
    # The store reconnects when a request goes unanswered (its watchdog); psycopg would log
    # each torn-down pipeline. The counts are in the figures instead.
    logging.getLogger("psycopg").setLevel(logging.CRITICAL)
    try:
        client = Client(target, names, hot, speedup, waiter)
        client.register()
        registered.wait()
        client.store.read()  # catch up on every registration before the clock starts
        settle_heap()  # a long-lived client keeps this state (see dibs.ground.heap)
        go.wait()
        clock.started.wait()
        start = clock.value
        out.put(client.run(start, start + seconds))
        client.store.close()
    except BaseException as exc:  # the parent must hear of it, not wait forever
        out.put({"failed": f"{type(exc).__name__}: {exc}"})
        raise


def sample_locks(url: str, stop: Any, out: Any) -> None:
    """Sample pg_stat_activity until *stop*: mean backends in a Lock wait, and active."""
    query = b"""
        SELECT count(*) FILTER (WHERE wait_event_type = 'Lock'),
               count(*) FILTER (WHERE state = 'active')
          FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()
           AND backend_type = 'client backend'"""
    waiting = active = samples = 0
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute(query).fetchone()
            if row is not None:
                waiting += row[0]
                active += row[1]
                samples += 1
            time.sleep(LOCK_SAMPLE)
    out.put({"lock_waiting": waiting / max(samples, 1), "active": active / max(samples, 1)})


class Sampler:
    """pg_stat_activity sampled in a process of its own while a phase runs."""

    def __init__(self, url: str):
        self.stop = ctx.Event()
        self.out = ctx.Queue()
        self.proc = ctx.Process(target=sample_locks, args=(url, self.stop, self.out), daemon=True)
        self.proc.start()

    def result(self) -> dict[str, float]:
        self.stop.set()
        result: dict[str, float] = self.out.get(timeout=60)
        self.proc.join()
        return result


def fleet(url: str, agents: int, clients: int, seconds: float, speedup: float) -> dict[str, Any]:
    """One fleet run on a fresh namespace; the merged figures of every client process."""
    target = (url, f"fleet-{agents}x{clients}-{int(time.time())}")
    store = PostgresStore(url, namespace=target[1])
    store.create()
    store.close()
    names = [f"agent-{i:05d}" for i in range(agents)]
    waiters = max(1, clients // 8)
    # Waiter processes get a small share of the agents: a blocked claim stalls only those.
    share = max(1, agents // (20 * waiters)) if clients > 1 else agents
    groups = [names[i * share : (i + 1) * share] for i in range(waiters)]
    rest = names[waiters * share :]
    groups += [rest[i :: clients - waiters] for i in range(clients - waiters)]
    registered = ctx.Barrier(clients + 1)
    go = ctx.Barrier(clients + 1)
    clock = Clock()
    out = ctx.Queue()
    procs = [
        ctx.Process(
            daemon=True,
            target=_fleet_worker,
            args=(
                target,
                group,
                max(8, agents // 50),
                speedup,
                i < waiters,
                registered,
                go,
                clock,
                seconds,
                out,
            ),
        )
        for i, group in enumerate(groups)
    ]
    began = time.monotonic()
    for p in procs:
        p.start()
    registered.wait(timeout=1800)
    registering = time.monotonic() - began
    go.wait(timeout=600)
    clock.start(time.monotonic() + 0.5)
    sampler = Sampler(url)
    cpu_wall0 = time.monotonic()
    parts = [out.get(timeout=seconds + 600) for _ in procs]
    wall = time.monotonic() - cpu_wall0
    locks = sampler.result()
    for p in procs:
        p.join()
    failed = [p["failed"] for p in parts if "failed" in p]
    if failed:
        raise SystemExit(f"a client process failed: {failed[0]}")
    return merge(parts, registering, locks, seconds, wall)


def merge(
    parts: list[dict[str, Any]],
    registering: float,
    locks: dict[str, float],
    seconds: float,
    wall: float,
) -> dict[str, Any]:
    merged: dict[str, Any] = {"latency": {}, "errors": {}}
    for kind in parts[0]["latency"]:
        merged["latency"][kind] = [x for p in parts for x in p["latency"][kind]]
    keys = ("done", "scheduled", "granted", "refused", "timed_out", "lost", "cpu", "timeouts")
    for key in (*keys, "settled"):
        merged[key] = sum(p[key] for p in parts)
    merged["writes"] = {key: sum(p["writes"].get(key, 0) for p in parts) for key in WRITES}
    for p in parts:
        for kind, count in p["errors"].items():
            merged["errors"][kind] = merged["errors"].get(kind, 0) + count
    # Parts come in the order the processes finished: the waiters are told by their flag.
    merged["lag_p99"] = pct([x for p in parts if not p["waiter"] for x in p["lag"]], 0.99)
    merged["lag_p99_all"] = pct([x for p in parts for x in p["lag"]], 0.99)
    merged["ops_s"] = merged["done"] / seconds
    merged["offered_s"] = merged["scheduled"] / seconds
    merged["client_cpu"] = merged["cpu"] / max(wall, seconds)
    merged["registering_s"] = registering
    merged.update(locks)
    return merged


# The raw baseline ---------------------------------------------------------------------------


def _raw_worker(url: str, go: Any, seconds: float, rate: float, out: Any) -> None:
    """Send the raw UPDATE for *seconds*: as fast as possible (rate 0) or *rate* per second."""
    latencies = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW).fetchone()
        go.wait()
        start = time.monotonic()
        deadline = start + seconds
        due = start + (random.uniform(0, 1 / rate) if rate else 0.0)
        while True:
            if rate:
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                due += random.expovariate(rate)
            if time.monotonic() >= deadline:
                break
            t = time.perf_counter()
            conn.execute(RAW).fetchone()
            latencies.append(time.perf_counter() - t)
    out.put(latencies)


def raw(url: str, clients: int, seconds: float, rate: float = 0.0) -> dict[str, Any]:
    go = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_raw_worker, args=(url, go, seconds, rate / clients, out), daemon=True)
        for _ in range(clients)
    ]
    for p in procs:
        p.start()
    go.wait()
    sampler = Sampler(url)
    latencies = [x for _ in procs for x in out.get(timeout=seconds + 300)]
    locks = sampler.result()
    for p in procs:
        p.join()
    return {
        "ops_s": len(latencies) / seconds,
        "p50": pct(latencies, 0.5),
        "p99": pct(latencies, 0.99),
        **locks,
    }


# Main ---------------------------------------------------------------------------------------


def run_one(url: str, agents: int, clients: int, seconds: float, speedup: float) -> dict[str, Any]:
    ceiling = raw(url, clients, min(seconds, 5.0))
    sim = fleet(url, agents, clients, seconds, speedup)
    paced = raw(url, clients, min(seconds, 10.0), rate=sim["offered_s"])
    claims = sim["latency"]["claim"]
    row = {
        "agents": agents,
        "clients": clients,
        "speedup": speedup,
        "seconds": seconds,
        "offered_ops_s": sim["offered_s"],
        # The schedule's own rate: heartbeats, claims, and a release per granted claim.
        "nominal_ops_s": agents * speedup * (1 / HEARTBEAT + 2 / CLAIM_PERIOD),
        "ops_s": sim["ops_s"],
        "done_share": sim["done"] / max(sim["scheduled"], 1),
        "lag_p99_s": sim["lag_p99"],
        "lag_p99_all_s": sim["lag_p99_all"],
        "claim_p50_ms": pct(claims, 0.5) * 1e3,
        "claim_p99_ms": pct(claims, 0.99) * 1e3,
        "heartbeat_p99_ms": pct(sim["latency"]["heartbeat"], 0.99) * 1e3,
        "release_p99_ms": pct(sim["latency"]["release"], 0.99) * 1e3,
        "wait_claim_p50_ms": pct(sim["latency"]["claim-wait"], 0.5) * 1e3,
        "claims": len(claims) + len(sim["latency"]["claim-wait"]),
        "granted": sim["granted"],
        "refused": sim["refused"],
        "timed_out": sim["timed_out"],
        "lost": sim["lost"],
        "errors": sim["errors"],
        "request_timeouts": sim["timeouts"],
        "settled": sim["settled"],
        "lock_waiting": sim["lock_waiting"],
        "active": sim["active"],
        "client_cpu": sim["client_cpu"],
        "registering_s": sim["registering_s"],
        "writes": sim["writes"],
        "raw_ops_s": ceiling["ops_s"],
        "raw_paced_p50_ms": paced["p50"] * 1e3,
        "raw_paced_p99_ms": paced["p99"] * 1e3,
        "raw_paced_lock_waiting": paced["lock_waiting"],
    }
    row["sustained"] = row["done_share"] >= DONE_SHARE and row["lag_p99_s"] < LAG_LIMIT
    row["load_average"] = os.getloadavg()[0]  # the machine is shared: say how busy it was
    return row


def show(row: dict[str, Any]) -> None:
    r = row
    print(
        f"\n{r['agents']:,} agents, {r['clients']} client processes, {r['seconds']:g} s at "
        f"speed-up {r['speedup']:g} (registering took {r['registering_s']:.0f} s; load "
        f"average {r['load_average']:.1f} at the end)"
    )
    print(
        f"  ops/s            {r['ops_s']:9.0f} of {r['offered_ops_s']:.0f} offered (schedule: "
        f"~{r['nominal_ops_s']:.0f}) "
        f"({r['done_share']:.1%} done, start lag p99 {r['lag_p99_s'] * 1e3:.0f} ms): "
        f"{'sustained' if r['sustained'] else 'NOT sustained'}"
    )
    print(
        f"  vs raw UPDATE    {r['ops_s'] / r['raw_ops_s']:9.2f}x of its "
        f"{r['raw_ops_s']:.0f} ops/s ceiling at {r['clients']} clients"
    )
    for q in ("p50", "p99"):
        ours, base = r[f"claim_{q}_ms"], r[f"raw_paced_{q}_ms"]
        print(f"  claim {q} (ms)    {ours:9.2f}  raw paced {base:.2f}  ratio {ours / base:.1f}x")
    base_wait = r["raw_paced_lock_waiting"]
    ratio = f"{r['lock_waiting'] / base_wait:.1f}x" if base_wait > 0.005 else "n/a"
    print(
        f"  lock wait        {r['lock_waiting']:9.2f} backends waiting on a lock (mean of "
        f"{r['active']:.1f} active); raw paced {base_wait:.2f}; ratio {ratio}"
    )
    print(
        f"  heartbeat p99 {r['heartbeat_p99_ms']:.1f} ms, release p99 {r['release_p99_ms']:.1f}"
        f" ms, waiting claim p50 {r['wait_claim_p50_ms']:.0f} ms; claims {r['claims']}: "
        f"{r['granted']} granted, {r['refused']} refused, {r['timed_out']} timed out; "
        f"{r['lost']} leases lost; errors {r['errors'] or 'none'}; {r['request_timeouts']} "
        f"requests unanswered in 10 s (reconnected; {r['settled']} settled by idempotency key); "
        f"client CPU "
        f"{r['client_cpu']:.2f} cores"
    )
    writes = r.get("writes", {})
    print("  writes and reads made: " + ", ".join(f"{key} {writes.get(key, 0)}" for key in WRITES))


def parse_run(text: str) -> tuple[int, int]:
    agents, _, clients = text.lower().partition("x")
    return int(agents), int(clients)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small, short run")
    parser.add_argument(
        "--runs",
        nargs="+",
        type=parse_run,
        metavar="AGENTSxCLIENTS",
        help="runs to make (default 1000x16 10000x16 10000x64; quick: 1000x16)",
    )
    parser.add_argument("--seconds", type=float, help="seconds each run lasts (default 60)")
    parser.add_argument("--speedup", type=float, default=1.0, help="divide every period by X")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--url", default=ADMIN, help="an admin URL (may create databases)")
    args = parser.parse_args()
    # Stopped with SIGTERM, still drop the database (the client processes are daemons).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = args.runs or ([(1000, 16)] if args.quick else [(1000, 16), (10000, 16), (10000, 64)])
    seconds = args.seconds or (15.0 if args.quick else 60.0)
    dbname = f"dibs_fleet_{os.getpid()}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = with_db(args.url, dbname)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "rows": []}
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(b"CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL)")
            conn.execute(b"INSERT INTO counter VALUES (1, 0)")
            version = conn.execute(b"SHOW server_version").fetchone()
        print(
            f"fleet simulation: PostgreSQL {version[0] if version else '?'}, "
            f"{os.cpu_count()} cores (server and clients on this machine); time at "
            f"{args.speedup:g}x real speed (heartbeat every {HEARTBEAT / args.speedup:g} s, a "
            f"claim every ~{CLAIM_PERIOD / args.speedup:g} s per agent)"
        )
        for agents, clients in runs:
            row = run_one(url, agents, clients, seconds, args.speedup)
            results["rows"].append(row)
            show(row)
        goal = [r for r in results["rows"] if r["agents"] >= 10000 and r["speedup"] <= 1]
        if goal:
            met = [r for r in goal if r["sustained"] and r["claim_p99_ms"] < 50]
            best = min(goal, key=lambda r: r["claim_p99_ms"])
            print(
                f"\ngoal: 10,000 agents sustained with claim p99 < 50 ms: "
                f"{'met' if met else 'missed'} (best claim p99 {best['claim_p99_ms']:.1f} ms "
                f"at {best['clients']} clients, "
                f"{'sustained' if best['sustained'] else 'not sustained'})"
            )
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )


if __name__ == "__main__":
    main()
