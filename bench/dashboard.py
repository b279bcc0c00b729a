"""The dashboard's `/api/state` with 200 agents and 10,000 live claims, and `dibs metrics`
over 1,000,000 events, each beside the machine's `python -c pass` measured in the same run.

    python bench/dashboard.py [--events N] [--claims N]

Goals: `/api/state` p50 under 50 ms; `dibs metrics` under 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from dibs.core.events import new_event
from dibs.core.leases import Decision
from dibs.service import Coordinator
from dibs.store.local import LocalStore

BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}


def fill(repo: Path, agents: int, claims: int, events: int) -> None:
    """*agents* agents holding *claims* live claims, after *events* events of churn.

    The churn is written straight into log segments as an agent's claims would leave it: an
    ``acquire`` and its ``release``, each a transaction of its own (500,000 fsyncs through the
    API would take minutes); the store replays them when it next opens.
    """
    from dibs.core.events import encode
    from dibs.ground.now import Now

    store_dir = repo / ".git" / "dibs"
    dibs = Coordinator(LocalStore(store_dir))
    names = [f"agent-{n}" for n in range(agents)]
    for name in names:
        dibs.register(name, ttl=86400)
    state, now = dibs.store.read()
    dibs.close()
    seq, token = state.seq, state.last_token
    log_dir = store_dir / "log"
    segment_bytes = 64 << 20
    out = None
    written = segment_bytes
    wall = now.wall - 86400.0  # a day of history, 86 ms apart
    step = 86400.0 / max(1, events)
    for k in range((events - claims) // 2):
        if written >= segment_bytes:
            if out is not None:
                out.close()
            out = open(log_dir / f"{seq + 1:020d}.jsonl", "xb")  # noqa: SIM115
            written = 0
        token += 1
        at = Now(now.boot, now.mono - int((now.wall - wall) * 1e9), wall)
        agent, resource = names[k % agents], f"issue:churn-{k}"
        for op in ("acquire", "release"):
            seq += 1
            event = new_event(op, at, resource=resource, agent=agent, token=token)
            if op == "acquire":
                event.update(mode="exclusive", ttl=86400.0)
            event["seq"] = seq
            line = encode(event)
            out.write(line)
            written += len(line)
            wall += step
    if out is not None:
        out.close()
    for segment in sorted(log_dir.iterdir())[:-1]:
        segment.chmod(0o444)
    (store_dir / "checkpoint").unlink(missing_ok=True)
    dibs = Coordinator(LocalStore(store_dir))

    def hold(state: Any, ctx: Any) -> Decision:
        token = state.last_token
        out = []
        for k in range(claims):
            token += 1
            out.append(
                new_event(
                    "acquire",
                    ctx.now,
                    resource=f"path:src/m{k}/**",
                    agent=names[k % agents],
                    mode="exclusive",
                    token=token,
                    ttl=86400.0,
                )
            )
        return Decision(out)

    dibs.transact(hold)
    dibs.close()


def python_pass() -> float:
    runs = []
    for _ in range(10):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        runs.append(time.perf_counter() - started)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--claims", type=int, default=10_000)
    parser.add_argument("--agents", type=int, default=200)
    args = parser.parse_args()
    baseline = python_pass()
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        subprocess.run(
            [str(BIN / "dibs"), "init"], cwd=repo, env=ENV, check=True, capture_output=True
        )
        fill(repo, args.agents, args.claims, args.events)
        server = subprocess.Popen(
            [str(BIN / "dibs"), "dashboard", "--port", "0"],
            cwd=repo,
            env=ENV,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert server.stderr is not None
            url = server.stderr.readline().split(" on ", 1)[1].strip()
            times = []
            for _ in range(21):
                started = time.perf_counter()
                with urllib.request.urlopen(url + "api/state", timeout=60) as response:  # noqa: S310
                    state = json.loads(response.read())
                times.append(time.perf_counter() - started)
            assert len(state["claims"]) == args.claims, len(state["claims"])
        finally:
            server.terminate()
            server.communicate(timeout=30)
        started = time.perf_counter()
        out = subprocess.run(
            [str(BIN / "dibs"), "metrics", "--json"],
            cwd=repo,
            env=ENV,
            capture_output=True,
            text=True,
            check=True,
        )
        took = time.perf_counter() - started
        report = json.loads(out.stdout)
    p50 = statistics.median(times[1:])
    print(f"python -c pass: {baseline * 1000:.1f} ms (this machine, this run)")
    print(
        f"/api/state, {args.agents} agents, {args.claims:,} live claims: p50 {p50 * 1000:.1f} ms"
        f" = {p50 / baseline:.1f}x python -c pass (goal: under 50 ms)"
    )
    print(
        f"dibs metrics over {report['events']:,} events: {took:.2f} s"
        f" = {took / baseline:.0f}x python -c pass (goal: under 5 s)"
    )


if __name__ == "__main__":
    main()
