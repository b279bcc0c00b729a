"""Agents without shell glue: task sources, ready/next under concurrency, shared rate limits,
versioned documents, and the MCP server driven by the SDK's own client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli, git


@pytest.fixture
def cli(repo: Path) -> Cli:
    out = Cli(repo)
    assert 0 == out("init").returncode
    return out


def settings(repo: Path, sources: list[str]) -> None:
    path = repo / "dibs.toml"
    text = path.read_text().replace("[tasks]\n", f"[tasks]\nsources = {json.dumps(sources)}\n", 1)
    path.write_text(text)


#: A person acting as themselves (the acts below are not an agent's).
OP = "--as-operator"


def spawn(repo: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    return subprocess.Popen(
        [str(BIN / "dibs"), *args],
        cwd=repo,
        env={**base, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# Task sources -----------------------------------------------------------------------------


def test_each_task_source_format_with_malformed_files(repo: Path, cli: Cli) -> None:
    epic = repo / "epic"
    epic.mkdir()
    (epic / "001.md").write_text(
        "---\nname: Schema\nstatus: open\ndepends_on: []\nparallel: true\n---\nbody\n"
    )
    (epic / "002.md").write_text(
        "---\nname: API\nstatus: open\ndepends_on: [001]\nconflicts_with:\n  - 003\n---\n"
    )
    (epic / "003.md").write_text("---\nname: Docs\nstatus: closed\n---\n")
    (epic / "004.md").write_text("no frontmatter here\n")
    (epic / "005.md").write_text("---\nname: Broken\nthis is not yaml\n---\n")
    (repo / "issues.jsonl").write_text(
        '{"id": "bd-1", "title": "Login", "status": "open", "priority": 0}\n'
        "{not json\n"
        '{"id": "bd-2", "title": "Logout", "status": "open", "priority": 1,'
        ' "dependencies": [{"depends_on_id": "bd-1", "type": "blocks"}]}\n'
        '{"title": "no id"}\n'
    )
    (repo / "tasks.toml").write_text(
        '[[task]]\nid = "T-1"\ntitle = "Own"\npriority = 5\ndepends_on = ["001"]\n'
    )
    settings(repo, ["epic/", "issues.jsonl", "tasks.toml"])
    out = cli("ready", "--all", "--json")
    assert 0 == out.returncode, out.stderr
    report = json.loads(out.stdout)
    problems = "\n".join(report["problems"])
    assert "epic/004.md:1: no frontmatter" in problems
    assert "epic/005.md:3: cannot read 'this is not yaml'" in problems
    assert "issues.jsonl:2: not JSON" in problems
    assert "issues.jsonl:4: not a task" in problems
    assert "skipped" in out.stderr
    assert ["bd-1", "001"] == [t["id"] for t in report["ready"]]  # priority 0 first
    why = {t["id"]: t["why"] for t in report["tasks"]}
    assert ["waits for 001"] == why["002"]
    assert ["blocked by bd-1"] == why["bd-2"]
    assert ["done"] == why["003"]
    assert ["waits for 001"] == why["T-1"]


def test_next_respects_dependencies_and_conflicts(repo: Path, cli: Cli) -> None:
    (repo / "tasks.toml").write_text(
        '[[task]]\nid = "A"\npriority = 1\n'
        '[[task]]\nid = "B"\ndepends_on = ["A"]\npriority = 0\n'
        '[[task]]\nid = "C"\nconflicts_with = ["A"]\npriority = 2\n'
        '[[task]]\nid = "D"\npriority = 3\n'
    )
    env = cli.register("worker")
    assert "A" == cli.json("next", env=env)["id"]  # B waits for A
    assert "D" == cli.json("next", env=env)["id"]  # C conflicts with A, in progress
    out = cli("next", env=env)
    assert 1 == out.returncode
    assert "nothing is ready" in out.stderr
    assert "B: waits for A" in out.stderr


@pytest.mark.parametrize("store", ["local", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_next_wait_takes_a_task_once_its_holder_lets_go(
    repo: Path, store: str, request: pytest.FixtureRequest
) -> None:
    """`dibs next --wait` with nothing ready stays in the one call (no agent-side polling)
    and takes the task the moment its holder, another process, lets go of it (on
    PostgreSQL: woken by the namespace's notification)."""
    cli = Cli(repo)
    shared = store == "postgresql"
    out = cli(
        "init", *(["--store", request.getfixturevalue("pg_empty_database")] if shared else [])
    )
    assert 0 == out.returncode, out.stderr
    (repo / "tasks.toml").write_text('[[task]]\nid = "A"\n')
    holder = cli.register("holder")
    assert "A" == cli.json("next", env=holder)["id"]
    waiter = spawn(repo, "next", "--wait", "120", "--json", env=cli.register("waiter"))
    try:
        time.sleep(1.0)
        assert waiter.poll() is None, waiter.communicate()  # still waiting: A is held
        assert 0 == cli("release", "issue:A", env=holder).returncode
        out, err = waiter.communicate(timeout=120)
    finally:
        waiter.kill()
    assert 0 == waiter.returncode, err
    assert "A" == json.loads(out)["id"]
    assert [("issue:A", "waiter")] == [(c["resource"], c["agent"]) for c in cli.json("claims")]


def test_next_wait_gives_up_and_says_why(repo: Path, cli: Cli) -> None:
    """Nothing ready by the end of the wait: exit 1, why each task is not ready, how long it
    waited; a wrong token is told at once, never waited on."""
    (repo / "tasks.toml").write_text('[[task]]\nid = "A"\n[[task]]\nid = "B"\ndepends_on = ["A"]\n')
    holder = cli.register("holder")
    assert "A" == cli.json("next", env=holder)["id"]
    waiter = cli.register("waiter")
    out = cli("next", "--wait", "0.5", env=waiter)
    assert 1 == out.returncode
    assert "nothing is ready" in out.stderr
    assert "B: waits for A" in out.stderr
    assert "gave up after waiting" in out.stderr
    wrong = {**waiter, "DIBS_TOKEN": "not-the-token"}
    refused = spawn(repo, "next", "--wait", "600", env=wrong)
    try:
        _, err = refused.communicate(timeout=60)  # it would wait 600 s if it did not check
    finally:
        refused.kill()
    assert 0 != refused.returncode
    assert "wrong or missing session token" in err
    tokenless = spawn(repo, "next", "--wait", "600", env={"DIBS_AGENT": "waiter"})
    try:
        _, err = tokenless.communicate(timeout=60)
    finally:
        tokenless.kill()
    assert 0 != tokenless.returncode
    assert "token" in err
    assert [("issue:A", "holder")] == [(c["resource"], c["agent"]) for c in cli.json("claims")]


def test_steal_takes_a_stale_holders_task(repo: Path, cli: Cli) -> None:
    """A holder that stopped heartbeating (stale) while its lease still runs: --steal takes
    the task over and the log says who took it from whom and why. A dead holder's task needs
    no stealing: the next claim evicts it (holder-dead)."""
    (repo / "tasks.toml").write_text('[[task]]\nid = "S"\n')
    ghost = cli.register("ghost", "--ttl", "1")
    assert "S" == cli.json("next", "--ttl", "600", env=ghost)["id"]
    time.sleep(1.5)  # no heartbeat within its 1 s: stale, but the lease has 600 s
    thief = cli.register("thief")
    assert 1 == cli("next", env=thief).returncode  # held: not ready without --steal
    stolen = cli.json("next", "--steal", env=thief)
    assert ("S", True) == (stolen["id"], stolen["stolen"])
    evictions = [e for e in cli.jsonl("log", "-n", "20") if e["op"] == "force-evict"]
    assert "stolen: ghost is stale" == evictions[-1]["reason"]
    assert "thief" == evictions[-1]["by"]


def test_next_from_16_processes_over_50_tasks(repo: Path, cli: Cli) -> None:
    """Every task is taken exactly once, and none before its dependencies are done. Workers
    close a task by rewriting its own markdown file (status: closed), as CCPM does."""
    folder = repo / "tasks"
    folder.mkdir()
    deps = {n: ([f"t{n - 10}"] if n >= 10 and n % 3 == 0 else []) for n in range(50)}
    for n in range(50):
        (folder / f"t{n}.md").write_text(
            f"---\nname: task {n}\nstatus: open\npriority: {n % 5}\n"
            f"depends_on: [{', '.join(deps[n])}]\n---\n"
        )
    settings(repo, ["tasks/"])
    worker = (
        "import json, os, subprocess, sys, time\n"
        "dibs, name, folder, log = sys.argv[1:5]\n"
        "reg = json.loads(subprocess.run([dibs, 'agent', 'register', name, '--json'],\n"
        "                 capture_output=True, text=True, check=True).stdout)\n"
        "env = dict(os.environ, DIBS_AGENT=reg['agent'], DIBS_TOKEN=reg['token'])\n"
        "while True:\n"
        "    out = subprocess.run([dibs, 'next', '--json'], capture_output=True, text=True,\n"
        "                         env=env)\n"
        "    if out.returncode != 0:\n"
        "        if 'waits for' in out.stderr or 'held by' in out.stderr:\n"
        "            time.sleep(0.05)\n"
        "            continue\n"
        "        break\n"
        "    task = json.loads(out.stdout)['id']\n"
        "    with open(log, 'a') as f: f.write(f'taken {task} {time.time()}\\n')\n"
        "    path = os.path.join(folder, task + '.md')\n"
        "    text = open(path).read().replace('status: open', 'status: closed')\n"
        "    with open(path + '.tmp', 'w') as f: f.write(text)\n"
        "    os.replace(path + '.tmp', path)\n"
        "    with open(log, 'a') as f: f.write(f'done {task} {time.time()}\\n')\n"
    )
    log = repo / ".git" / "work.log"
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", worker, str(BIN / "dibs"), f"w{n}", str(folder), str(log)],
            cwd=repo,
            env=base,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(16)
    ]
    for proc in procs:
        proc.communicate(timeout=600)
    taken: dict[str, float] = {}
    done: dict[str, float] = {}
    for line in log.read_text().splitlines():
        what, task, at = line.split()
        assert task not in (taken if what == "taken" else done), f"{task} {what} twice"
        (taken if what == "taken" else done)[task] = float(at)
    assert {f"t{n}" for n in range(50)} == set(taken)
    for n, needs in deps.items():
        for dep in needs:
            assert done[dep] < taken[f"t{n}"], f"t{n} was taken before {dep} was done"
    acquired = [e["resource"] for e in cli.jsonl("log", "--since", "0") if e["op"] == "acquire"]
    assert len(acquired) == len(set(acquired)) == 50  # no issue granted twice


