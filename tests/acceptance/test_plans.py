"""Plans: declare, check for collisions, commit all at once, archive."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from dibs.store.local import LocalStore
from tests.conftest import Cli, store_dir
from tests.faults.history import check


def test_three_overlapping_plans_are_found_with_resolutions(cli: Cli) -> None:
    """Collisions are found by glob intersection, with the matrix and three kinds of advice."""
    cli(
        "plan",
        "add",
        "--agent",
        "auth",
        "--issue",
        "ROOSE-158",
        "src/auth/**",
        "src/api/handler.py",
    )
    cli("plan", "add", "--agent", "db", "src/db/**", "src/types/index.ts")
    cli("plan", "add", "--agent", "api", "src/api/*.py", "path:src/types/index.ts")
    out = cli("plan", "check")
    assert 3 == out.returncode
    report = json.loads(cli("plan", "check", "--json").stdout)
    pairs = sorted((tuple(c["agents"]), c["example"]) for c in report["collisions"])
    assert [(("api", "auth"), "src/api/handler.py"), (("api", "db"), "src/types/index.ts")] == pairs
    assert {"auth": 1, "db": 1} == report["matrix"]["api"]
    assert 0 == report["matrix"]["auth"]["db"]
    advice = " ".join(report["suggestions"])
    assert "run sequentially: api; then auth, db" in advice
    assert "partition it" in advice
    assert "hand it to one agent" in advice


def test_plans_without_collisions_can_all_start(cli: Cli) -> None:
    """Disjoint plans: exit 0 and a clear go-ahead."""
    cli("plan", "add", "--agent", "a", "src/a/**")
    cli("plan", "add", "--agent", "b", "docs/*.md")
    out = cli("plan", "check")
    assert 0 == out.returncode
    assert "no collisions: every agent can start now" in out.stdout


def test_plan_commit_claims_all_or_nothing(cli: Cli) -> None:
    """A committed plan is claimed whole; a colliding plan claims nothing and says why."""
    a1, a2 = cli.register("a1"), cli.register("a2")
    cli("plan", "add", "src/auth/**", "--issue", "X-1", env=a1)
    cli("plan", "add", "src/lib/*.py", "src/auth/login.py", env=a2)
    done = cli("plan", "commit", env=a1)
    assert 0 == done.returncode, done.stderr
    assert {"path:src/auth/**", "issue:X-1"} == {c["resource"] for c in cli.json("claims")}
    refused = cli("plan", "commit", env=a2)
    assert 3 == refused.returncode
    assert "the plan of a2 collides" in refused.stderr
    assert "nothing was claimed" in refused.stderr
    assert [] == cli.json("claims", "--agent", "a2")
    listed = {p["agent"]: p["committed"] for p in cli.json("plan", "list")}
    assert {"a1": True, "a2": False} == listed


def test_bad_plans_change_nothing(cli: Cli, repo: Path) -> None:
    """Paths outside the repository, missing plans and missing agents are clear errors."""
    me = cli.register("a1")
    bad = cli("plan", "add", "../elsewhere/**", env=me)
    assert 2 == bad.returncode
    assert "contains '..'" in bad.stderr
    assert [] == cli.json("plan", "list")
    assert 1 == cli("plan", "commit", env=me).returncode
    assert 1 == cli("plan", "drop", "--agent", "nobody").returncode
    anonymous = cli("plan", "add", "src/**")
    assert 2 == anonymous.returncode
    assert "whose plan?" in anonymous.stderr


def test_archive_copies_events_and_clears_released_plans(cli: Cli, repo: Path) -> None:
    """archive writes the swarm's events to history/ and forgets plans whose claims are gone."""
    a1, a2 = cli.register("a1"), cli.register("a2")
    cli("plan", "add", "src/a/**", env=a1)
    cli("plan", "add", "src/b/**", env=a2)
    cli("plan", "commit", env=a1)
    cli("plan", "commit", env=a2)
    cli("release", "--all", env=a1)
    result = cli.json("archive")
    assert ["a1"] == result["cleared_plans"]
    lines = Path(result["path"]).read_text().splitlines()
    assert result["events"] == len(lines)
    assert Path(result["path"]).parent == store_dir(repo) / "history"
    assert ["a2"] == [p["agent"] for p in cli.json("plan", "list")]
    assert 1 == cli("archive").returncode  # nothing new since


COMMITTER = textwrap.dedent(
    """
    import json, sys
    from dibs import Coordinator
    from dibs.integrations import plans
    from dibs.ground.errors import Conflict
    dibs = Coordinator.open(sys.argv[1])
    name, mine = sys.argv[2], sys.argv[3:]
    dibs.register(name)
    plans.add(dibs, mine)
    sys.stdin.readline()
    try:
        plans.commit(dibs)
        print(json.dumps({"agent": name, "won": True}))
    except Conflict:
        print(json.dumps({"agent": name, "won": False}))
    """
)


def test_plan_commits_racing_from_many_processes(repo: Path, cli: Cli) -> None:
    """Six processes commit plans that overlap in a ring at the same moment: every overlap has
    one winner, and nobody holds half a plan."""
    n = 6
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(n):
            mine = [f"path:ring/f{i}.py", f"path:ring/f{(i + 1) % n}.py", f"path:own/a{i}/**"]
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", COMMITTER, str(repo), f"a{i}", *mine],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for p in procs:  # everyone is registered and planned; now go together
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results: list[dict[str, Any]] = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    finally:
        for p in procs:
            p.kill()
    winners = {int(r["agent"][1:]) for r in results if r["won"]}
    assert winners
    assert all((w + 1) % n not in winners for w in winners), "two neighbours both won"
    held: dict[str, set[str]] = {}
    for claim in cli.json("claims"):
        held.setdefault(claim["agent"], set()).add(claim["resource"])
    assert {f"a{w}" for w in winners} == set(held)
    assert all(len(resources) == 3 for resources in held.values()), "half a plan is held"
    check(LocalStore(store_dir(repo)).events()).assert_clean()
