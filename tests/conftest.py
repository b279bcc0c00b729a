"""Shared fixtures: git repositories in temporary folders, a settable clock, the installed CLI."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from dibs.core.events import Now
from dibs.core.leases import Context

if TYPE_CHECKING:
    from dibs.core.state import AgentRecord

BIN = Path(sys.executable).parent


class FakeClock:
    """A deciding clock that only moves when told to."""

    def __init__(self, boot: str = "boot-a", mono: int = 10**12, wall: float = 1_800_000_000.0):
        self.boot = boot
        self.mono = mono
        self.wall = wall

    def __call__(self) -> Now:
        return Now(self.boot, self.mono, self.wall)

    def advance(self, seconds: float) -> None:
        self.mono += int(seconds * 1_000_000_000)
        self.wall += seconds

    def reboot(self) -> None:
        self.boot += "'"
        self.mono = 10**9


class FakeLiveness:
    """Liveness by name: agents listed in ``dead`` are gone, others cannot be told."""

    def __init__(self) -> None:
        self.dead: set[str] = set()
        self.asked: list[str] = []

    def __call__(self, agent: AgentRecord) -> bool | None:
        self.asked.append(agent["name"])
        return False if agent["name"] in self.dead else None


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def liveness() -> FakeLiveness:
    return FakeLiveness()


@pytest.fixture
def ctx_at(liveness: FakeLiveness) -> Callable[[FakeClock], Context]:
    return lambda clock: Context(clock(), liveness)


def git(cwd: Path | str, *args: str) -> str:
    """Run git in *cwd* and return its output."""
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return out.stdout


def make_repo(path: Path) -> Path:
    """A git repository with one commit on main."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "test@dibs.invalid")
    git(path, "config", "user.name", "dibs tests")
    (path / "README.md").write_text("# test repository\n")
    git(path, "add", "README.md")
    git(path, "commit", "-q", "-m", "initial commit")
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


def store_dir(repo: Path) -> Path:
    """The local store folder of *repo*."""
    return repo / ".git" / "dibs"


class Cli:
    """The installed ``dibs`` command, run in a repository, as a user would."""

    def __init__(self, cwd: Path, env: dict[str, str] | None = None):
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
        self.env.update(env or {})

    def __call__(
        self, *args: str, env: dict[str, str] | None = None, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(self.env)
        full_env.update(env or {})
        return subprocess.run(
            [str(BIN / "dibs"), *args],
            cwd=self.cwd,
            env=full_env,
            capture_output=True,
            text=True,
            input=stdin,
            timeout=60,
            check=False,
        )

    def json(self, *args: str, env: dict[str, str] | None = None) -> Any:
        out = self(*args, "--json", env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def jsonl(self, *args: str, env: dict[str, str] | None = None) -> list[Any]:
        """Run a command whose --json output is JSON Lines (``dibs log``)."""
        out = self(*args, "--json", env=env)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]

    def register(self, name: str, *extra: str) -> dict[str, str]:
        """Register *name*; return the environment that acts as it."""
        reg = self.json("agent", "register", name, *extra)
        return {"DIBS_AGENT": reg["agent"], "DIBS_TOKEN": reg["token"]}


@pytest.fixture
def cli(repo: Path) -> Cli:
    return Cli(repo)


def reap(procs: list[subprocess.Popen[Any]]) -> None:
    """Kill and wait for every process (for `finally` blocks)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=10)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[Any]]]:
    """A list to put started processes in; every one is killed and reaped afterwards."""
    started: list[subprocess.Popen[Any]] = []
    try:
        yield started
    finally:
        reap(started)