# Rate limits ------------------------------------------------------------------------------


def test_limit_update_from_headers_and_bad_input(repo: Path, cli: Cli) -> None:
    assert 0 == cli("limit", "set", "gh", "--capacity", "10", "--per", "3600", OP).returncode
    reset = str(time.time() + 3600)
    updated = cli("limit", "update", "gh", "--remaining", "1", "--reset-at", reset, OP)
    assert 0 == updated.returncode
    assert 0 == cli("limit", "take", "gh").returncode
    out = cli("limit", "take", "gh", "--json")
    assert 3 == out.returncode
    assert json.loads(out.stdout)["retry_after"] > 3000
    for args, code in (
        (["limit", "set", "bad name", "--capacity", "1", "--per", "1"], 2),
        (["limit", "set", "x", "--capacity", "0", "--per", "1"], 2),
        (["limit", "take", "nope"], 1),
        (["limit", "update", "gh", "--remaining", "1", "--reset-at", "soon"], 2),
        (["limit", "take", "gh", "--cost", "11"], 2),
    ):
        assert code == cli(*args).returncode, args


def test_sixteen_takers_never_overdraw_the_bucket(repo: Path, cli: Cli) -> None:
    """Capacity 20 per day (no refill to speak of): 16 processes x 3 takes = 48 asks, exactly
    20 granted, and the bucket never goes below zero."""
    assert 0 == cli("limit", "set", "api", "--capacity", "20", "--per", "86400", OP).returncode
    script = (
        "import subprocess, sys\n"
        "ok = 0\n"
        "for _ in range(3):\n"
        "    took = subprocess.run([sys.argv[1], 'limit', 'take', 'api'], capture_output=True)\n"
        "    ok += took.returncode == 0\n"
        "print(ok)\n"
    )
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(BIN / "dibs")],
            cwd=repo,
            env=base,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(16)
    ]
    granted = sum(int(p.communicate(timeout=300)[0]) for p in procs)
    assert 20 == granted
    takes = [e for e in cli.jsonl("log", "--since", "0") if e["op"] == "limit-take"]
    assert 20 == len(takes)
    assert min(e["value"]["tokens"] for e in takes) >= 0


