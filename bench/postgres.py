"""PostgreSQL store benchmarks: every figure as a ratio to a baseline measured in the same run.

    python bench/postgres.py [--quick] [--json FILE] [--url postgresql://USER@HOST/DB]

The baseline ("raw") is the cheapest transaction that still serialises on one row: a single
autocommit ``UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n`` (one round trip, one
commit), from the same number of clients, against the same server, in the same run.

1. Claim latency, 1 client: p50 and p99 of ``Coordinator.claim`` (each claim on a new
   resource, released between measurements) / raw. Goal: p50 at most 2x.
2. Throughput with 4, 16 and 64 client processes, each claiming and releasing its own
   resources in a loop (operations per second, a claim or a release each) / raw with the same
   clients. Goal: at least 0.5x at 16 clients. Then the same clients each holding two leases
   and heartbeating in a loop (a heartbeat each): the write that decides nothing.
   For the claim loops, how the writes were made (commuting: one statement, moved past
   others' unrelated writes; optimistic; locked) and where a locked write spends its time:
   the first round trip (lock wait included), the client's turnaround between the round
   trips, and the append + commit.
3. The same two figures for the local store (on this machine's disk), in the same run, for the
   README's "when to switch" advice.
4. A CLI call and the edit guard on PostgreSQL end to end, through the CLI helper and direct,
   as ratios to `python -c pass` in the same run (bench/postgres_cli.py). Goal: at most 4x.

The server is DIBS_TEST_PG's (default postgresql://postgres@127.0.0.1:5432/postgres); the
benchmark creates and drops its own database. Never run as a test: figures go in the README.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from dibs.ground.errors import Conflict
from dibs.service import Coordinator
from dibs.store.local import LocalStore
from dibs.store.postgres import PostgresStore

ADMIN = os.environ.get("DIBS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
RAW = b"UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n"
ctx = multiprocessing.get_context("fork")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def with_db(url: str, dbname: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(url)
    params["dbname"] = dbname
    return psycopg.conninfo.make_conninfo(**params)


def make_store(target: str) -> Any:
    if target.startswith("local:"):
        return LocalStore(target[len("local:") :])
    return PostgresStore(target, namespace="bench")


# Latency ------------------------------------------------------------------------------------


def raw_latency(url: str, n: int) -> list[float]:
    out = []
    with psycopg.connect(url, autocommit=True) as conn:
        for _ in range(20):
            conn.execute(RAW).fetchone()
        for _ in range(n):
            t = time.perf_counter()
            conn.execute(RAW).fetchone()
            out.append(time.perf_counter() - t)
    return out


def claim_latency(target: str, n: int) -> list[float]:
    out = []
    with Coordinator(make_store(target)) as dibs:
        dibs.register(f"lat{os.getpid()}", ttl=3600)
        for i in range(n + 20):
            t = time.perf_counter()
            dibs.claim([f"issue:lat-{i}"])
            elapsed = time.perf_counter() - t
            dibs.release([f"issue:lat-{i}"])
            if i >= 20:
                out.append(elapsed)
    return out


# Throughput ---------------------------------------------------------------------------------


def _raw_worker(url: str, start: Any, seconds: float, out: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(RAW).fetchone()
        start.wait()
        deadline = time.monotonic() + seconds
        ops = 0
        while time.monotonic() < deadline:
            conn.execute(RAW).fetchone()
            ops += 1
    out.put(ops)


def _dibs_worker(target: str, start: Any, seconds: float, out: Any) -> None:
    ops = 0
    store = make_store(target)
    if isinstance(store, PostgresStore):
        store.profile = {}
    with Coordinator(store) as dibs:
        dibs.register(f"tp{os.getpid()}", ttl=3600)
        if isinstance(store, PostgresStore) and store.profile is not None:
            store.profile.clear()
        start.wait()
        deadline = time.monotonic() + seconds
        i = 0
        while time.monotonic() < deadline:
            text = f"issue:{os.getpid()}-{i}"
            try:
                dibs.claim([text])
                dibs.release([text])
                ops += 2
            except Conflict:  # pragma: no cover - every client claims its own resources
                pass
            i += 1
    out.put((ops, getattr(store, "profile", None) or {}))


def _heartbeat_worker(target: str, start: Any, seconds: float, out: Any) -> None:
    """Hold two leases and heartbeat in a loop: the write that decides nothing."""
    ops = 0
    store = make_store(target)
    with Coordinator(store) as dibs:
        dibs.register(f"hb{os.getpid()}", ttl=3600)
        dibs.claim([f"issue:hb-{os.getpid()}-a", f"issue:hb-{os.getpid()}-b"])
        start.wait()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            dibs.heartbeat()
            ops += 1
    out.put((ops, {}))


WORKERS = {"claims": _dibs_worker, "heartbeats": _heartbeat_worker}
#: Where the lock is held, summed over the clients of the last throughput run (see main).
PROFILE: dict[str, float] = {}


def throughput(target: str, clients: int, seconds: float, raw: bool, kind: str = "claims") -> float:
    start = ctx.Barrier(clients + 1)
    out = ctx.Queue()
    worker = _raw_worker if raw else WORKERS[kind]
    procs = [ctx.Process(target=worker, args=(target, start, seconds, out)) for _ in range(clients)]
    for p in procs:
        p.start()
    start.wait()
    total = 0
    PROFILE.clear()
    for _ in procs:
        got = out.get(timeout=seconds + 300)
        if isinstance(got, tuple):
            got, profile = got
            for key, value in profile.items():
                PROFILE[key] = PROFILE.get(key, 0.0) + value
        total += got
    for p in procs:
        p.join()
    return total / seconds


def print_profile(clients: int) -> None:
    """How the claim loop's writes were made, and where the time of a locked write goes,
    averaged over every locked write of the run."""
    counts = {k: PROFILE.get(k, 0.0) for k in ("commuting", "commuting-moved", "commuting-clash")}
    commuted = counts["commuting"] + counts["commuting-moved"]
    print(
        f"  {clients} clients, writes: commuting {commuted:.0f}"
        f" (moved past others' writes {counts['commuting-moved']:.0f}, clashed and locked "
        f"{counts['commuting-clash']:.0f}), optimistic {PROFILE.get('optimistic', 0):.0f}, "
        f"locked {PROFILE.get('locked', 0):.0f}"
    )
    locked = PROFILE.get("locked", 0.0)
    if not locked:
        return
    each = {k: PROFILE.get(k, 0.0) / locked * 1e3 for k in ("begin", "decide", "commit")}
    print(
        f"  {clients} clients, per locked write (ms): lock wait + first round trip "
        f"{each['begin']:.3f}, client turnaround (catch-up, decide, encode) "
        f"{each['decide']:.3f}, append + commit {each['commit']:.3f}; "
        f"optimistic misses {PROFILE.get('optimistic-miss', 0):.0f}"
    )


def latency_rows(url: str, local: str, n: int, results: dict[str, Any]) -> None:
    """Claim latency at 1 client, PostgreSQL and local, against the raw update."""
    rows = results["rows"]
    raw = raw_latency(url, n)
    pg = claim_latency(url, n)
    loc = claim_latency(local, n)
    print(f"PostgreSQL {results['server']}, {os.cpu_count()} cores; {n} samples")
    print(f"{'figure':<44}{'dibs':>12}{'raw':>12}{'ratio':>8}{'local':>12}")
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        ours, base, lo = pct(pg, q) * 1e3, pct(raw, q) * 1e3, pct(loc, q) * 1e3
        rows.append(
            {
                "figure": f"claim latency {name}, 1 client",
                "dibs_ms": ours,
                "raw_ms": base,
                "ratio": ours / base,
                "local_ms": lo,
            }
        )
        print(
            f"{'claim latency ' + name + ', 1 client (ms)':<44}{ours:>12.3f}{base:>12.3f}"
            f"{ours / base:>7.2f}x{lo:>12.3f}"
        )
    print(
        f"{'(mean claim latency, ms)':<44}{statistics.mean(pg) * 1e3:>12.3f}"
        f"{statistics.mean(raw) * 1e3:>12.3f}{'':>8}{statistics.mean(loc) * 1e3:>12.3f}"
    )


# Main ---------------------------------------------------------------------------------------


def _postgres_cli() -> Any:
    """bench/postgres_cli.py, beside this file (``python -P`` leaves it off sys.path)."""
    import importlib.util

    path = Path(__file__).with_name("postgres_cli.py")
    spec = importlib.util.spec_from_file_location("postgres_cli", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cli_figures(url: str, quick: bool) -> list[dict[str, Any]]:
    """The CLI call and the edit guard, end to end (bench/postgres_cli.py), in this run."""
    cli = _postgres_cli()
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    rows: list[dict[str, Any]] = cli.measure(cli.as_url(url, dbname), 10 if quick else 30)
    cli.report(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples, shorter runs")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    parser.add_argument("--url", default=ADMIN, help="an admin URL (may create databases)")
    args = parser.parse_args()
    n = 300 if args.quick else 2000
    seconds = 1.5 if args.quick else 4.0
    dbname = f"dibs_bench_{os.getpid()}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = with_db(args.url, dbname)
    folder = tempfile.mkdtemp(prefix="dibs-bench-")
    local = f"local:{folder}/dibs"
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "rows": []}
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(b"CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL)")
            conn.execute(b"INSERT INTO counter VALUES (1, 0)")
        store = PostgresStore(url, namespace="bench")
        store.create()
        store.close()
        with psycopg.connect(url) as conn:
            version = conn.execute(b"SHOW server_version").fetchone()
        results["server"] = version[0] if version else "?"

        latency_rows(url, local, n, results)
        rows = results["rows"]
        profiles = []
        for clients in (4, 16, 64):
            base = throughput(url, clients, seconds, raw=True)
            for kind, name in (("claims", "throughput"), ("heartbeats", "heartbeats")):
                ours = throughput(url, clients, seconds, raw=False, kind=kind)
                if kind == "claims":
                    profiles.append((clients, dict(PROFILE)))
                lo = throughput(local, clients, seconds, raw=False, kind=kind)
                rows.append(
                    {
                        "figure": f"{name}, {clients} clients",
                        "dibs_ops": ours,
                        "raw_ops": base,
                        "ratio": ours / base,
                        "local_ops": lo,
                    }
                )
                print(
                    f"{f'{name}, {clients} clients (ops/s)':<44}{ours:>12.0f}{base:>12.0f}"
                    f"{ours / base:>7.2f}x{lo:>12.0f}"
                )
        print("how the claim loops wrote, and where a locked write spends its time (PostgreSQL):")
        for clients, profile in profiles:
            PROFILE.clear()
            PROFILE.update(profile)
            print_profile(clients)
        results["profiles"] = {str(c): p for c, p in profiles}
        p50 = rows[0]["ratio"]
        t16 = next(r for r in rows if r["figure"] == "throughput, 16 clients")["ratio"]
        print(
            f"goals: p50 <= 2x raw at 1 client: {p50:.2f}x "
            f"({'met' if p50 <= 2 else 'missed'}); "
            f"throughput >= 0.5x raw at 16 clients: {t16:.2f}x "
            f"({'met' if t16 >= 0.5 else 'missed'})"
        )
        results["cli"] = _cli_figures(url, args.quick)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
