"""The merge queue tests several entries at once (``merge.parallel``), each on those ahead of it.

Real repositories, real `dibs` processes, real gates. The gates write what they ran on to a
file, so the tests see which commit (and which speculation) every gate run saw.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.acceptance.test_queue import agent_with_issue, branch, main_files, settings
from tests.conftest import BIN, Cli, git


def logging_gate(runs: Path, check: str = "true", extra: str = "") -> str:
    """A gate command (TOML-quoted) that appends ``ISSUE COMMIT PARENT [bad files]`` to *runs*,
    then runs *check*."""
    line = f"echo $DIBS_LAND_ISSUES $(git rev-parse HEAD HEAD^) $(ls bad-* 2>/dev/null) >> {runs}"
    return json.dumps(f"{extra}{line}; {check}")


def gate_runs(runs: Path) -> list[list[str]]:
    """The lines *runs* holds, split: [issue, commit, parent, bad files...]."""
    if not runs.exists():
        return []
    return [line.split() for line in runs.read_text().splitlines() if line.strip()]


def landed_subjects(repo: Path) -> list[str]:
    order = git(repo, "log", "--reverse", "--format=%s", "main").split("\n")
    return [line for line in order if line.startswith("work on")]


def queue_branches(cli: Cli, repo: Path, prefix: str, files: list[dict[str, str]]) -> list[Any]:
    """One agent, issue and branch per *files*, each queued (``--queue-only``) in order."""
    envs = []
    for n, written in enumerate(files):
        env = agent_with_issue(cli, f"{prefix.lower()}{n}", f"{prefix}-{n}")
        branch(repo, f"agent/{prefix}-{n}", written)
        out = cli("land", f"agent/{prefix}-{n}", "--queue-only", env=env)
        assert 0 == out.returncode, out.stderr
        envs.append(env)
    return envs


def test_a_failure_rebuilds_the_speculation_behind_it_and_order_holds(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """Four entries tested at once; the second is bad. The two behind it were built on it
    (their gates saw its file and failed): they are rebuilt without it, tested again and
    land, in queue order; every landed commit is the one its gate passed on, on the final
    base (the commit's parent is what the target was)."""
    runs = tmp_path / "runs"
    no_bad = 'test -z "$(ls bad-* 2>/dev/null)"'
    settings(repo, f"tests = {logging_gate(runs, no_bad)}")
    names = [{"good-0": "0\n"}, {"bad-1": "1\n"}, {"good-2": "2\n"}, {"good-3": "3\n"}]
    envs = queue_branches(cli, repo, "S", [*names, {"good-4": "4\n"}])
    out = cli("land", "agent/S-4", "--parallel", "4", "--json", env=envs[4])
    assert 0 == out.returncode, out.stdout + out.stderr
    entries = {e["issue"]: e for e in cli.json("queue")}
    states = [entries[f"S-{n}"]["state"] for n in range(5)]
    assert ["landed", "failed", "landed", "landed", "landed"] == states
    assert "gate tests exited 1" == entries["S-1"]["reason"]
    assert [f"work on agent/S-{n}" for n in (0, 2, 3, 4)] == landed_subjects(repo)
    assert "bad-1" not in main_files(repo)
    seen = gate_runs(runs)
    for issue in ("S-2", "S-3"):  # speculated on the bad one first, then rebuilt
        mine = [run for run in seen if run[0] == issue]
        assert ["bad-1"] == mine[0][3:], mine
        assert [] == mine[-1][3:], mine
    for n in (0, 2, 3, 4):
        landed = entries[f"S-{n}"]
        passed = [run for run in seen if run[0] == f"S-{n}" and len(run) == 3]
        assert [landed["commit"], landed["onto"]] == passed[-1][1:], (landed, passed)
    reflog = git(repo, "reflog", "--format=%H", "main").split()[::-1]
    assert [entries[f"S-{n}"]["commit"] for n in (0, 2, 3, 4)] == reflog[-4:]
    # five entries, the two built on the bad one again, and maybe the last (a stopped run)
    assert len(seen) <= json.loads(out.stdout)["gate_runs"] <= 5 + 2 + 1


def test_an_entry_that_conflicts_with_one_ahead_fails_at_once_naming_files_and_entry(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """No gate runs for an entry that cannot be put on those ahead of it; its author is told
    (a ``land-fail`` event for its agent, with the files and the entry ahead), and the
    history says so too."""
    runs = tmp_path / "runs"
    settings(repo, f"tests = {logging_gate(runs, 'sleep 1')}")
    envs = queue_branches(
        cli, repo, "C", [{"shared.txt": "one\n"}, {"shared.txt": "two\n"}, {"c.txt": "c\n"}]
    )
    out = cli("land", "agent/C-2", "--parallel", "3", "--json", env=envs[2])
    assert 0 == out.returncode, out.stdout + out.stderr
    entries = {e["issue"]: e for e in cli.json("queue")}
    failed = entries["C-1"]
    assert ("failed", ["shared.txt"]) == (failed["state"], failed["files"])
    assert [entries["C-0"]["id"]] == [a["id"] for a in failed["ahead"]]
    assert "with " + entries["C-0"]["id"] + " (agent/C-0), ahead of it" in failed["reason"]
    assert {"C-0", "C-2"} == {run[0] for run in gate_runs(runs)}
    told = [e for e in cli.jsonl("log", "--since", "0") if e["op"] == "land-fail"]
    assert [("c1", ["shared.txt"])] == [(e["agent"], e["value"]["files"]) for e in told]
    history = {row["issue"]: row for row in cli.json("queue", "--history")}
    outcomes = {issue: row["outcome"] for issue, row in history.items()}
    assert {"C-0": "landed", "C-1": "failed", "C-2": "landed"} == outcomes
    assert (["shared.txt"], failed["ahead"]) == (history["C-1"]["files"], history["C-1"]["ahead"])
    shown = cli("queue", "--history")
    assert "conflicts in shared.txt with" in shown.stdout, shown.stdout


def test_a_flaky_gate_is_retried_landed_and_counted(repo: Path, cli: Cli, tmp_path: Path) -> None:
    """A gate with ``retries = 1`` that fails once and then passes: the entry lands, marked
    flaky, with the output of both runs; `dibs metrics` counts it."""
    once = tmp_path / "once"
    check = f"if [ -f {once} ]; then echo second try; else touch {once}; echo first try; exit 1; fi"
    settings(repo, f"tests = {{ command = {json.dumps(check)}, retries = 1 }}")
    env = agent_with_issue(cli, "alice", "F-1")
    branch(repo, "agent/F-1", {"f.txt": "f\n"})
    out = cli("land", "agent/F-1", "--parallel", "2", "--json", env=env)
    assert 0 == out.returncode, out.stdout + out.stderr
    entry = json.loads(out.stdout)
    assert ("landed", ["tests"]) == (entry["state"], entry["flaky"])
    tries = entry["tries"]["tests"]
    assert [(1, "first try"), (0, "second try")] == [(t["exit"], t["tail"]) for t in tries]
    figures = cli.json("metrics")["queue"]
    assert (1, {"tests": 1}) == (figures["flaky"], figures["flaky_by_gate"])
    assert "flaky: tests" in cli("queue", "--history").stdout


def test_a_failure_is_not_run_again_on_the_same_base_and_commits(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """The same branch commit on the same target: its failure stands without a gate run; once
    the target moves, the gate runs again."""
    runs = tmp_path / "runs"
    settings(repo, f"tests = {logging_gate(runs, 'exit 7')}")
    env = agent_with_issue(cli, "alice", "R-1")
    branch(repo, "agent/R-1", {"r.txt": "r\n"})
    first = cli("land", "agent/R-1", "--json", env=env)
    assert 3 == first.returncode, first.stdout + first.stderr
    again = cli("land", "agent/R-1", "--json", env=env)
    assert 3 == again.returncode
    cached = json.loads(again.stdout)
    assert (True, 7, 0) == (cached["cached"], cached["exit"], cached["gate_runs"])
    assert "not run again" in cached["reason"]
    assert 1 == len(gate_runs(runs))
    (repo / "moved.txt").write_text("main moved\n")
    git(repo, "add", "moved.txt")
    git(repo, "commit", "-q", "-m", "main moves")
    assert 3 == cli("land", "agent/R-1", env=env).returncode
    assert 2 == len(gate_runs(runs))
    assert 1 == cli.json("metrics")["queue"]["cached_failures"]


def test_high_priority_goes_ahead_of_waiting_entries_never_of_those_being_tested(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """Two entries being tested (their gates wait), two waiting; a high priority entry queued
    now lands after the two under test and before the two waiting."""
    go = tmp_path / "go"
    runs = tmp_path / "runs"
    wait = f"while [ ! -f {go} ]; do sleep 0.1; done; "
    settings(repo, f"tests = {logging_gate(runs, extra=wait)}")
    envs = queue_branches(cli, repo, "P", [{f"p{n}.txt": f"{n}\n"} for n in range(4)])
    urgent = agent_with_issue(cli, "urgent", "P-9")
    branch(repo, "agent/P-9", {"p9.txt": "9\n"})
    processor = subprocess.Popen(
        [str(BIN / "dibs"), "land", "agent/P-3", "--parallel", "2"],
        cwd=repo,
        env={**cli.env, **envs[3]},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while [e["state"] for e in cli.json("queue")] != ["running"] * 2 + ["queued"] * 2:
            assert time.monotonic() < deadline, cli.json("queue")
            time.sleep(0.1)
        out = cli("land", "agent/P-9", "--priority", "high", "--queue-only", env=urgent)
        assert 0 == out.returncode, out.stderr
        waiting = [e["issue"] for e in cli.json("queue")]
        assert ["P-0", "P-1", "P-9", "P-2", "P-3"] == waiting
        go.write_text("")
        said = processor.communicate(timeout=120)
        assert 0 == processor.returncode, said
    finally:
        go.write_text("")  # the gates end, whatever happened above
        if processor.poll() is None:
            processor.kill()
            processor.communicate()
    order = [f"work on agent/P-{n}" for n in (0, 1, 9, 2, 3)]
    assert order == landed_subjects(repo)


def test_high_priority_queued_first_lands_first(repo: Path, cli: Cli) -> None:
    settings(repo, 'tests = "true"')
    envs = queue_branches(cli, repo, "Q", [{"q0": "0\n"}, {"q1": "1\n"}])
    urgent = agent_with_issue(cli, "urgent", "Q-9")
    branch(repo, "agent/Q-9", {"q9": "9\n"})
    out = cli("land", "agent/Q-9", "--priority", "high", "--json", env=urgent)
    assert 0 == out.returncode, out.stdout + out.stderr
    assert "high" == json.loads(out.stdout)["priority"]
    assert 2 == len(envs)
    assert [f"work on agent/Q-{n}" for n in (9, 0, 1)] == landed_subjects(repo)


_DIE_AFTER_FIRST_MOVE = """
import os, signal
from dibs import Coordinator
from dibs.integrations import queue

original = queue._Processor._move


def move_then_die(self, old, new):
    moved = original(self, old, new)
    if moved:  # main moved; others are under test behind it; no land-done yet
        os.kill(os.getpid(), signal.SIGKILL)
    return moved


queue._Processor._move = move_then_die
with Coordinator.open(".", agent=os.environ["DIBS_AGENT"], token=os.environ["DIBS_TOKEN"]) as c:
    queue.land(c, "agent/K-3", parallel=3)
"""


def test_a_processor_killed_mid_speculation_lands_nothing_twice(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """SIGKILL right after main moved for the first entry, with the next ones under test on
    top of it: the next processor records the first as landed (from its ``moving``) without
    landing it again, rebuilds the rest on main, and each issue lands exactly once."""
    runs = tmp_path / "runs"
    settings(repo, f"tests = {logging_gate(runs, 'sleep 1')}")
    envs = queue_branches(cli, repo, "K", [{f"k{n}.txt": f"{n}\n"} for n in range(4)])
    died = subprocess.run(
        [sys.executable, "-c", _DIE_AFTER_FIRST_MOVE],
        cwd=repo,
        env={**cli.env, **envs[3]},
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert -signal.SIGKILL == died.returncode, died.stderr
    assert ["work on agent/K-0"] == landed_subjects(repo)
    state = {e["issue"]: e for e in cli.json("queue")}
    assert "running" == state["K-0"]["state"]
    assert "moving" in state["K-0"]
    out = cli("land", "agent/K-3", "--parallel", "3", "--json", env=envs[3])
    assert 0 == out.returncode, out.stdout + out.stderr
    assert [f"work on agent/K-{n}" for n in range(4)] == landed_subjects(repo)
    events = cli.jsonl("log", "--since", "0")
    done = [e["key"] for e in events if e["op"] == "land-done"]
    assert len(done) == len(set(done)) == 4
    landed = [e for e in events if e["op"] == "landed"]
    assert [1] * 4 == [e["value"]["times"] for e in landed]
    assert [] == [p.name for p in (repo / ".git" / "dibs-land").iterdir()]
    assert 1 == git(repo, "worktree", "list").count("\n")


def test_a_processor_killed_while_gates_run_in_parallel_is_taken_over(
    repo: Path, cli: Cli, tmp_path: Path
) -> None:
    """kill -9 of the processor's whole group while three gates run at once: the gates, in
    sessions of their own, survive it and would run for ever; the next `dibs land` stops all
    three, takes over, lands all four in order, once each, leaving no worktree."""
    from dibs.ground.host import process_alive, process_start

    go = tmp_path / "go"
    runs = tmp_path / "runs"
    started = tmp_path / "started"
    wait = (
        f"if [ ! -f {go} ]; then echo $DIBS_LAND_ISSUES $$ >> {started}; "
        "while :; do sleep 0.1; done; fi; "
    )
    settings(repo, f"tests = {logging_gate(runs, extra=wait)}")
    envs = queue_branches(cli, repo, "T", [{f"t{n}.txt": f"{n}\n"} for n in range(4)])
    first = subprocess.Popen(
        [str(BIN / "dibs"), "land", "agent/T-3", "--parallel", "3"],
        cwd=repo,
        env={**cli.env, **envs[3]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    gates: list[tuple[int, int | None]] = []
    try:
        deadline = time.monotonic() + 60
        while len(gate_runs(started)) < 3:
            assert time.monotonic() < deadline, "the gates never started"
            time.sleep(0.05)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        gates = [(int(line[1]), process_start(int(line[1]))) for line in gate_runs(started)]
        assert all(process_alive(pid, start) for pid, start in gates)
        go.write_text("")  # the gates run again pass at once
        out = cli("land", "agent/T-3", "--parallel", "3", "--json", env=envs[3])
        assert 0 == out.returncode, out.stdout + out.stderr
        deadline = time.monotonic() + 60
        while any(process_alive(pid, start) for pid, start in gates):
            assert time.monotonic() < deadline, "the orphaned gates still run"
            time.sleep(0.05)
        assert 3 == out.stderr.count("stopped gate tests of entry "), out.stderr
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        for pid, start in gates:
            if process_alive(pid, start):
                os.killpg(pid, signal.SIGKILL)
    assert [f"work on agent/T-{n}" for n in range(4)] == landed_subjects(repo)
    done = [e["key"] for e in cli.jsonl("log", "--since", "0") if e["op"] == "land-done"]
    assert len(done) == len(set(done)) == 4
    assert [] == [p.name for p in (repo / ".git" / "dibs-land").iterdir()]
    assert 1 == git(repo, "worktree", "list").count("\n")
