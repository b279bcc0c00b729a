"""This machine: its clock, boot id, host id, and whether a process still runs.

The primitives behind each answer are chosen per platform in `dibs.ground.platform` (Linux:
``CLOCK_BOOTTIME``, the kernel's boot id, ``/proc/<pid>/stat``; macOS and the other POSIX
systems: see docs/explanation/platforms.md). What every platform gives: a deciding clock that is
monotonic and shared by every process of one boot; a boot id that changes on every reboot, so
that readings of different boots are never compared (a reboot expires every lease taken before
it); and a process identity, the pid with its start time where the platform can read it (a pid
alone is not an identity, since pids are reused).
"""

from __future__ import annotations

import os
import time

from dibs.ground import platform
from dibs.ground.now import Now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dibs.core.state import AgentRecord


def boot_id() -> str:
    """This boot's id; changes on every reboot."""
    return platform.boot_id()


def host_id() -> str:
    """This host's id: ``DIBS_HOST`` when set, else the node name."""
    return os.environ.get("DIBS_HOST") or platform.host_name()


def monotonic_ns() -> int:
    """The deciding clock: nanoseconds since boot, counting suspended time where it can."""
    return platform.clock_ns()


def now() -> Now:
    """Read the clock: boot id, monotonic nanoseconds and wall seconds."""
    return Now(platform.boot_id(), platform.clock_ns(), time.time())


def process_start(pid: int) -> int | None:
    """The start time of process *pid* (opaque, per platform), or None if it is gone.

    A zombie (exited, not yet reaped) counts as gone where the platform can tell.
    """
    return platform.process_start(pid)


def process_alive(pid: int, start: int | None) -> bool:
    """Whether *pid* runs and is the same process that started at *start* (when known)."""
    return platform.process_alive(pid, start)


def stop_process_group(pgid: int, start: int | None, grace: float) -> bool:
    """SIGTERM to the process group *pgid*, SIGKILL *grace* seconds later, if its leader is
    still the process that started at *start* (an unknown start stops nothing: see
    `dibs.ground.platform.posix.Posix.stop_group`). Returns whether it was signalled."""
    return platform.stop_group(pgid, start, grace)


class Liveness:
    """Answers ``Context.alive`` for agents: True, False, or None when this host cannot tell."""

    __slots__ = ("boot", "host")

    def __init__(self, host: str | None = None, boot: str | None = None):
        self.host = host if host is not None else host_id()
        self.boot = boot if boot is not None else boot_id()

    def __call__(self, agent: AgentRecord) -> bool | None:
        pid = agent["pid"]
        if pid is None or agent["host"] != self.host:
            return None
        # The host's boot at registration: ``host_boot`` when the deciding clock is not this
        # host's (PostgreSQL: the server's clock), else the event's own boot id.
        if agent.get("host_boot", agent["boot"]) != self.boot:
            # Registered in an earlier boot of this host: that process is long gone.
            return False
        return process_alive(pid, agent["pid_start"])
