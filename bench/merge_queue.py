"""The merge queue: landings per minute, its overhead over doing it by hand, gate runs saved.

    python bench/merge_queue.py [--branches N] [--rounds R]

1. Twenty branches queued, a trivial gate (`true`): one `dibs land` lands them all. Baseline, in
   the same run, on an identical repository: a script that does what the queue must do at the
   least — a temporary worktree, then per branch `git checkout`, `git rebase` onto the tip,
   the gate, `git status` of the main checkout (without it, moving main under someone's
   uncommitted edit of a landed file stages a revert there), `git update-ref` (the
   compare-and-swap) and `git read-tree -m -u` of the checkout — with the same git binary.
   Goal: the queue's wall time at most 1.3x the script's.
2. Batching: sixteen branches, one bad, `--batch 16`: gate runs (goal: well under 16).
3. Speculation: sixteen branches, a gate that sleeps 2 s (a test suite that waits, not one
   that needs the cores). Wall time of `--parallel 4` as a ratio to one at a time
   (`--parallel 1`), both in the same run on identical repositories (goal: at most 0.4x), and
   with one bad branch among the sixteen, the gate runs (goal: at most one per branch plus
   the rebuild of the entries that were being tested behind the bad one, at most 3).
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
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}


def git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout


def dibs(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(
        [str(BIN / "dibs"), *args],
        cwd=cwd,
        env={**ENV, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode not in (0, 3):
        raise SystemExit(f"dibs {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def make(root: Path, branches: int, gate: str, bad: int | None = None) -> Path:
    """A repository with *branches* agent branches (each adds a file), main moved on once."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "bench@dibs.invalid")
    git(repo, "config", "user.name", "bench")
    for n in range(50):
        (repo / f"file{n}.txt").write_text(f"{n}\n" * 20)
    (repo / "dibs.toml").write_text(f'[merge]\ntarget = "main"\n[gates]\ntests = "{gate}"\n')
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "initial")
    for n in range(branches):
        git(repo, "checkout", "-q", "-b", f"agent/B-{n}", "main")
        name = f"bad-{n}.txt" if n == bad else f"new-{n}.txt"
        (repo / name).write_text(f"branch {n}\n")
        git(repo, "add", name)
        git(repo, "commit", "-q", "-m", f"work {n}")
    git(repo, "checkout", "-q", "main")
    (repo / "moved.txt").write_text("main moved on\n")
    git(repo, "add", "moved.txt")
    git(repo, "commit", "-q", "-m", "main moves")
    return repo


def queue_all(repo: Path, branches: int) -> dict[str, str]:
    """Each branch's agent claims its issue; all but the last branch are queued."""
    dibs(repo, "init")
    env: dict[str, str] = {}
    for n in range(branches):
        reg = json.loads(dibs(repo, "agent", "register", f"a{n}", "--ttl", "3600", "--json"))
        env = {"DIBS_AGENT": reg["agent"], "DIBS_TOKEN": reg["token"]}
        dibs(repo, "claim", f"issue:B-{n}", env=env)
        if n < branches - 1:
            dibs(repo, "land", f"agent/B-{n}", "--queue-only", env=env)
    return env


def by_hand(repo: Path, branches: int) -> float:
    """What the queue does, minus the queue: rebase, gate, look, compare-and-swap, per branch."""
    started = time.perf_counter()
    work = repo / ".git" / "by-hand"
    tip = git(repo, "rev-parse", "main").strip()
    git(repo, "worktree", "add", "-q", "--detach", str(work), tip)
    for n in range(branches):
        git(work, "checkout", "-q", "--detach", f"agent/B-{n}")
        git(work, "rebase", "-q", tip)
        new = git(work, "rev-parse", "HEAD").strip()
        subprocess.run(["/bin/sh", "-c", "true"], cwd=work, check=True)
        git(repo, "status", "--porcelain", "-z", "--untracked-files=all")
        git(repo, "update-ref", "refs/heads/main", new, tip)
        git(repo, "read-tree", "-m", "-u", tip, new)
        tip = new
    git(repo, "worktree", "remove", "--force", str(work))
    return time.perf_counter() - started


def with_queue(
    repo: Path, env: dict[str, str], branch: str, batch: int = 1, parallel: int = 1
) -> tuple[float, dict[str, object]]:
    """The last agent's `dibs land`: it processes the whole queue, its own entry last."""
    started = time.perf_counter()
    flags = ["--batch", str(batch), "--parallel", str(parallel)]
    out = dibs(repo, "land", branch, *flags, "--json", env=env)
    return time.perf_counter() - started, json.loads(out)


