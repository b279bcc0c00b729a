"""The portable answers: what any POSIX system gives (the BSDs, and the fallback of the others).

Every primitive here is chosen so that it is *safe* where it is weaker than Linux's or macOS's:

* sync: ``fsync`` (POSIX promises data and metadata on stable storage when it returns; how far
  a drive's own cache is flushed is up to the system).
* the deciding clock: ``CLOCK_MONOTONIC``. On the BSDs it does not count suspended time, so a
  laptop's sleep does not age leases (a suspended holder keeps its lease until the ttl passed
  in waking time: leases last longer, never overlap).
* boot identity: ``kern.boottime`` (the BSDs, via ``sysctlbyname``), a value the kernel keeps
  from boot; elsewhere the boot instant computed from the wall clock minus the deciding clock,
  to the second. A wall-clock *step* moves both: readings then look like another boot and
  leases are voided as ``rebooted`` (ended early, never extended).
* process identity: ``os.kill(pid, 0)`` says only whether *some* process has that pid. Its
  start time is unknown (`UNKNOWN_START`), so pid reuse is undetectable: when a watched
  process dies and the pid is given to another process before anyone looks, its claims are
  not evicted at once but expire by ttl, as if no pid had been given. A zombie counts as
  running until its parent reaps it.
* locking: ``flock`` on the store's lock file (BSD locks: per open file, released when the
  holder dies).
* process groups: ``killpg(pgid, 0)`` says whether a group has a member, a zombie included;
  `stop_group` signals a group only while its leader runs with the recorded start time.
* peer credentials (who is at the other end of a Unix socket): none. POSIX has no call for
  it, and the BSDs' ``getpeereid`` names no process, which the CLI helper needs to run a call
  as its caller's; so the helper is off here and every call runs directly.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: A process runs, but this platform cannot tell when it started (pid reuse undetectable).
UNKNOWN_START = -1

#: The durability choices of ``store.sync`` (dibs.toml): "full" waits until the drive has the
#: data on stable storage, "fsync" until the system handed it to the drive. Equal here.
SYNC_CHOICES = ("full", "fsync")


class Posix:
    """The portable primitives; `dibs.ground.platform.linux` and `.darwin` refine them."""

    name = "posix"

    def __init__(self) -> None:
        self._boot: str | None = None
        #: Where `read_boot_id` found the boot id, for people.
        self.boot_source = ""
        clock = getattr(time, "CLOCK_MONOTONIC", None)
        self._clock: int | None = clock

    # Durable sync -------------------------------------------------------------------------

    def sync_data(self, fd: int, how: str = "full") -> None:
        """Make appended bytes durable (the log): data, and the size that reaches them."""
        self.sync_file(fd, how)

    def sync_file(self, fd: int, how: str = "full") -> None:  # noqa: ARG002 -- one primitive here
        """Make a file's data and metadata durable (checkpoints, seals, truncations)."""
        os.fsync(fd)

    def sync_dir(self, path: str) -> None:
        """Make new or renamed entries in the directory *path* durable."""
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync_primitives(self) -> dict[str, Callable[[int], None]]:
        """Every durability primitive this machine offers, by name (for `bench/claims.py`)."""
        return {"fsync": os.fsync}

    # Locking ------------------------------------------------------------------------------

    def lock(self, fd: int) -> None:
        """Wait for the exclusive lock on the open file *fd* (released when we die)."""
        try:
            import fcntl
        except ImportError:  # native Windows: the Python API says what the CLI says
            from dibs.ground.platform.unsupported import UnsupportedPlatform, unsupported

            raise unsupported("win32") or UnsupportedPlatform() from None

        fcntl.flock(fd, fcntl.LOCK_EX)

    def try_lock(self, fd: int) -> bool:
        """Take the exclusive lock on *fd* if nobody holds it (True), without waiting."""
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def send_signal(self, pid: int, signum: int) -> bool:
        """Send *signum* to process *pid*: False when it is gone (or not ours)."""
        try:
            os.kill(pid, signum)
        except OSError:
            return False
        return True

    def unlock(self, fd: int) -> None:
        """Let go of `lock`."""
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)

    # The deciding clock -------------------------------------------------------------------

    def clock_ns(self) -> int:
        """Nanoseconds on the deciding clock: monotonic, shared by every process of this boot."""
        if self._clock is not None:
            return time.clock_gettime_ns(self._clock)
        return time.monotonic_ns()

    def clock_name(self) -> str:
        """The primitive behind `clock_ns`, for people (`dibs doctor`, the docs)."""
        return "CLOCK_MONOTONIC" if self._clock is not None else "time.monotonic"

    # Boot identity ------------------------------------------------------------------------

    def boot_id(self) -> str:
        """This boot's id, read once per process: it cannot change while we run."""
        if self._boot is None:
            self._boot = self.read_boot_id()
        return self._boot

    def read_boot_id(self) -> str:
        """Read this boot's id from the system (uncached)."""
        raw = sysctl_bytes("kern.boottime")
        if raw:
            self.boot_source = "kern.boottime"
            return "boottime-" + raw.hex()
        return self.computed_boot_id()

    def computed_boot_id(self) -> str:
        """The boot instant from the clocks (`booted_at`): where the system keeps no boot id."""
        self.boot_source = "wall clock minus the deciding clock (a clock step reads as a reboot)"
        return booted_at(self.clock_ns)

    # Processes ----------------------------------------------------------------------------

    def process_start(self, pid: int) -> int | None:
        """When *pid* started (an opaque number), `UNKNOWN_START`, or None when it is gone."""
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return UNKNOWN_START  # another user's process: it exists
        except OverflowError:
            return None  # not a pid this system can have
        return UNKNOWN_START

    def group_alive(self, pgid: int) -> bool:
        """Whether process group *pgid* has a member (``killpg(pgid, 0)``). A zombie counts
        as a member until its parent reaps it."""
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # another user's group: it exists
        return True

    def stop_group(self, pgid: int, start: int | None, grace: float) -> bool:
        """Stop the process group *pgid* whose leader started at *start*: SIGTERM, SIGKILL to
        what is left *grace* seconds later, then up to *grace* seconds more for it to go.

        Only a leader that still runs with that very start time is signalled: a pid is reused,
        and a group led by another process is someone else's. So nothing is sent when *start*
        is unknown (None, or `UNKNOWN_START` on a platform that cannot read it) or the leader
        is gone. Once the group is seen gone it gets no further signal (its id may be given
        again); while it lives, its id cannot be. Returns whether the group was signalled.
        """
        import signal

        if start is None or start == UNKNOWN_START or self.process_start(pgid) != start:
            return False
        for signum in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pgid, signum)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            deadline = time.monotonic() + grace
            while self.group_alive(pgid):
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
            else:
                return True
        return True

    def process_parent(self, pid: int) -> tuple[str, int] | None:
        """``(command name, parent pid)`` of *pid*, or None when it is gone or unreadable.

        The portable answer asks ps(1): a subprocess, so it is kept off the hot path (only a
        session's first call walks up to its client process).
        """
        import subprocess

        try:
            out = subprocess.run(
                ["ps", "-o", "ppid=", "-o", "comm=", "-p", str(pid)],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None
        ppid, _, name = out.partition(" ")
        if not ppid.isdigit():
            return None
        return os.path.basename(name.strip()), int(ppid)

    # Peer credentials -------------------------------------------------------------------

    def peer_credentials(self, sock: Any) -> tuple[int, int]:  # noqa: ARG002 -- none here
        """``(pid, uid)`` of the process at the other end of the connected Unix socket *sock*,
        as the kernel recorded them (never what that process says): the CLI helper serves
        only its own user, and runs a call as the client process's. OSError when the kernel
        does not tell; always here, where `peer_credentials_name` is None."""
        import errno

        raise OSError(errno.ENOSYS, "no peer credentials on this platform")

    def peer_credentials_name(self) -> str | None:
        """The primitive behind `peer_credentials`, for people; None where there is none (the
        CLI helper is then off: every call runs directly)."""
        return None

    def liveness_name(self) -> str:
        """How `process_start` tells a process, for people."""
        return "kill(pid, 0), start time unknown (a reused pid is not noticed)"

    def sync_name(self, how: str = "full") -> str:  # noqa: ARG002 -- one primitive here
        """The primitive behind `sync_data` for *how*, for people."""
        return "fsync"

    def describe(self, how: str = "full") -> dict[str, str]:
        """Which primitive decides each answer here (`dibs doctor` shows it)."""
        self.boot_id()
        return {
            "platform": self.name,
            "sync": self.sync_name(how),
            "clock": self.clock_name(),
            "boot": self.boot_source or "cached",
            "liveness": self.liveness_name(),
        }

    def host_name(self) -> str:
        """This machine's network name."""
        uname = getattr(os, "uname", None)
        if uname is None:  # native Windows
            import socket

            return socket.gethostname()
        return str(uname().nodename)

    def parent_death_setup(self) -> Callable[[], None] | None:
        """A function the child of `dibs run` calls before exec so that it dies with its parent
        (None: no such primitive; the watcher of `dibs.ground.platform.watch` does it alone)."""
        return None


def booted_at(clock_ns: Callable[[], int]) -> str:
    """The boot instant as wall time minus the deciding clock, to the second.

    Of several paired readings the tightest pair is kept, so two processes agree unless the
    boot instant lies within microseconds of a whole second. The wall clock is read as the
    system's real-time clock: slewing (NTP) moves both clocks alike; a step moves the answer.
    """
    best: tuple[int, int] | None = None
    for _ in range(5):
        before = time.time_ns()
        mono = clock_ns()
        after = time.time_ns()
        if best is None or after - before < best[0]:
            best = (after - before, (before + after) // 2 - mono)
    assert best is not None  # noqa: S101 -- the loop runs at least once
    return f"boot-{round(best[1] / 1e9)}"


def sysctl_bytes(name: str) -> bytes | None:
    """The raw value of the sysctl *name* through ``sysctlbyname`` (BSD, macOS), else None."""
    libc = c_library()
    if libc is None:
        return None
    import ctypes

    try:
        call = libc.sysctlbyname
    except (OSError, AttributeError):
        return None  # glibc and musl have no sysctlbyname
    call.argtypes = [
        ctypes.c_char_p,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    size = ctypes.c_size_t(0)
    key = name.encode()
    if call(key, None, ctypes.byref(size), None, 0) != 0 or not size.value:
        return None
    buf = ctypes.create_string_buffer(size.value)
    if call(key, buf, ctypes.byref(size), None, 0) != 0:
        return None
    return buf.raw[: size.value]


def c_library() -> Any:
    """The C library already loaded into this process (``ctypes.CDLL(None)``), or None.

    ctypes is imported here, not at the top: it is off the hot path of Linux.
    ``ctypes.util.find_library`` is avoided on purpose: it runs subprocesses.
    """
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        return None
