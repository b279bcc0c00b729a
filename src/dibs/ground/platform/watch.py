"""The watcher of ``dibs run``: the command dies with its wrapper, however the wrapper ends.

    python -m dibs.ground.platform.watch     (stdin: the read end of a pipe only the wrapper holds)

The wrapper starts this process in a session of its own (a signal to the wrapper's terminal or
process group does not reach it), then the command, and writes ``PID GROUP`` (GROUP is 1 when
the command leads a process group of its own) on the pipe. It writes ``done`` once the command
has ended and been reaped. The kernel closes the pipe when the wrapper dies, even by SIGKILL:
end of file without ``done`` means the command outlives its wrapper, holding the agent's token
without anyone renewing its lease. The watcher then sends it (its whole process group, when it
has one) SIGTERM, and SIGKILL to whatever still runs `GRACE` seconds later.

This works on every POSIX system. Linux adds ``PR_SET_PDEATHSIG`` in the command itself
(`dibs.ground.platform.linux`), which also covers a watcher that was killed first.
"""

from __future__ import annotations

import os
import signal
import sys
import time

#: Seconds between SIGTERM and SIGKILL.
GRACE = 5.0


def _exists(pid: int, group: bool) -> bool:
    try:
        if group:
            os.killpg(pid, 0)
        else:
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _send(pid: int, group: bool, signum: int) -> None:
    try:
        if group:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def stop(pid: int, group: bool, grace: float = GRACE) -> None:
    """SIGTERM to *pid* (its process group when *group*), SIGKILL after *grace* seconds."""
    _send(pid, group, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while _exists(pid, group) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _exists(pid, group):
        _send(pid, group, signal.SIGKILL)


def watch(stream: int) -> int:
    """Read the wrapper's pipe *stream* until it ends; stop the command if it was not done."""
    data = b""
    while True:
        chunk = os.read(stream, 256)
        if not chunk:
            break
        data += chunk
    lines = data.split()
    if len(lines) < 2 or not lines[0].isdigit():
        return 0  # the command never started
    if b"done" in lines[2:]:
        return 0
    stop(int(lines[0]), lines[1] == b"1")
    return 0


def main() -> int:
    """Run the watcher on standard input."""
    # The wrapper's terminal may go away with it: SIGHUP must not end the watch early.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return watch(sys.stdin.fileno())


if __name__ == "__main__":
    sys.exit(main())
