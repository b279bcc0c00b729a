"""`dibs run` never outlives itself: killed with SIGKILL, its command goes with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dibs.ground import platform
from tests.conftest import BIN, Cli

# The command starts a helper of its own (a grandchild of dibs run), then reports both pids.
SCRIPT = (
    "import os, pathlib, subprocess, sys, time; "
    "helper = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
    "pathlib.Path({ready!r}).write_text(f'{{os.getpid()}} {{helper.pid}}'); time.sleep(600)"
)


def gone(pid: int) -> bool:
    """Whether *pid* has exited (a zombie nobody reaps counts as exited)."""
    return platform.process_start(pid) is None


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 60) -> None:
    """Poll *condition* until it holds; fail naming *what* after *seconds*."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def leftovers() -> Iterator[list[int]]:
    """Pids to SIGKILL after the test, whatever happened."""
    pids: list[int] = []
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def start_run(repo: Path, tmp_path: Path, switch: str) -> tuple[subprocess.Popen[bytes], Path]:
    """`dibs run --agent r7 --files z/** -- python SCRIPT`, detached from our terminal."""
    ready = tmp_path / "ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    env["DIBS_PLATFORM"] = switch
    argv = ["run", "--agent", "r7", "--files", "z/**", "--", sys.executable, "-c"]
    proc = subprocess.Popen(
        [str(BIN / "dibs"), *argv, SCRIPT.format(ready=str(ready))],
        cwd=repo,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return proc, ready


def children(pid: int) -> list[int]:
    """The pids whose parent is *pid* (Linux: read from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry}/stat").read_bytes()
                if int(stat[stat.rfind(b")") + 2 :].split()[1]) == pid:
                    found.append(int(entry))
    return found


@pytest.mark.parametrize(
    "switch", [pytest.param("", id="this-system"), pytest.param("posix", id="watcher-only")]
)
def test_run_killed_with_sigkill_takes_its_command_and_helpers_along(
    repo: Path, cli: Cli, tmp_path: Path, switch: str, leftovers: list[int]
) -> None:
    """SIGKILL to dibs run stops its command and the command's helpers; its claims go too."""
    proc, ready = start_run(repo, tmp_path, switch)
    leftovers.append(proc.pid)
    wait_for(lambda: ready.exists() and " " in ready.read_text(), "the command to start")
    command, helper = (int(p) for p in ready.read_text().split())
    leftovers += [command, helper]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    wait_for(lambda: gone(command) and gone(helper), "the command and its helper to die")
    other = cli.register("other")
    out = cli("claim", "path:z/file.txt", env=other)  # the ttl is 90 s: no waiting
    assert 0 == out.returncode, out.stderr


@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG exists on Linux only"
)
def test_run_command_dies_with_its_wrapper_even_when_the_watcher_went_first(
    repo: Path, tmp_path: Path, leftovers: list[int]
) -> None:
    """Linux: with the watcher killed first, the kernel's parent-death signal stops the command."""
    proc, ready = start_run(repo, tmp_path, "")
    leftovers.append(proc.pid)
    wait_for(lambda: ready.exists() and " " in ready.read_text(), "the command to start")
    command, helper = (int(p) for p in ready.read_text().split())
    leftovers += [command, helper]
    watchers = [pid for pid in children(proc.pid) if pid != command]
    assert 1 == len(watchers)
    leftovers += watchers
    os.kill(watchers[0], signal.SIGKILL)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    wait_for(lambda: gone(command), "the command to die")
