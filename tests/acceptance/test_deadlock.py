"""Crossing ``--wait`` claims, as real processes, on the local store and on PostgreSQL.

Every waiter waits 60 s: a refusal that does not come shows as a waiter still sleeping past a
generous deadline, never as a timing assertion.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BIN, Cli

#: Far longer than a refusal takes, far shorter than the 60 s waits.
DEADLINE = 30.0


@pytest.fixture(params=["local", pytest.param("postgres", marks=pytest.mark.postgres)])
def swarm(request: pytest.FixtureRequest, repo: Path) -> Cli:
    """The CLI on either store."""
    cli = Cli(repo)
    if request.param == "postgres":
        database = request.getfixturevalue("pg_database")
        assert 0 == cli("init", "--store", database).returncode
    return cli


def start_wait(
    cli: Cli, env: dict[str, str], resource: str, procs: list[subprocess.Popen[Any]]
) -> subprocess.Popen[str]:
    """Start ``dibs claim RESOURCE --wait 60`` as *env*'s agent; return once its wait is logged."""
    proc = subprocess.Popen(
        [str(BIN / "dibs"), "claim", resource, "--wait", "60", "--json"],
        cwd=cli.cwd,
        env={**cli.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    procs.append(proc)
    agent = env["DIBS_AGENT"]
    give_up = time.monotonic() + DEADLINE
    while not any(e["agent"] == agent for e in cli.jsonl("log", "--op", "wait")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < give_up, f"{agent}'s wait was never recorded"
        time.sleep(0.1)
    return proc


def finish(proc: subprocess.Popen[str]) -> tuple[int, Any]:
    """The exit code and JSON output of a claim call (fails if it is still sleeping)."""
    out, _ = proc.communicate(timeout=DEADLINE)
    return proc.returncode, json.loads(out)


def test_two_agents_crossing_waits_the_second_is_refused_naming_the_cycle(
    swarm: Cli, procs: list[subprocess.Popen[Any]]
) -> None:
    """Bob's wait would close alice's: bob is refused at once (exit 3), alice keeps waiting."""
    alice, bob = swarm.register("alice"), swarm.register("bob")
    assert 0 == swarm("claim", "issue:A", env=alice).returncode
    assert 0 == swarm("claim", "issue:B", env=bob).returncode
    waiting = start_wait(swarm, alice, "issue:B", procs)
    refused = subprocess.Popen(
        [str(BIN / "dibs"), "claim", "issue:A", "--wait", "60", "--json"],
        cwd=swarm.cwd,
        env={**swarm.env, **bob},
        stdout=subprocess.PIPE,
        text=True,
    )
    procs.append(refused)
    code, err = finish(refused)
    assert (3, "deadlock") == (code, err["error"])
    assert (
        "deadlock: bob waits for issue:A held by alice, who waits for issue:B held by bob"
        == err["message"]
    )
    assert waiting.poll() is None
    assert 0 == swarm("release", "issue:B", env=bob).returncode
    code, granted = finish(waiting)
    assert (0, "alice") == (code, granted[0]["agent"])
    assert [] == [e for e in swarm.jsonl("log") if e["op"] == "wait" and e["agent"] == "bob"]
    refusals = [e for e in swarm.jsonl("log", "--op", "refuse") if e.get("reason") == "deadlock"]
    assert ["bob"] == [e["agent"] for e in refusals]


def test_three_agents_crossing_waits_the_one_closing_the_cycle_is_refused(
    swarm: Cli, procs: list[subprocess.Popen[Any]]
) -> None:
    """A cycle through three agents is refused to the one whose wait closes it."""
    a, b, c = swarm.register("alice"), swarm.register("bob"), swarm.register("carol")
    for env, issue in ((a, "issue:A"), (b, "issue:B"), (c, "issue:C")):
        assert 0 == swarm("claim", issue, env=env).returncode
    start_wait(swarm, a, "issue:B", procs)
    start_wait(swarm, b, "issue:C", procs)
    out = swarm("claim", "issue:A", "--wait", "60", "--json", env=c)
    assert 3 == out.returncode
    assert (
        "deadlock: carol waits for issue:A held by alice, who waits for issue:B held by bob, "
        "who waits for issue:C held by carol"
    ) == json.loads(out.stdout)["message"]


def test_a_killed_waiter_leaves_no_phantom_edge(
    swarm: Cli, procs: list[subprocess.Popen[Any]]
) -> None:
    """A SIGKILLed waiter's recorded wait does not refuse a later crossing wait."""
    alice, bob = swarm.register("alice"), swarm.register("bob")
    assert 0 == swarm("claim", "issue:A", env=alice).returncode
    assert 0 == swarm("claim", "issue:B", env=bob).returncode
    killed = start_wait(swarm, alice, "issue:B", procs)
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    waiting = start_wait(swarm, bob, "issue:A", procs)
    assert 0 == swarm("release", "issue:A", env=alice).returncode
    code, granted = finish(waiting)
    assert (0, "bob") == (code, granted[0]["agent"])


def test_a_wait_that_gives_up_drops_its_edge(
    swarm: Cli, procs: list[subprocess.Popen[Any]]
) -> None:
    """A wait that ran out is over: a later crossing wait is not refused because of it."""
    alice, bob = swarm.register("alice"), swarm.register("bob")
    assert 0 == swarm("claim", "issue:A", env=alice).returncode
    assert 0 == swarm("claim", "issue:B", env=bob).returncode
    assert 3 == swarm("claim", "issue:B", "--wait", "0.3", env=alice).returncode
    waiting = start_wait(swarm, bob, "issue:A", procs)
    assert 0 == swarm("release", "issue:A", env=alice).returncode
    code, granted = finish(waiting)
    assert (0, "bob") == (code, granted[0]["agent"])
    ends = [e for e in swarm.jsonl("log", "--op", "wait-end") if e["agent"] == "alice"]
    assert ["gave-up"] == [e["reason"] for e in ends]
