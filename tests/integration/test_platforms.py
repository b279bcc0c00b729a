"""dibs on a POSIX system without ``/proc`` and without ``os.fdatasync`` (as on macOS).

tests/noproc/sitecustomize.py takes both away from every Python process started with it on
``PYTHONPATH`` (pytest, the installed ``dibs``, its helpers). Under it the local store's
contract suite, the race test and the CLI basics run again in a pytest of their own, and the
judges' walk (register with --pid, claim, heartbeat, refusal while the watched process lives,
eviction once it dies, status, doctor) runs through the installed CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Cli

ROOT = Path(__file__).resolve().parents[2]
NO_PROC = {"PYTHONPATH": str(ROOT / "tests" / "noproc"), "DIBS_TEST_NO_PROC": "1"}
SUITES = [
    "tests/contract/test_store_contract.py",
    "tests/integration/test_races.py",
    "tests/acceptance/test_cli.py",
]


def without_proc(**extra: str) -> dict[str, str]:
    """This environment with /proc and os.fdatasync taken away (and *extra* set)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    env.update(NO_PROC, **extra)
    return env


def test_the_simulation_really_takes_proc_and_fdatasync_away() -> None:
    """Under the simulation Python has no fdatasync, /proc is not there, and dibs says so."""
    code = (
        "import os; from dibs.ground import platform; "
        "print(hasattr(os, 'fdatasync'), os.path.exists('/proc/self/stat'), platform.NAME, "
        "list(platform.sync_primitives()), platform.process_start(os.getpid()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=without_proc(), capture_output=True, text=True, check=True
    )
    expected_name = "linux" if sys.platform.startswith("linux") else out.stdout.split()[2]
    assert f"False False {expected_name} ['fsync'] -1" == out.stdout.strip().replace(",", "")


@pytest.mark.timeout(1200)
@pytest.mark.parametrize(
    "switch",
    [
        pytest.param("", id="this-system-without-proc"),
        # The same run with only the portable primitives (CLOCK_MONOTONIC, no prctl): `make soak`.
        pytest.param("posix", id="posix", marks=pytest.mark.soak),
    ],
)
def test_store_contract_races_and_cli_basics_pass_without_proc_and_fdatasync(switch: str) -> None:
    """The local store's contract, the races and the CLI basics hold without the Linux
    primitives (and with only the portable ones: DIBS_PLATFORM=posix)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-m",
            "not soak and not postgres",
            "-k",
            "not memory",  # the contract's in-memory store touches no platform primitive
            *SUITES,
        ],
        cwd=ROOT,
        env=without_proc(DIBS_PLATFORM=switch),
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == out.returncode, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
    assert " failed" not in out.stdout


@pytest.mark.parametrize("switch", ["", "posix"], ids=["this-system-without-proc", "posix"])
def test_a_watched_process_holds_its_claims_until_it_dies_without_proc(
    repo: Path, switch: str
) -> None:
    """Without /proc: register --pid, claim, heartbeat, refused while the process lives,
    evicted once it dies; status and doctor work."""
    cli = Cli(repo, env=without_proc(DIBS_PLATFORM=switch))
    watched = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        alice = cli.register("alice", "--pid", str(watched.pid))
        assert 0 == cli("claim", "issue:1", env=alice).returncode
        assert 0 == cli("heartbeat", env=alice).returncode
        bob = cli.register("bob")
        refused = cli("claim", "issue:1", env=bob)
        assert 3 == refused.returncode
        assert "issue:1 is held by alice" in refused.stderr
    finally:
        watched.kill()
        watched.wait()
    won = cli("claim", "issue:1", env=bob)
    assert 0 == won.returncode, won.stderr
    status = cli.json("status")
    assert ["bob"] == [c["agent"] for c in status["claims"]]
    evictions = [e for e in cli.jsonl("log") if e["op"] == "auto-evict"]
    assert ["holder-dead"] == [e["reason"] for e in evictions]
    doctor = cli("doctor")
    assert 0 == doctor.returncode, doctor.stdout + doctor.stderr
    assert "sync fsync;" in doctor.stdout  # no fdatasync here
    assert "liveness by kill(pid, 0)" in doctor.stdout  # no /proc here


@pytest.mark.postgres
@pytest.mark.timeout(600)
def test_the_cli_helper_serves_calls_without_proc() -> None:
    """Without /proc (as on macOS) the helper still serves calls as direct ones, finds a
    session's host process (through ps) and falls back to /tmp for a long runtime folder: its
    acceptance tests that need no /proc of their own pass in a pytest of their own."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-rs",
            "tests/acceptance/test_helper.py",
        ],
        cwd=ROOT,
        env=without_proc(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert 0 == out.returncode, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
    assert "finds the helper's processes in /proc" in out.stdout  # those were skipped