def test_python_context_manager(repo: Path, cli: Cli) -> None:
    from dibs import Coordinator
    from dibs.integrations import limits

    with Coordinator.open(repo) as dibs:
        limits.set_limit(dibs, "py", capacity=1, per=0.2, as_operator=True)
        with limits.taking(dibs, "py") as taken:
            assert 0 == pytest.approx(taken["remaining"], abs=0.05)
        with limits.taking(dibs, "py", wait=10) as again:  # refills in 0.2 s
            assert again["cost"] == 1


# Documents --------------------------------------------------------------------------------


def test_document_versions_markdown_and_plain(repo: Path, cli: Cli) -> None:
    (repo / "plan.md").write_text("---\ntitle: Plan\n---\nv0\n")
    assert "0" == cli("doc", "read", "plan.md").stdout.strip()
    out = cli(
        "doc", "write", "plan.md", "--if-version", "0", OP, stdin="---\ntitle: Plan\n---\nv1\n"
    )
    assert 0 == out.returncode, out.stderr
    assert "version: 1" in (repo / "plan.md").read_text()
    assert "title: Plan" in (repo / "plan.md").read_text()
    stale = cli("doc", "write", "plan.md", "--if-version", "0", "--json", OP, stdin="lost\n")
    assert 3 == stale.returncode
    assert 1 == json.loads(stale.stdout)["current"]
    assert "v1" in (repo / "plan.md").read_text()
    (repo / "notes.txt").write_text("plain\n")
    assert (
        0 == cli("doc", "write", "notes.txt", "--if-version", "0", OP, stdin="plain 1\n").returncode
    )
    assert "plain 1\n" == (repo / "notes.txt").read_text()  # no frontmatter added
    assert "1" == cli("doc", "read", "notes.txt").stdout.strip()
    assert 2 == cli("doc", "write", "../outside.txt", "--if-version", "0", stdin="x").returncode


