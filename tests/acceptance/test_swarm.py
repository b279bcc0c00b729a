"""The swarm trial (bench/swarm.py) as a test: agent processes over the installed CLI take a
task graph with shared files, one is killed inside `dibs land` and replaced by a stealing
agent; every task lands exactly once, none is handed out after it landed, main is green at
every commit, holds never overlap, `doctor --repair` leaves nothing behind, and no killed
agent's work is lost. `make test` runs 4 agents over 8 tasks with 1 kill, on the local store
and on PostgreSQL; `make soak` runs 12 agents over 40 tasks with 3 kills and 1 pause (a stale
agent whose task is stolen)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "swarm.py"


def trial(tmp_path: Path, **size: Any) -> dict[str, Any]:
    spec = importlib.util.spec_from_file_location("swarm", BENCH)
    assert spec is not None
    assert spec.loader is not None
    swarm = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(swarm)
    seed = int.from_bytes(os.urandom(4), "big")
    figures: dict[str, Any] = swarm.Trial(tmp_path, seed=seed, **size).run()
    return figures


def test_a_small_swarm_with_a_kill_inside_land_hands_every_task_out_once(tmp_path: Path) -> None:
    """4 agents, 8 tasks, 1 SIGKILL inside `dibs land`: the trial finds no problem."""
    figures = trial(tmp_path, agents=4, tasks=8, kills=1, timeout=600, gate_seconds=0.5)
    assert [] == figures["problems"], figures
    assert 1 == len(figures["kills"])
    assert "in land" in figures["kills"][0]


@pytest.mark.postgres
def test_a_small_swarm_on_postgresql_hands_every_task_out_once(
    tmp_path: Path, pg_empty_database: str
) -> None:
    """The same trial with the store in PostgreSQL (every CLI call through it, from the main
    checkout and from the worktrees, queue and gates included): no problem."""
    figures = trial(
        tmp_path,
        agents=4,
        tasks=8,
        kills=1,
        timeout=600,
        gate_seconds=0.5,
        store=pg_empty_database,
    )
    assert [] == figures["problems"], figures
    assert 1 == len(figures["kills"])


@pytest.mark.soak
@pytest.mark.timeout(1800)  # the trial's own limit; it takes about two minutes here
def test_a_swarm_of_twelve_over_forty_tasks_with_kills_and_a_pause(tmp_path: Path) -> None:
    """12 agents, 40 tasks, 3 SIGKILLs (one inside `dibs land`) and a SIGSTOP: no problem."""
    figures = trial(tmp_path, agents=12, tasks=40, kills=3, pauses=1, timeout=1800)
    print(figures)
    assert [] == figures["problems"], figures
