"""A CLI call and the edit guard on the PostgreSQL store, end to end, against `python -c pass`.

    python -P bench/postgres_cli.py [--runs N] [--url postgresql://USER@HOST/DB]

What an agent waits for on every claim and every edit: interpreter start, imports, reaching the
store, deciding, answering. Three ways, interleaved round by round with `python -c pass` (the
baseline, measured in the same run):

* through the helper (`dibs.faces.cli.helper`, a warm per-user server the CLI hands its calls to);
* direct (``DIBS_HELPER=off``: the call imports psycopg and connects itself);

for ``dibs claim`` + ``dibs release`` of a path (two calls; the figure is one call, their mean)
and ``dibs guard claude`` deciding a Write of a free file (the edit hook). Goal: at most 4x
`python -c pass`, median, through the helper. `make bench-postgres` runs it after
bench/postgres.py; it makes and drops its own database.
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
from typing import Any

BIN = Path(sys.executable).parent
ADMIN = os.environ.get("DIBS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def timed(argv: list[str], env: dict[str, str], cwd: str, stdin: str = "") -> float:
    t = time.perf_counter()
    out = subprocess.run(
        argv, env=env, cwd=cwd, input=stdin, capture_output=True, text=True, check=False
    )
    took = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({out.returncode}): {out.stderr}")
    return took


def git(cwd: str, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def setup(url: str, folder: str) -> tuple[str, dict[str, str], str]:
    """A repository on the store *url*, one agent; (repo, its environment, a guard payload)."""
    repo = os.path.join(folder, "repo")
    os.mkdir(repo)
    git(repo, "init", "-q", "-b", "main")
    git(
        repo,
        "-c",
        "user.name=b",
        "-c",
        "user.email=b@b.invalid",
        "commit",
        "-q",
        "--allow-empty",
        "-m",
        "root",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    env["XDG_RUNTIME_DIR"] = os.path.join(folder, "run")
    os.mkdir(env["XDG_RUNTIME_DIR"], 0o700)
    env["DIBS_NAMESPACE"] = "bench-cli"
    off = {**env, "DIBS_HELPER": "off"}
    subprocess.run(
        [str(BIN / "dibs"), "init", "--store", url],
        cwd=repo,
        env=off,
        check=True,
        capture_output=True,
    )
    out = subprocess.run(
        [str(BIN / "dibs"), "agent", "register", "bench", "--ttl", "3600", "--json"],
        cwd=repo,
        env=off,
        check=True,
        capture_output=True,
        text=True,
    )
    env["DIBS_AGENT"] = "bench"
    env["DIBS_TOKEN"] = json.loads(out.stdout)["token"]
    payload = json.dumps(
        {
            "session_id": "bench",
            "cwd": repo,
            "hook_event_name": "PreToolUse",
            "tool_name": "Write",
            "tool_input": {"file_path": os.path.join(repo, "src", "free.py"), "content": ""},
        }
    )
    return repo, env, payload


def start_helper(env: dict[str, str], repo: str) -> subprocess.Popen[bytes]:
    server = subprocess.Popen(
        [sys.executable, "-m", "dibs.faces.cli.helper_server"],
        env=env,
        cwd=repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    only = {**env, "DIBS_HELPER": "only"}
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [str(BIN / "dibs"), "claims"], env=only, cwd=repo, capture_output=True, check=False
        )
        if probe.returncode == 0:
            return server
        time.sleep(0.05)
    server.kill()
    raise SystemExit("the helper did not start")


def measure(url: str, runs: int) -> list[dict[str, Any]]:
    """Rows: (figure, median ms, python -c pass median ms, ratio)."""
    with tempfile.TemporaryDirectory(prefix="dibs-bench-cli-") as folder:
        repo, env, payload = setup(url, folder)
        dibs = str(BIN / "dibs")
        modes = {"helper": {**env, "DIBS_HELPER": "only"}, "direct": {**env, "DIBS_HELPER": "off"}}
        # A direct call on PostgreSQL starts the helper itself; the bench starts it beforehand
        # so that the rounds measure one state of affairs.
        server = start_helper(env, repo)
        samples: dict[str, list[float]] = {"base": []}
        try:
            for k in range(runs + 3):
                row: dict[str, float] = {"base": timed([sys.executable, "-c", "pass"], env, repo)}
                for mode, menv in modes.items():
                    if mode == "direct" and k % 3:
                        continue  # direct calls are slow: every third round
                    claim = timed([dibs, "claim", f"path:bench/{mode}{k}.py"], menv, repo)
                    release = timed([dibs, "release", f"path:bench/{mode}{k}.py"], menv, repo)
                    row[f"{mode} claim/release"] = (claim + release) / 2
                    row[f"{mode} guard"] = timed([dibs, "guard", "claude"], menv, repo, payload)
                if k < 3:
                    continue  # warm-up rounds: caches, the helper's spare
                for name, value in row.items():
                    samples.setdefault(name, []).append(value)
        finally:
            server.kill()
            server.wait()
    base = statistics.median(samples.pop("base"))
    rows = []
    for name, values in samples.items():
        p50 = statistics.median(values)
        rows.append({"figure": name, "ms": p50 * 1e3, "base_ms": base * 1e3, "ratio": p50 / base})
    return rows


def report(rows: list[dict[str, Any]]) -> None:
    print()
    print("CLI on PostgreSQL, end to end, median / python -c pass median (same run); goal <= 4x")
    print(f"{'figure':<44}{'ms':>10}{'pass ms':>10}{'ratio':>8}")
    for row in rows:
        print(f"{row['figure']:<44}{row['ms']:>10.1f}{row['base_ms']:>10.1f}{row['ratio']:>7.2f}x")
    worst = max(r["ratio"] for r in rows if r["figure"].startswith("helper"))
    print(
        f"goal: a call and the edit guard through the helper <= 4x python -c pass: "
        f"{worst:.2f}x ({'met' if worst <= 4 else 'missed'})"
    )


def as_url(conninfo: str, dbname: str) -> str:
    """*conninfo* (a URL or ``key=value`` words) as the ``postgresql://`` URL the CLI takes, for
    the database *dbname*."""
    import psycopg

    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    return "postgresql://{user}@{host}:{port}/{dbname}".format(
        user=params.get("user", "postgres"),
        host=params.get("host", "127.0.0.1"),
        port=params.get("port", 5432),
        dbname=dbname,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--url", default=ADMIN, help="an admin URL (may create databases)")
    args = parser.parse_args()
    import psycopg
    from psycopg import sql

    dbname = f"dibs_bench_cli_{os.getpid()}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    try:
        report(measure(as_url(args.url, dbname), args.runs))
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname))
            )


if __name__ == "__main__":
    main()
