"""The installed CLI with a PostgreSQL store: setting up, two hosts, moving a local store in."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import BIN, Cli, git, store_dir

pytestmark = pytest.mark.postgres


def test_init_with_store_sets_up_the_database_and_records_the_url(
    cli: Cli, repo: Path, pg_empty_database: str
) -> None:
    """`dibs init --store URL` makes schema and namespace, and writes store.url without password."""
    url = pg_empty_database.replace("@", ":s3cret@", 1)  # trust authentication ignores it
    out = cli("init", "--store", url)
    assert 0 == out.returncode, out.stderr
    assert "password was left out" in out.stdout
    settings = tomllib.loads((repo / "dibs.toml").read_text())
    assert "s3cret" not in (repo / "dibs.toml").read_text()
    assert settings["store"]["url"] == pg_empty_database
    status = cli.json("status")
    assert "namespace git-" in status["store"]
    env = cli.register("a1")
    assert 0 == cli("claim", "issue:1", env=env).returncode
    assert ["issue:1"] == [c["resource"] for c in cli.json("claims")]
    assert 0 == cli("doctor").returncode
    again = cli("init", "--store", pg_empty_database)
    assert 0 == again.returncode, again.stderr


def test_unreachable_store_is_a_clear_error_that_changes_nothing(cli: Cli, repo: Path) -> None:
    """A server that does not answer: exit 1, what to check, and no dibs.toml or store written."""
    out = cli("init", "--store", "postgresql://postgres@127.0.0.1:1/dibs")
    assert 1 == out.returncode
    assert "cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:1/dibs" in out.stderr
    assert "hint: check the host, port, user, password" in out.stderr
    assert not (repo / "dibs.toml").exists()
    assert not store_dir(repo).exists()
    bad = cli("init", "--store", "postgresql://h/db?nonsense=1")
    assert 2 == bad.returncode
    assert "not a valid PostgreSQL URL" in bad.stderr
    local = cli("init", "--store", "some-folder")
    assert 2 == local.returncode
    assert "takes a PostgreSQL URL" in local.stderr


def test_store_without_schema_says_to_run_init(cli: Cli, pg_empty_database: str) -> None:
    """DIBS_STORE pointing at a database dibs never set up: exit 1 and the command to run."""
    out = cli("status", env={"DIBS_STORE": pg_empty_database})
    assert 1 == out.returncode
    assert "dibs is not set up in the database" in out.stderr
    assert "dibs init --store URL" in out.stderr


def test_two_hosts_coordinate_through_one_database(
    tmp_path: Path, repo: Path, pg_database: str
) -> None:
    """Two clones with different host ids share claims; a dead pid counts on its own host only."""
    a = Cli(repo, env={"DIBS_HOST": "host-a"})
    assert 0 == a("init", "--store", pg_database).returncode
    git(repo, "add", "dibs.toml")
    git(repo, "commit", "-q", "-m", "share the dibs store")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    b = Cli(clone, env={"DIBS_HOST": "host-b"})
    assert a.json("status")["store"] == b.json("status")["store"]

    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        on_a = a.register("agent-a", "--pid", str(watched.pid))
        assert 0 == a("claim", "path:src/**", env=on_a).returncode
        on_b = b.register("agent-b")
        refused = b("claim", "path:src/app.py", "--json", env=on_b)
        assert 3 == refused.returncode
        assert "held by agent-a (via path:src/**)" in json.loads(refused.stdout)["message"]
    finally:
        watched.kill()
        watched.wait()
    # host-b cannot judge host-a's pid: the lease holds until its ttl.
    assert 3 == b("claim", "path:src/app.py", env=on_b).returncode
    # On host-a the dead pid evicts the holder at once.
    other_a = a.register("agent-a2")
    assert 0 == a("claim", "path:src/lib.py", env=other_a).returncode
    assert 0 == b("claim", "path:docs/**", env=on_b).returncode
    evictions = [e for e in b.jsonl("log", "-n", "50") if e["op"] == "auto-evict"]
    assert [("path:src/**", "holder-dead")] == [(e["resource"], e["reason"]) for e in evictions]
    assert a.json("status")["seq"] == b.json("status")["seq"]


def test_store_migrate_moves_the_log_and_live_claims(
    cli: Cli, repo: Path, pg_database: str
) -> None:
    """`dibs store migrate` copies everything; leases keep their time and tokens; the local
    store becomes a read-only backup."""
    assert 0 == cli("init").returncode
    env = cli.register("a1", "--ttl", "600")
    cli.json("claim", "issue:1", "path:src/**", env=env)
    cli.json("release", "path:src/**", env=env)
    before = cli.jsonl("log", "-n", "100")
    out = cli("store", "migrate", "--to", pg_database)
    assert 0 == out.returncode, out.stderr
    assert f"copied {len(before)} events (1 agents, 1 claims)" in out.stdout
    assert "namespace git-" in cli.json("status")["store"]
    assert before == cli.jsonl("log", "-n", "100")
    [claim] = cli.json("claims")
    assert ("issue:1", "a1", 1) == (claim["resource"], claim["agent"], claim["token"])
    assert 500 < claim["expires_in"] <= 600  # the local clock continues: not voided
    assert 0 == cli("renew", "issue:1", env=env).returncode  # the same session token works
    moved = cli("claim", "issue:2", env={**env, "DIBS_STORE": str(store_dir(repo))})
    assert 1 == moved.returncode
    assert "was moved to postgresql://" in moved.stderr
    again = cli("store", "migrate", "--to", pg_database)
    assert 2 == again.returncode
    assert "already uses" in again.stderr


def test_store_migrate_into_a_used_namespace_changes_nothing(
    cli: Cli, repo: Path, pg_database: str
) -> None:
    """The target namespace must be empty; on refusal the local store stays in use."""
    assert 0 == cli("init").returncode
    env = cli.register("a1")
    busy = Cli(repo, env={"DIBS_STORE": pg_database})
    assert 0 == busy("init").returncode
    busy.register("someone")
    out = cli("store", "migrate", "--to", pg_database)
    assert 2 == out.returncode
    assert "is not empty" in out.stderr
    assert 0 == cli("claim", "issue:1", env=env).returncode
    assert "url" not in tomllib.loads((repo / "dibs.toml").read_text()).get("store", {})


def test_two_hosts_land_through_one_queue_to_a_shared_remote(
    tmp_path: Path, repo: Path, pg_database: str
) -> None:
    """Two clones (host ids a and b) share one queue in PostgreSQL and land on one bare remote
    at the same moment: both branches land, the remote's main has both, each exactly once."""
    remote = tmp_path / "shared.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(remote))
    a = Cli(repo, env={"DIBS_HOST": "host-a"})
    assert 0 == a("init", "--store", pg_database).returncode
    text = (repo / "dibs.toml").read_text().replace('remote = ""', 'remote = "origin"')
    text = text.replace('# tests = "pytest -q"', 'tests = "test -f README.md"')
    (repo / "dibs.toml").write_text(text)
    git(repo, "add", "dibs.toml")
    git(repo, "commit", "-q", "-m", "share the store and the remote")
    git(repo, "remote", "add", "origin", str(remote))
    git(repo, "push", "-q", "origin", "main")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(remote), str(clone))
    git(clone, "config", "user.email", "b@dibs.invalid")
    git(clone, "config", "user.name", "host b")
    b = Cli(clone, env={"DIBS_HOST": "host-b"})
    procs = []
    for cli, where, name in ((a, repo, "A-1"), (b, clone, "B-1")):
        env = cli.register(f"agent-{name.lower()}")
        assert 0 == cli("claim", f"issue:{name}", env=env).returncode
        git(where, "checkout", "-q", "-b", f"agent/{name}")
        (where / f"{name}.txt").write_text(f"{name}\n")
        git(where, "add", f"{name}.txt")
        git(where, "commit", "-q", "-m", f"work on {name}")
        git(where, "checkout", "-q", "main")
        procs.append(
            subprocess.Popen(
                [str(BIN / "dibs"), "land", f"agent/{name}", "--json"],
                cwd=where,
                env={**cli.env, **env},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs = [p.communicate(timeout=120) for p in procs]
    assert [0, 0] == [p.returncode for p in procs], outs
    files = git(remote, "ls-tree", "-r", "--name-only", "main").split()
    assert {"A-1.txt", "B-1.txt"} <= set(files)
    log = git(remote, "log", "--format=%s", "main").splitlines()
    assert 1 == log.count("work on A-1")
    assert 1 == log.count("work on B-1")
    assert {"landed"} == {e["state"] for e in a.json("queue")}
    tip = git(remote, "rev-parse", "main").strip()
    assert tip in {e["commit"] for e in a.json("queue")}
    for where in (repo, clone):  # a clone's own main moved only if it processed, never astray
        git(where, "fetch", "-q", "origin")
        mine = git(where, "rev-parse", "main").strip()
        assert mine == git(where, "merge-base", mine, "origin/main").strip()


def test_a_libpq_connection_string_is_the_same_store_from_every_worktree(
    tmp_path: Path, repo: Path, pg_empty_database: str
) -> None:
    """store.url may be a libpq ``key=value`` string, as psycopg and psql take it: it is the
    PostgreSQL store (never a folder of that name, which every worktree would make anew), its
    password is left out of dibs.toml, and a worktree's calls reach the same namespace."""
    from psycopg import conninfo

    params = conninfo.conninfo_to_dict(pg_empty_database)
    keywords = conninfo.make_conninfo(**params, password="s3cret")  # noqa: S106 -- trust ignores it
    cli = Cli(repo)
    out = cli("init", "--store", keywords)
    assert 0 == out.returncode, out.stderr
    recorded = tomllib.loads((repo / "dibs.toml").read_text())["store"]["url"]
    assert "s3cret" not in recorded
    assert params == conninfo.conninfo_to_dict(recorded)
    git(repo, "add", "dibs.toml")
    git(repo, "commit", "-q", "-m", "share the dibs store")
    alice = cli.register("alice")
    assert 0 == cli("claim", "issue:7", env=alice).returncode
    tree = tmp_path / "tree"
    git(repo, "worktree", "add", "-q", "-b", "side", str(tree))
    there = Cli(tree)
    assert "namespace git-" in there.json("status")["store"]
    assert [("issue:7", "alice")] == [(c["resource"], c["agent"]) for c in there.json("claims")]
    assert 0 == there("heartbeat", env=alice).returncode
    assert not [p for p in [*repo.iterdir(), *tree.iterdir()] if "=" in p.name]
