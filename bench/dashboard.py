"""The dashboard's `/api/state` with 200 agents and 10,000 live claims, and `dibs metrics`
over 1,000,000 events, each beside the machine's `python -c pass` measured in the same run.

    python bench/dashboard.py [--events N] [--claims N]

Goals: `/api/state` p50 under 50 ms; `dibs metrics` under 5 s. The CPU of the figures
themselves (`dibs.integrations.metrics.compute`, in process) is printed beside the CPU of
reading the same events from the store, the part no figure can cut.
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
#: Globs each agent holds while it churns (the claims refusals meet).
GLOBS = 5
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}


class _Segments:
    """Events written straight into log segments, numbered on from *seq*, *step* s apart."""

    def __init__(self, log_dir: Path, now: Any, seq: int, step: float):
        self.log_dir, self.now, self.seq, self.step = log_dir, now, seq, step
        self.wall = now.wall - 86400.0  # a day of history
        self.out: Any = None
        self.written = self.SEGMENT

    SEGMENT = 64 << 20

    def write(self, op: str, resource: str, agent: str, **fields: Any) -> None:
        from dibs.core.events import encode
        from dibs.ground.now import Now

        if self.written >= self.SEGMENT:
            self.close()
            self.out = open(self.log_dir / f"{self.seq + 1:020d}.jsonl", "xb")  # noqa: SIM115
            self.written = 0
        self.seq += 1
        now = self.now
        at = Now(now.boot, now.mono - int((now.wall - self.wall) * 1e9), self.wall)
        event = new_event(op, at, resource=resource, agent=agent, **fields)
        event["seq"] = self.seq
        line = encode(event)
        self.out.write(line)
        self.written += len(line)
        self.wall += self.step

    def close(self) -> None:
        if self.out is not None:
            self.out.close()
            self.out = None


def fill(repo: Path, agents: int, claims: int, events: int) -> None:
    """*agents* agents holding *claims* live claims, after *events* events of churn.

    The churn is written straight into log segments as an agent's claims would leave it: an
    ``acquire`` and its ``release``, each a transaction of its own (500,000 fsyncs through the
    API would take minutes), and one claim call in twenty refused on a file under another
    agent's glob (each agent holds `GLOBS` globs while it churns, released at the end), as
    the hot spots find them; the store replays them when it next opens.
    """
    store_dir = repo / ".git" / "dibs"
    dibs = Coordinator(LocalStore(store_dir))
    names = [f"agent-{n}" for n in range(agents)]
    for name in names:
        dibs.register(name, ttl=86400)
    state, now = dibs.store.read()
    dibs.close()
    token = state.last_token
    log_dir = store_dir / "log"
    log = _Segments(log_dir, now, state.seq, 86400.0 / max(1, events))
    globs = [(k % agents, f"path:src/g{k}/**") for k in range(agents * GLOBS)]
    for holder, glob in globs:
        token += 1
        log.write("acquire", glob, names[holder], mode="exclusive", ttl=86400.0, token=token)
    first = token - len(globs) + 1
    churn = events - claims - 2 * len(globs)
    for k in range(churn * 20 // 39):  # of 20 claim calls 19 granted (and released), 1 refused
        if k % 20 == 19:
            holder, glob = globs[(k // 20) % len(globs)]
            asker = names[(holder + 1) % agents]
            log.write(
                "refuse", glob.replace("**", "x.py"), asker, mode="exclusive", by=names[holder]
            )
            continue
        token += 1
        agent, resource = names[k % agents], f"issue:churn-{k}"
        log.write("acquire", resource, agent, mode="exclusive", ttl=86400.0, token=token)
        log.write("release", resource, agent, token=token)
    for n, (holder, glob) in enumerate(globs):
        log.write("release", glob, names[holder], token=first + n)
    log.close()
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


def compute_cpu(repo: Path) -> tuple[float, float]:
    """CPU seconds to read the whole log from the store, and then to compute its figures."""
    from dibs.integrations import metrics

    dibs = Coordinator(LocalStore(repo / ".git" / "dibs"))
    try:
        started = time.process_time()
        events = list(dibs.store.events(0))
        read = time.process_time() - started
        started = time.process_time()
        metrics.compute(events)
        return read, time.process_time() - started
    finally:
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
                    body = response.read()
                times.append(time.perf_counter() - started)  # the answer, not this client's parse
            state = json.loads(body)
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
        read, computed = compute_cpu(repo)
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
    refusals = report["claims"]["refusals"]
    print(
        f"metrics.compute over them ({refusals:,} refusals): {computed:.2f} s CPU"
        f" = {computed / read:.2f}x the CPU of reading them from the log ({read:.2f} s)"
    )


if __name__ == "__main__":
    main()
