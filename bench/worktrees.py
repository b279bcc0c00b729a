"""`dibs start` + `dibs finish` end to end, against raw `git worktree add` + `remove`.

    python bench/worktrees.py [--rounds N] [--files F...]

Each round: `dibs start ISSUE` (claim, worktree, branch, identity file, record) then `dibs
finish ISSUE` (what would be lost? release, remove, delete the branch), as two CLI processes;
the baseline, in the same run and repository: `git worktree add -b BRANCH PATH main`, `git
worktree remove PATH`, `git branch -D BRANCH`. Goal: at most 1.5x. The ratio shrinks as the
checkout grows, so it is measured for a small and a mid-sized repository.
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


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def dibs(cwd: Path, *args: str, env: dict[str, str]) -> str:
    out = subprocess.run(
        [str(BIN / "dibs"), *args],
        cwd=cwd,
        env={**ENV, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise SystemExit(f"dibs {' '.join(args)} failed: {out.stderr}")
    return out.stdout


def make(root: Path, files: int) -> Path:
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "bench@dibs.invalid")
    git(repo, "config", "user.name", "bench")
    for n in range(files):
        folder = repo / f"pkg{n % 40}"
        folder.mkdir(exist_ok=True)
        (folder / f"module{n}.py").write_text(f"# module {n}\n" + "x = 1\n" * 40)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "initial")
    dibs(repo, "init", env={})
    return repo


def measure(files: int, rounds: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        repo = make(Path(tmp), files)
        reg = json.loads(
            dibs(repo, "agent", "register", "bench", "--ttl", "3600", "--json", env={})
        )
        env = {"DIBS_AGENT": "bench", "DIBS_TOKEN": reg["token"]}
        raw, ours = [], []
        for n in range(rounds + 1):
            started = time.perf_counter()
            path = repo.parent / f"raw-{n}"
            git(repo, "worktree", "add", "-q", "-b", f"raw/{n}", str(path), "main")
            git(repo, "worktree", "remove", str(path))
            git(repo, "branch", "-D", f"raw/{n}")
            raw.append(time.perf_counter() - started)
            started = time.perf_counter()
            dibs(repo, "start", f"B-{n}", env=env)
            dibs(repo, "finish", f"B-{n}", env=env)
            ours.append(time.perf_counter() - started)
        return statistics.median(raw[1:]), statistics.median(ours[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--files", type=int, nargs="+", default=[20, 2000])
    args = parser.parse_args()
    print("dibs start + dibs finish vs git worktree add + remove + branch -D (median)")
    for files in args.files:
        raw, ours = measure(files, args.rounds)
        print(
            f"  {files:>5} files: git {raw * 1000:6.1f} ms, dibs {ours * 1000:6.1f} ms, "
            f"ratio {ours / raw:4.2f}x (goal <= 1.5x)"
        )


if __name__ == "__main__":
    main()