def test_document_cas_race_has_exactly_one_winner_per_version(repo: Path, cli: Cli) -> None:
    (repo / "shared.md").write_text("---\n---\nstart\n")
    procs = [spawn(repo, "doc", "write", "shared.md", "--if-version", "0", OP) for _ in range(12)]
    for _n, proc in enumerate(procs):
        assert proc.stdin is None
    outs = []
    for _n, proc in enumerate(procs):
        outs.append(proc.communicate(timeout=120))
    codes = [p.returncode for p in procs]
    assert 1 == codes.count(0), outs
    assert 11 == codes.count(3)
    assert "1" == cli("doc", "read", "shared.md").stdout.strip()


# MCP --------------------------------------------------------------------------------------


def test_mcp_client_round_trips(repo: Path, cli: Cli) -> None:
    """The SDK's own client launches `dibs mcp` over stdio: tools listed with schemas, a claim
    granted, a second agent refused with the CLI's message and code, then released."""
    pytest.importorskip("mcp", reason="pip install 'dibs[mcp]'")
    import anyio
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    (repo / "tasks.toml").write_text('[[task]]\nid = "M-1"\ntitle = "via MCP"\n')
    base = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}

    def server() -> Any:
        return StdioServerParameters(
            command=str(BIN / "dibs"), args=["mcp", "-C", str(repo)], env=base, cwd=str(repo)
        )

    def text(result: Any) -> str:
        return "".join(getattr(c, "text", "") for c in result.content)

    async def main() -> None:
        async with Client(server()) as one, Client(server()) as two:
            tools = {t.name: t for t in (await one.list_tools()).tools}
            assert {"register", "claim", "release", "next", "start", "finish", "land"} <= set(tools)
            assert "resources" in json.dumps(tools["claim"].input_schema)
            assert not (await one.call_tool("register", {"name": "mcp-a"})).is_error
            assert not (await two.call_tool("register", {"name": "mcp-b"})).is_error
            granted = await one.call_tool("claim", {"resources": ["issue:X"]})
            assert not granted.is_error, text(granted)
            refused = await two.call_tool("claim", {"resources": ["issue:X"]})
            assert refused.is_error
            said = text(refused)
            assert "dibs: issue:X is held by mcp-a" in said
            assert '"error": "conflict"' in said
            assert '"exit_code": 3' in said
            task = await two.call_tool("next", {})
            assert not task.is_error
            assert "M-1" in text(task)
            assert not (await one.call_tool("release", {})).is_error
            assert ["issue:M-1"] == [c["resource"] for c in cli.json("claims")]

    anyio.run(main)
    assert [] == cli.json("claims")  # the clients are gone: so are their agents
    out = cli("mcp", "--print-config")
    assert json.loads(out.stdout)["mcpServers"]["dibs"]["args"] == ["mcp", "-C", str(repo)]
    git(repo, "status")
