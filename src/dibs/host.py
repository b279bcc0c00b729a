"""This machine: its clock, boot id, host id, and whether a process still runs.

Lease expiry on one machine uses ``CLOCK_BOOTTIME``: monotonic, shared by every process, and
(unlike ``CLOCK_MONOTONIC``) it keeps counting while a laptop sleeps, so a suspended holder's
lease really expires. The boot id (``/proc/sys/kernel/random/boot_id``) tells readings of
different boots apart: a reboot expires every lease taken before it.

Liveness reads ``/proc/<pid>/stat`` (no psutil: 27 ms to import). A pid alone is not an
identity, since pids are reused; the process start time (field 22, clock ticks since boot)
together with the boot id is.
"""

from __future__ import annotations

import os
import time

from dibs.core.events import Now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dibs.core.state import AgentRecord

_BOOT_ID: str | None = None
_CLOCK = getattr(time, "CLOCK_BOOTTIME", None)


def boot_id() -> str:
    """This boot's id; changes on every reboot."""
    global _BOOT_ID  # noqa: PLW0603 -- read once per process: it cannot change while we run
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _BOOT_ID = f.read().strip()
        except OSError:
            # No /proc (not Linux): the wall time of boot, to the minute, is stable enough.
            booted = time.time() - time.monotonic()
            _BOOT_ID = f"boot-{int(booted // 60)}"
    return _BOOT_ID


def host_id() -> str:
    """This host's id: ``DIBS_HOST`` when set, else the node name."""
    return os.environ.get("DIBS_HOST") or os.uname().nodename


def monotonic_ns() -> int:
    """The deciding clock: nanoseconds since boot, counting suspended time."""
    if _CLOCK is not None:
        return time.clock_gettime_ns(_CLOCK)
    return time.monotonic_ns()


def now() -> Now:
    """Read the clock: boot id, monotonic nanoseconds and wall seconds."""
    return Now(boot_id(), monotonic_ns(), time.time())


def process_start(pid: int) -> int | None:
    """The start time of process *pid* in clock ticks since boot, or None if it is gone.

    A zombie (exited, not yet reaped) counts as gone: it will never renew anything.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if not fields or fields[0] in (b"Z", b"X", b"x"):
        return None
    return int(fields[19])


def process_alive(pid: int, start: int | None) -> bool:
    """Whether *pid* runs and is the same process that started at *start* (when known)."""
    current = process_start(pid)
    if current is None:
        return False
    return start is None or current == start


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
