"""`dibs run`: a command as an agent, watched so that it never outlives its lease."""

from __future__ import annotations

import contextlib
import os

from dibs.ground.errors import DibsError, NotFound, UsageError
from dibs.integrations.worktrees.common import token_of
from dibs.integrations.worktrees.lifecycle import start

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from dibs.service import Coordinator


def _start_watcher() -> tuple[Any, int]:
    """Start `dibs.ground.platform.watch` on a pipe only this process can write; (process, pipe)."""
    import subprocess
    import sys

    read, write = os.pipe()
    try:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "dibs.ground.platform.watch"],
            stdin=read,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    return watcher, write


def _end_watcher(watcher: Any, pipe: int, *, done: bool = False) -> None:
    """Tell the watcher the command ended (*done*) or never started, and reap it."""
    import subprocess

    with contextlib.suppress(OSError):
        if done:
            os.write(pipe, b"done\n")
        os.close(pipe)
    with contextlib.suppress(subprocess.TimeoutExpired):
        watcher.wait(timeout=10)


def _spawn(
    command: list[str], cwd: str | None, env: dict[str, str], *, interactive: bool
) -> tuple[Any, Any, int]:
    """Start *command* watched by `dibs.ground.platform.watch`: (command, watcher, pipe to it)."""
    import subprocess

    from dibs.ground import platform

    watcher, pipe = _start_watcher()
    try:
        child = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            process_group=None if interactive else 0,
            preexec_fn=platform.parent_death_setup(),  # noqa: PLW1509 -- no threads here
        )
    except OSError as exc:
        _end_watcher(watcher, pipe)
        raise NotFound(
            f"cannot run {command[0]!r}: {exc.strerror}", hint="check the command"
        ) from None
    # At a terminal the command shares our process group (Ctrl-C reaches it): the watcher
    # then stops the command alone, never the group (that is the shell's job).
    try:
        os.write(pipe, f"{child.pid} {0 if interactive else 1}\n".encode())
    except OSError:
        # The watcher is gone already: on Linux the parent-death signal still stands.
        os.close(pipe)
        pipe = os.open(os.devnull, os.O_WRONLY)
    return child, watcher, pipe


def run(
    coord: Coordinator,
    command: list[str],
    *,
    agent: str | None = None,
    issue: str | None = None,
    files: Iterable[str] = (),
) -> int:
    """Run *command* as an agent: register, start the issue, heartbeat, release on exit.

    The agent watches this process: killed with SIGKILL, its claims are evicted by the next
    operation anyone makes (pid and start time), without waiting for the ttl. SIGINT and
    SIGTERM are passed on to *command*. Returns *command*'s exit code (128 + N for signal N).

    *command* never outlives this process: it would go on with the agent's token and no one
    renewing its lease. A watcher (`dibs.ground.platform.watch`) stops it (with its process group)
    once this process is gone, however it ended; on Linux the kernel also sends it SIGTERM
    when its parent dies (``PR_SET_PDEATHSIG``).
    """
    import signal
    import subprocess
    import sys

    from dibs.service.checks import check_agent_name

    if not command:
        raise UsageError("no command to run", hint="dibs run -- CMD [ARGS...]")
    name = agent or f"run-{os.getpid()}"
    check_agent_name(name)
    globs = list(files)
    coord.register(name, pid=os.getpid())
    try:
        cwd = None
        env = dict(os.environ)
        if issue is not None:
            started = start(coord, issue, agent=name, files=globs)
            cwd = started["path"]
            env["DIBS_WORKTREE"] = cwd
        elif globs:
            coord.claim([g if g.startswith("path:") else f"path:{g}" for g in globs])
        env.update(DIBS_AGENT=name, DIBS_TOKEN=token_of(coord))
        interactive = sys.stdin.isatty()
        child, watcher, pipe = _spawn(command, cwd, env, interactive=interactive)

        def forward(signum: int, _frame: Any) -> None:
            # At a terminal, Ctrl-C reaches the command directly (same process group).
            if not (interactive and signum == signal.SIGINT):
                child.send_signal(signum)

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            every = float(coord.settings["leases.heartbeat"])
            while True:
                try:
                    code: int = child.wait(timeout=every)
                    break
                except subprocess.TimeoutExpired:
                    try:
                        coord.heartbeat()
                    except DibsError as exc:
                        sys.stderr.write(f"dibs run: heartbeat failed: {exc.message}\n")
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        _end_watcher(watcher, pipe, done=True)
        return code if code >= 0 else 128 - code
    finally:
        with contextlib.suppress(DibsError):
            coord.unregister()