SLEEPY = "sleep 2"
SLEEPY_BAD = 'sleep 2; test -z \\"$(ls bad-* 2>/dev/null)\\"'


def speculation(rounds: int) -> None:
    """Sixteen branches through a 2 s gate: four at once against one at a time."""
    ratios, serials, parallels = [], [], []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            one = make(Path(a), 16, SLEEPY)
            four = make(Path(b), 16, SLEEPY)
            serial, _ = with_queue(one, queue_all(one, 16), "agent/B-15", parallel=1)
            parallel, _ = with_queue(four, queue_all(four, 16), "agent/B-15", parallel=4)
            for repo in (one, four):
                landed = git(repo, "log", "--format=%s", "main").count("work ")
                assert landed == 16, f"only {landed} landed"
            assert git(one, "rev-parse", "main^{tree}") == git(four, "rev-parse", "main^{tree}")
            serials.append(serial)
            parallels.append(parallel)
            ratios.append(parallel / serial)
    print(f"16 branches, a gate that sleeps 2 s (median of {rounds} rounds)")
    print(f"  one at a time (--parallel 1): {statistics.median(serials):6.2f} s")
    print(f"  speculative (--parallel 4)  : {statistics.median(parallels):6.2f} s")
    print(f"  ratio                       : {statistics.median(ratios):6.2f}x  (goal <= 0.4x)")
    with tempfile.TemporaryDirectory() as c:
        repo = make(Path(c), 16, SLEEPY_BAD, bad=11)
        _, result = with_queue(repo, queue_all(repo, 16), "agent/B-15", parallel=4)
        states = json.loads(dibs(repo, "queue", "--json"))
        failed = [e["branch"] for e in states if e["state"] == "failed"]
        landed = sum(1 for e in states if e["state"] == "landed")
        order = git(repo, "log", "--reverse", "--format=%s", "main").split("\n")
        expected = [f"work {n}" for n in range(16) if n != 11]
        assert [line for line in order if line.startswith("work ")] == expected, order
    print("16 branches with one bad (agent/B-11), --parallel 4")
    print(
        f"  gate runs: {result['gate_runs']} (goal <= 16 + 3); landed {landed} in order, "
        f"failed {failed}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--branches", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", choices=("landing", "speculation"), help="run one part (default: all)"
    )
    args = parser.parse_args()
    if args.only != "speculation":
        landing(args)
    if args.only != "landing":
        speculation(args.rounds)


def landing(args: argparse.Namespace) -> None:
    """Parts 1 and 2: the queue's overhead over a script, and batching."""
    ratios, hands, queues = [], [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            hand_repo = make(Path(a), args.branches, "true")
            queue_repo = make(Path(b), args.branches, "true")
            last = queue_all(queue_repo, args.branches)
            hand = by_hand(hand_repo, args.branches)
            took, _ = with_queue(queue_repo, last, f"agent/B-{args.branches - 1}")
            landed = git(queue_repo, "log", "--format=%s", "main").count("work ")
            assert landed == args.branches, f"only {landed} landed"
            assert git(hand_repo, "rev-parse", "main^{tree}") == git(
                queue_repo, "rev-parse", "main^{tree}"
            ), "the queue and the script disagree on the result"
            hands.append(hand)
            queues.append(took)
            ratios.append(took / hand)
    hand, took = statistics.median(hands), statistics.median(queues)
    print(f"land {args.branches} queued branches, trivial gate (median of {args.rounds} rounds)")
    print(
        f"  by hand (rebase, gate, update-ref): {hand:6.2f} s  {60 * args.branches / hand:6.0f}/min"
    )
    print(
        f"  dibs land (one processor)         : {took:6.2f} s  {60 * args.branches / took:6.0f}/min"
    )
    print(
        f"  overhead ratio                    : {statistics.median(ratios):6.2f}x  (goal <= 1.3x)"
    )
    with tempfile.TemporaryDirectory() as c:
        repo = make(Path(c), 16, 'test -z \\"$(ls bad-* 2>/dev/null)\\"', bad=11)
        last = queue_all(repo, 16)
        _, result = with_queue(repo, last, "agent/B-15", batch=16)
        states = json.loads(dibs(repo, "queue", "--json"))
        failed = [e["branch"] for e in states if e["state"] == "failed"]
        landed = sum(1 for e in states if e["state"] == "landed")
    print("batch of 16 with one bad branch (agent/B-11), --batch 16")
    print(f"  gate runs: {result['gate_runs']} (one by one: 17); landed {landed}, failed {failed}")


if __name__ == "__main__":
    main()
