"""Claim engine benchmarks: every figure as a ratio to a baseline measured in the same run.

    python bench/claims.py [--quick] [--json FILE]

1. Durable claim and release latency (Python API, local store) / raw append+fdatasync latency.
   Goal: p50 at most 1.3x raw per durable event.
2. Throughput with 1, 4 and 16 contending processes / a raw flock+append+fdatasync loop with the
   same number of processes. Goal: at least 0.7x.
3. `dibs claim` and `dibs release` end to end from the shell / `python -c pass`. Goal: p50 at
   most 2.5x.
4. `dibs status --json` on a store with 1,000,000 past events / one with 1,000, both with 10,000
   live claims. Goal: at most 2x.
5. Durability choices: append+fsync / a plain append; each other sync primitive this machine
   offers (fdatasync on Linux, F_FULLFSYNC on macOS) / fsync; and a durable claim with each
   `store.sync` choice / a raw append with that choice's primitive.

"fdatasync" above is this platform's durable sync (`dibs.ground.platform`: fsync or
F_FULLFSYNC where there is no fdatasync).

Never run as a test: these machines are shared and noisy; figures go in the README.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dibs.core.events import new_event
from dibs.core.leases import Decision
from dibs.ground import platform
from dibs.service import Coordinator
from dibs.store.local import LocalStore

BIN = Path(sys.executable).parent
LINE = (
    b'{"schema_version":1,"seq":1,"op":"acquire","resource":"issue:bench-1","agent":"a1",'
    b'"mode":"exclusive","token":1,"ttl":90.0,"wall":"2026-11-23T10:00:00.000Z",'
    b'"mono":677431211625,"boot":"9ea580f8-dec6-4323-bb47-de9b56188f74"}\n'
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def raw_append_latency(
    folder: str, n: int, sync: Callable[[int], None] | None = platform.sync_data, name: str = "raw"
) -> list[float]:
    """Append one ~250-byte line and *sync* it (None: do not), n times."""
    path = os.path.join(folder, f"{name}.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    out = []
    try:
        for _ in range(n):
            t = time.perf_counter()
            os.write(fd, LINE)
            if sync is not None:
                sync(fd)
            out.append(time.perf_counter() - t)
    finally:
        os.close(fd)
    return out


def claim_latency(folder: str, n: int, sync: str = "full") -> tuple[list[float], list[float]]:
    """Claim then release issue:k, n times, through the Python API."""
    # A store of its own each call: a second call may not take over the first's live agent.
    store = LocalStore(os.path.join(folder, f"dibs-{sync}-{os.urandom(3).hex()}"), sync=sync)
    dibs = Coordinator(store)
    dibs.register("bench")
    claims, releases = [], []
    for k in range(n):
        res = [f"issue:bench-{k}"]
        t = time.perf_counter()
        dibs.claim(res)
        t2 = time.perf_counter()
        dibs.release(res)
        t3 = time.perf_counter()
        claims.append(t2 - t)
        releases.append(t3 - t2)
    dibs.close()
    return claims, releases


def _raw_worker(path: str, lock: str, seconds: float, out: Any) -> None:
    lfd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        platform.lock(lfd)
        os.write(fd, LINE)
        platform.sync_data(fd)
        platform.unlock(lfd)
        count += 1
    out.put(count)


def _dibs_worker(root: str, index: int, seconds: float, out: Any) -> None:
    dibs = Coordinator(LocalStore(root))
    dibs.register(f"w{index}")
    count = 0
    end = time.monotonic() + seconds
    k = 0
    while time.monotonic() < end:
        res = [f"issue:w{index}-{k}"]
        dibs.claim(res)
        dibs.release(res)
        count += 2
        k += 1
    out.put(count)


def throughput(folder: str, procs: int, seconds: float, raw: bool) -> float:
    """Durable events per second with *procs* processes writing one store."""
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    sub = os.path.join(folder, f"{'raw' if raw else 'dibs'}-{procs}")
    os.makedirs(sub, exist_ok=True)
    if raw:
        args = [(os.path.join(sub, "log"), os.path.join(sub, "lock"), seconds, out)] * procs
        workers = [ctx.Process(target=_raw_worker, args=a) for a in args]
    else:
        workers = [
            ctx.Process(target=_dibs_worker, args=(os.path.join(sub, "dibs"), i, seconds, out))
            for i in range(procs)
        ]
    for w in workers:
        w.start()
    total = sum(out.get(timeout=seconds + 120) for _ in workers)
    for w in workers:
        w.join()
    return total / seconds


def run_times(argv: list[str], n: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env=env)
        out.append(time.perf_counter() - t)
    return out


def cli_latency(folder: str, n: int) -> dict[str, list[float]]:
    repo = os.path.join(folder, "repo")
    os.makedirs(repo)
    subprocess.run(["git", "init", "-q", repo], check=True)
    dibs = str(BIN / "dibs")
    reg = json.loads(
        subprocess.run(
            [dibs, "agent", "register", "cli", "--json"], cwd=repo, check=True, capture_output=True
        ).stdout
    )
    # The direct call: a CLI helper (started by PostgreSQL calls on this machine) stays out.
    env = dict(os.environ, DIBS_AGENT="cli", DIBS_TOKEN=reg["token"], DIBS_HELPER="off")
    claim, release, base = [], [], []
    for k in range(n):
        base += run_times([sys.executable, "-c", "pass"], 1)
        t = time.perf_counter()
        subprocess.run(
            [dibs, "claim", f"issue:c{k}"], cwd=repo, env=env, check=True, capture_output=True
        )
        t2 = time.perf_counter()
        subprocess.run(
            [dibs, "release", f"issue:c{k}"], cwd=repo, env=env, check=True, capture_output=True
        )
        t3 = time.perf_counter()
        claim.append(t2 - t)
        release.append(t3 - t2)
    return {"python -c pass": base, "dibs claim": claim, "dibs release": release}


def build_store(root: str, past_events: int, live_claims: int) -> None:
    """A store with *past_events* of history and *live_claims* claims held now."""
    store = LocalStore(root, checkpoint_bytes=64 * 1024)
    dibs = Coordinator(store)
    for a in range(10):
        dibs.register(f"agent-{a}", ttl=86400)
    agents = [dibs.store.read()[0].agents[f"agent-{a}"] for a in range(10)]
    history = max(0, past_events - live_claims)
    batch = 2000

    def filler(start: int, count: int):
        def decide(state: Any, now: Any) -> Decision:
            events = []
            token = state.last_token
            for k in range(start, start + count, 2):
                token += 1
                agent = agents[k % 10]["name"]
                events.append(
                    new_event(
                        "acquire",
                        now,
                        resource=f"issue:old-{k}",
                        agent=agent,
                        mode="exclusive",
                        token=token,
                        ttl=90.0,
                    )
                )
                events.append(
                    new_event(
                        "release",
                        now,
                        resource=f"issue:old-{k}",
                        agent=agent,
                        mode="exclusive",
                        token=token,
                    )
                )
            return Decision(events)

        return decide

    for start in range(0, history, batch):
        store.transact(filler(start, min(batch, history - start)))

    def holder(start: int, count: int):
        def decide(state: Any, now: Any) -> Decision:
            token = state.last_token
            events = []
            for k in range(start, start + count):
                token += 1
                events.append(
                    new_event(
                        "acquire",
                        now,
                        resource=f"path:src/m{k}/**",
                        agent=agents[k % 10]["name"],
                        mode="exclusive",
                        token=token,
                        ttl=86400.0,
                    )
                )
            return Decision(events)

        return decide

    for start in range(0, live_claims, batch):
        store.transact(holder(start, min(batch, live_claims - start)))
    store.write_checkpoint()
    store.close()


def status_open(folder: str, past: int, live: int, n: int) -> list[float]:
    repo = os.path.join(folder, f"repo-{past}")
    os.makedirs(repo)
    subprocess.run(["git", "init", "-q", repo], check=True)
    build_store(os.path.join(repo, ".git", "dibs"), past, live)
    return run_times([str(BIN / "dibs"), "status", "--json", "-C", repo], n)


def durability(folder: str, n: int, add: Callable[..., None]) -> None:
    """Rows for each sync primitive and each `store.sync` choice on this machine."""
    med = statistics.median
    primitives = platform.sync_primitives()
    plain = raw_append_latency(folder, n, None, "plain")
    fsync = raw_append_latency(folder, n, primitives["fsync"], "fsync")
    add(
        "append_fsync_p50",
        f"append+fsync p50 / plain append p50 ({platform.NAME})",
        med(fsync) * 1e3,
        med(plain) * 1e3,
        "ms",
        "",
    )
    for name, primitive in primitives.items():
        if name != "fsync":
            synced = raw_append_latency(folder, n, primitive, name)
            add(
                f"append_{name}_p50",
                f"append+{name} p50 / append+fsync p50 ({platform.NAME})",
                med(synced) * 1e3,
                med(fsync) * 1e3,
                "ms",
                "",
            )
    for choice in platform.SYNC_CHOICES:

        def sync(fd: int, choice: str = choice) -> None:
            platform.sync_data(fd, choice)

        raw = raw_append_latency(folder, n, sync, f"choice-{choice}")
        claims, _ = claim_latency(folder, n, choice)
        add(
            f"claim_sync_{choice}_p50",
            f"durable claim p50, store.sync={choice} / raw append+its sync p50",
            med(claims) * 1e3,
            med(raw) * 1e3,
            "ms",
            "<= 1.3x",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a smoke run)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    n = 300 if args.quick else 2000
    seconds = 2.0 if args.quick else 5.0
    history = 100_000 if args.quick else 1_000_000
    results: dict[str, Any] = {}
    rows: list[tuple[str, str, str, str]] = []

    def add(key: str, figure: str, ours: float, base: float, unit: str, goal: str) -> None:  # noqa: PLR0917 -- one row of the table, read left to right
        ratio = ours / base
        results[key] = {"ours": ours, "baseline": base, "ratio": ratio}
        measured = f"{ours:.3g} / {base:.3g} {unit}"
        rows.append((figure, measured, f"{ratio:.2f}x", goal))

    med = statistics.median
    with tempfile.TemporaryDirectory(prefix="dibs-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        raw = raw_append_latency(tmp, n)
        claims, releases = claim_latency(tmp, n)
        for name, xs in (("claim", claims), ("release", releases)):
            add(
                f"{name}_p50",
                f"durable {name} p50 / raw append+fdatasync p50",
                med(xs) * 1e3,
                med(raw) * 1e3,
                "ms",
                "<= 1.3x",
            )
            add(
                f"{name}_p99",
                f"durable {name} p99 / raw append+fdatasync p99",
                pct(xs, 0.99) * 1e3,
                pct(raw, 0.99) * 1e3,
                "ms",
                "",
            )
        for procs in (1, 4, 16):
            base = throughput(tmp, procs, seconds, raw=True)
            ours = throughput(tmp, procs, seconds, raw=False)
            add(
                f"throughput_{procs}",
                f"events/s, {procs} processes / raw flock+append+fdatasync",
                ours,
                base,
                "events/s",
                ">= 0.7x",
            )
        durability(tmp, n, add)
        cli = cli_latency(tmp, 30 if args.quick else 100)
        for name in ("dibs claim", "dibs release"):
            add(
                name.replace(" ", "_"),
                f"`{name}` end to end p50 / `python -c pass` p50",
                med(cli[name]) * 1e3,
                med(cli["python -c pass"]) * 1e3,
                "ms",
                "<= 2.5x",
            )
        small = status_open(tmp, 1_000, 10_000, 7)
        large = status_open(tmp, history, 10_000, 7)
        add(
            "status_open",
            f"`dibs status --json`: {history:,} / 1,000 past events, 10,000 claims",
            med(large) * 1e3,
            med(small) * 1e3,
            "ms",
            "<= 2x",
        )
    print("| figure | measured | ratio | goal |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
