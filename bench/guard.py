"""`dibs guard claude` end to end with 1,000 live claims, against `python -c pass`.

    python bench/guard.py [--claims N] [--runs N]

The edit guard runs on every edit an agent makes, so its whole cost — interpreter start,
imports, reading the store, checking the file — is what an agent waits for. Goal: p50 at most
2.5x `python -c pass` measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from dibs.core.events import new_event
from dibs.core.leases import Decision
from dibs.service import Coordinator
from dibs.store.local import LocalStore

BIN = Path(sys.executable).parent


def build(repo: Path, claims: int) -> dict[str, str]:
    """A store with *claims* live path claims by 20 agents; returns one agent's identity."""
    store = LocalStore(repo / ".git" / "dibs")
    dibs = Coordinator(store)
    names = [f"agent-{a}" for a in range(20)]
    for name in names:
        dibs.register(name, ttl=86400)
    me = dibs.register("editor", ttl=86400)

    def decide(state: Any, now: Any) -> Decision:
        token = state.last_token
        events = []
        for k in range(claims):
            token += 1
            kind = k % 3
            path = (
                f"src/pkg{k % 40}/module{k}.py"
                if kind == 0
                else f"src/pkg{k % 40}/sub{k}/**"
                if kind == 1
                else f"docs/part{k}/*.md"
            )
            events.append(
                new_event(
                    "acquire",
                    now,
                    resource=f"path:{path}",
                    agent=names[k % 20],
                    mode="exclusive",
                    token=token,
                    ttl=86400.0,
                )
            )
        return Decision(events)

    store.transact(decide)
    store.write_checkpoint()
    store.close()
    return {"DIBS_AGENT": "editor", "DIBS_TOKEN": me["token"]}


def times(
    argv: list[str], runs: int, *, stdin: str = "", env: dict[str, str] | None = None
) -> list[float]:
    import time

    out = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(argv, input=stdin, text=True, capture_output=True, env=env, check=False)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--claims", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dibs-bench-guard-") as tmp:
        repo = Path(tmp) / "repo"
        repo.mkdir()
        subprocess.run(["git", "init", "-q", str(repo)], check=True)
        identity = build(repo, args.claims)
        env = {**os.environ, **identity, "DIBS_HELPER": "off"}  # the direct call

        def payload(path: str) -> str:
            return json.dumps(
                {
                    "session_id": "bench",
                    "cwd": str(repo),
                    "hook_event_name": "PreToolUse",
                    "tool_name": "Write",
                    "tool_input": {"file_path": str(repo / path), "content": ""},
                }
            )

        guard = [str(BIN / "dibs"), "guard", "claude"]
        base = times([sys.executable, "-c", "pass"], args.runs)
        free = times(guard, args.runs, stdin=payload("src/pkg3/free.py"), env=env)
        held = times(guard, args.runs, stdin=payload("src/pkg1/module1.py"), env=env)
    p50 = statistics.median
    print(f"{args.claims:,} live claims; python -c pass p50 = {p50(base) * 1e3:.1f} ms")
    print("| edit guard | p50 | / python -c pass | goal |")
    print("|---|---|---|---|")
    for name, xs in (("free file (allowed)", free), ("held file (blocked)", held)):
        print(f"| {name} | {p50(xs) * 1e3:.1f} ms | {p50(xs) / p50(base):.2f}x | <= 2.5x |")


if __name__ == "__main__":
    main()
