"""Linux: ``fdatasync``, ``CLOCK_BOOTTIME``, the kernel's boot id and ``/proc/<pid>/stat``.

Each answer degrades to the portable one (`dibs.ground.platform.posix`) when its source is missing:
``/proc`` is often not mounted in containers and sandboxes, and a Python built without
``os.fdatasync`` exists too.

* sync: ``fdatasync`` writes the data and the size needed to read it back, and (on ext4, xfs,
  btrfs with barriers, the default) flushes the drive's cache: acknowledged means durable.
  Both ``store.sync`` choices use it: Linux's fsync waits for the drive as well.
* the deciding clock: ``CLOCK_BOOTTIME``, monotonic and shared by every process, and unlike
  ``CLOCK_MONOTONIC`` it keeps counting while the machine sleeps, so a suspended holder's
  lease really expires.
* boot identity: ``/proc/sys/kernel/random/boot_id``, a random UUID per boot.
* process identity: the pid with its start time (``/proc/<pid>/stat`` field 22, clock ticks
  since boot): a pid reused by another process has another start time. A zombie is gone.
* parent death: the child of ``dibs run`` asks for ``PR_SET_PDEATHSIG`` (prctl, via ctypes).
* peer credentials: ``SO_PEERCRED`` (``struct ucred``: pid, uid, gid) on the CLI helper's
  socket, a plain getsockopt (no ctypes on the hot path of every relayed call).
"""

from __future__ import annotations

import os
import time

from dibs.ground.platform.posix import Posix

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_PR_SET_PDEATHSIG = 1


class Linux(Posix):
    """Linux, reading ``/proc`` where it is mounted."""

    name = "linux"

    def __init__(self) -> None:
        super().__init__()
        clock = getattr(time, "CLOCK_BOOTTIME", None)
        if clock is not None:
            self._clock = clock
        self._proc: bool | None = None

    def proc_mounted(self) -> bool:
        """Whether ``/proc`` answers (checked once: it is not mounted while we run)."""
        if self._proc is None:
            self._proc = os.path.exists("/proc/self/stat")
        return self._proc

    def sync_data(self, fd: int, how: str = "full") -> None:
        """``fdatasync`` where this Python has it, else ``fsync``."""
        # Looked up on each call: the fault tests put their own ``os`` in this module.
        fdatasync = getattr(os, "fdatasync", None)
        if fdatasync is not None:
            fdatasync(fd)
        else:
            super().sync_data(fd, how)

    def sync_primitives(self) -> dict[str, Callable[[int], None]]:
        """fdatasync (when present) and fsync."""
        found = super().sync_primitives()
        fdatasync = getattr(os, "fdatasync", None)
        if fdatasync is not None:
            found = {"fdatasync": fdatasync, **found}
        return found

    def clock_name(self) -> str:
        """CLOCK_BOOTTIME where this Python has it."""
        if self._clock == getattr(time, "CLOCK_BOOTTIME", None):
            return "CLOCK_BOOTTIME"
        return super().clock_name()

    def read_boot_id(self) -> str:
        """The kernel's random boot id; the portable answer without ``/proc``."""
        try:
            # Bytes, then decoded: a text file would import the ascii codec (a module) to do it.
            with open(_BOOT_ID, "rb") as f:
                found = f.read().decode("ascii").strip()
        except OSError:
            found = ""
        if not found:
            # Linux has no kern.boottime (and loading ctypes to learn that costs milliseconds).
            return self.computed_boot_id()
        self.boot_source = _BOOT_ID
        return found

    def liveness_name(self) -> str:
        """/proc/<pid>/stat where mounted."""
        if self.proc_mounted():
            return "/proc/<pid>/stat start time"
        return super().liveness_name()

    def sync_name(self, how: str = "full") -> str:
        """fdatasync where this Python has it."""
        return "fdatasync" if hasattr(os, "fdatasync") else super().sync_name(how)

    def process_start(self, pid: int) -> int | None:
        """Field 22 of ``/proc/<pid>/stat``; the portable answer without ``/proc``."""
        if not self.proc_mounted():
            return super().process_start(pid)
        stat = _read_stat(pid)
        return None if stat is None else parse_stat(stat)

    def process_parent(self, pid: int) -> tuple[str, int] | None:
        """Fields 2 and 4 of ``/proc/<pid>/stat``; the portable answer without ``/proc``."""
        if not self.proc_mounted():
            return super().process_parent(pid)
        stat = _read_stat(pid)
        if stat is None:
            return None
        # The command name may hold spaces and parentheses: split after the last ')'.
        name = stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode("utf-8", "replace")
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) < 2 or not fields[1].isdigit():
            return None
        return name, int(fields[1])

    def group_alive(self, pgid: int) -> bool:
        """Whether a process of group *pgid* runs, scanning ``/proc/*/stat`` (field 5): unlike
        ``killpg(pgid, 0)`` this does not count zombies. A container whose pid 1 reaps no
        orphans keeps the zombies of a stopped group forever; counted, they would make every
        stop wait its whole grace. The portable answer without ``/proc``."""
        if not self.proc_mounted():
            return super().group_alive(pgid)
        wanted = str(pgid).encode()
        for name in os.listdir("/proc"):
            stat = _read_stat(int(name)) if name.isdigit() else None
            if stat is None:
                continue
            fields = stat[stat.rfind(b")") + 2 :].split()
            if len(fields) > 2 and fields[2] == wanted and fields[0] not in (b"Z", b"X", b"x"):
                return True
        return False

    def peer_credentials(self, sock: Any) -> tuple[int, int]:
        """``SO_PEERCRED``: the pid and uid the kernel recorded when the peer connected."""
        import _socket

        option = getattr(_socket, "SO_PEERCRED", None)
        if option is None:
            return super().peer_credentials(sock)
        raw = sock.getsockopt(_socket.SOL_SOCKET, option, 12)
        return parse_ucred(raw)

    def peer_credentials_name(self) -> str | None:
        """SO_PEERCRED where this Python has it."""
        import _socket

        return "SO_PEERCRED" if hasattr(_socket, "SO_PEERCRED") else None

    def parent_death_setup(self) -> Callable[[], None] | None:
        """prctl(PR_SET_PDEATHSIG, SIGTERM) in the child, then a check that the parent did not
        die before the request took hold (the child would then wait for a death already past)."""
        import signal

        from dibs.ground.platform.posix import c_library

        libc = c_library()
        prctl = getattr(libc, "prctl", None) if libc is not None else None
        if prctl is None:
            return None
        import ctypes

        parent = os.getpid()
        # prctl is variadic and the kernel reads unsigned longs: pass them as such.
        args = [ctypes.c_ulong(int(signal.SIGTERM))] + [ctypes.c_ulong(0)] * 3

        def setup() -> None:
            prctl(_PR_SET_PDEATHSIG, *args)
            if os.getppid() != parent:
                os._exit(1)

        return setup


def _read_stat(pid: int) -> bytes | None:
    """The ``/proc/<pid>/stat`` line of *pid*, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read()
    except OSError:
        return None


def parse_stat(stat: bytes) -> int | None:
    """The start time in a ``/proc/<pid>/stat`` line, or None for a zombie or a bad line."""
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X", b"x"):
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def parse_ucred(raw: bytes) -> tuple[int, int]:
    """``(pid, uid)`` from a ``struct ucred`` (three native ints: pid, uid, gid)."""
    import struct

    pid, uid, _gid = struct.unpack("3i", raw[:12])
    return pid, uid
