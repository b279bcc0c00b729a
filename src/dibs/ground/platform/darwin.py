"""macOS: ``F_FULLFSYNC``, ``CLOCK_MONOTONIC``, ``kern.bootsessionuuid``, ``KERN_PROC_PID``.

* sync: plain ``fsync`` on macOS hands the data to the drive but does not wait for the
  drive's cache, so a power cut can lose an acknowledged claim. ``fcntl(F_FULLFSYNC)`` waits
  until the drive reports the data on stable storage. ``store.sync = "full"`` (the default)
  uses it; ``"fsync"`` trades that guarantee for speed (a crash of dibs or of macOS loses
  nothing; a power cut may). A file system that refuses F_FULLFSYNC (some network and FUSE
  file systems) gets plain fsync.
* the deciding clock: ``CLOCK_MONOTONIC``, which on macOS keeps counting while the machine
  sleeps (``time.monotonic``, on ``mach_absolute_time``, stops), so a lease held by a laptop
  that slept past it has expired on waking.
* boot identity: ``kern.bootsessionuuid``, a random UUID per boot; ``kern.boottime`` where it
  is missing.
* process identity: the pid with its start time from ``sysctl(KERN_PROC_PID)`` (struct
  kinfo_proc, via ctypes: no psutil on the hot path). A zombie is gone.
* parent death: no such request exists; ``dibs run`` relies on its watcher alone.
* peer credentials: ``getpeereid`` (libc, via ctypes: the uid the kernel recorded for the
  socket's peer) and ``getsockopt(SOL_LOCAL, LOCAL_PEERPID)`` (its pid: the CLI helper runs a
  call as its client process's). Either failing fails closed: no call is served, the client
  runs it directly.

The parsing of the kernel's answers is plain Python (`parse_kinfo_proc`, `parse_uuid`) and is
tested on every platform; the calls themselves are tested on macOS only.
"""

from __future__ import annotations

import os
import sys

from dibs.ground.platform.posix import Posix, c_library, sysctl_bytes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

#: fcntl's F_FULLFSYNC on macOS (sys/fcntl.h); Python's fcntl module names it there too.
F_FULLFSYNC = 51
_CTL_KERN, _KERN_PROC, _KERN_PROC_PID = 1, 14, 1
#: struct kinfo_proc on 64-bit macOS (x86_64 and arm64): its first member, struct extern_proc,
#: starts with the start time (a union with two pointers: struct timeval, 16 bytes), then
#: p_vmspace and p_sigacts (8 bytes each), p_flag (int, at 32), p_stat (char, at 36),
#: p_pid (int, at 40).
KINFO_PROC_SIZE = 648
_P_STAT, _P_PID = 36, 40
_SZOMB = 5
#: sys/un.h: the socket level of AF_UNIX options, and the option that names the peer's pid.
SOL_LOCAL, LOCAL_PEERPID = 0, 0x002


class Darwin(Posix):
    """macOS."""

    name = "darwin"

    def __init__(self) -> None:
        super().__init__()
        self._kinfo: bool | None = None
        self._getpeereid: Any = None

    def kinfo_works(self) -> bool:
        """Whether ``KERN_PROC_PID`` reads this very process as `parse_kinfo_proc` expects
        (checked once): a layout dibs misreads must not declare live processes dead."""
        if self._kinfo is None:
            raw = kinfo_proc(os.getpid())
            self._kinfo = raw is not None and parse_kinfo_proc(raw, os.getpid()) is not None
        return self._kinfo

    def sync_file(self, fd: int, how: str = "full") -> None:
        """``F_FULLFSYNC`` for ``how="full"``, plain ``fsync`` for ``"fsync"``."""
        if how == "full":
            full_fsync(fd)
        else:
            os.fsync(fd)

    def sync_primitives(self) -> dict[str, Callable[[int], None]]:
        """F_FULLFSYNC and fsync."""
        return {"F_FULLFSYNC": full_fsync, **super().sync_primitives()}

    def clock_name(self) -> str:
        """CLOCK_MONOTONIC, which counts sleep on macOS."""
        return super().clock_name() + " (counts sleep on macOS)"

    def read_boot_id(self) -> str:
        """``kern.bootsessionuuid``; else ``kern.boottime`` (the portable answer)."""
        found = parse_uuid(sysctl_bytes("kern.bootsessionuuid") or b"")
        if not found:
            return super().read_boot_id()
        self.boot_source = "kern.bootsessionuuid"
        return found

    def liveness_name(self) -> str:
        """sysctl KERN_PROC_PID."""
        if not self.kinfo_works():
            return super().liveness_name()
        return "sysctl KERN_PROC_PID start time"

    def sync_name(self, how: str = "full") -> str:
        """F_FULLFSYNC for "full"."""
        return "F_FULLFSYNC" if how == "full" else "fsync"

    def peer_eid(self) -> Any:
        """libc's ``getpeereid`` with its C signature set, or None where libc has none (Linux:
        glibc and musl do not): looked up once, loading ctypes only then."""
        if self._getpeereid is None:
            self._getpeereid = getpeereid_function() or False
        return self._getpeereid or None

    def peer_credentials(self, sock: Any) -> tuple[int, int]:
        """``getpeereid`` for the uid, ``LOCAL_PEERPID`` for the pid."""
        call = self.peer_eid()
        if call is None:
            return super().peer_credentials(sock)
        uid, _gid = getpeereid(call, sock.fileno())
        raw = sock.getsockopt(SOL_LOCAL, LOCAL_PEERPID, 4)
        return parse_pid(raw), uid

    def peer_credentials_name(self) -> str | None:
        """getpeereid and LOCAL_PEERPID where libc has getpeereid."""
        return "getpeereid + LOCAL_PEERPID" if self.peer_eid() is not None else None

    def process_start(self, pid: int) -> int | None:
        """Microseconds since the epoch at which *pid* started, from ``KERN_PROC_PID``."""
        raw = kinfo_proc(pid) if self.kinfo_works() else None
        if raw is None:
            return super().process_start(pid)
        return parse_kinfo_proc(raw, pid)


def full_fsync(fd: int) -> None:
    """Wait until the drive has *fd*'s data on stable storage; plain fsync where refused."""
    import fcntl

    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_FULLFSYNC", F_FULLFSYNC))
    except OSError:
        # ENOTSUP/EINVAL: a file system without the request; fsync is what it can promise.
        os.fsync(fd)


def kinfo_proc(pid: int) -> bytes | None:
    """The raw ``struct kinfo_proc`` of *pid* (empty when there is no such process), or None
    when the call is not available here."""
    libc = c_library()
    call = getattr(libc, "sysctl", None) if libc is not None else None
    if call is None or not 0 < pid < 2**31:
        return None
    import ctypes

    call.argtypes = [
        ctypes.POINTER(ctypes.c_int),
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.c_void_p,
        ctypes.c_size_t,
    ]
    mib = (ctypes.c_int * 4)(_CTL_KERN, _KERN_PROC, _KERN_PROC_PID, pid)
    buf = ctypes.create_string_buffer(KINFO_PROC_SIZE)
    size = ctypes.c_size_t(KINFO_PROC_SIZE)
    if call(mib, 4, buf, ctypes.byref(size), None, 0) != 0:
        return None
    return buf.raw[: size.value]


def getpeereid_function() -> Any:
    """libc's ``int getpeereid(int, uid_t *, gid_t *)`` with its argument types set (uid_t and
    gid_t are 32-bit unsigned on macOS and the BSDs), or None where libc has no such call."""
    libc = c_library()
    call = getattr(libc, "getpeereid", None) if libc is not None else None
    if call is None:
        return None
    import ctypes

    call.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_uint32)]
    call.restype = ctypes.c_int
    return call


def getpeereid(call: Any, fd: int) -> tuple[int, int]:
    """``(uid, gid)`` of the peer of the connected Unix socket *fd*, through *call*
    (`getpeereid_function`); OSError when the kernel refuses (not a socket, not connected)."""
    import ctypes

    uid, gid = ctypes.c_uint32(), ctypes.c_uint32()
    if call(fd, ctypes.byref(uid), ctypes.byref(gid)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return uid.value, gid.value


def parse_pid(raw: bytes) -> int:
    """The pid in a ``LOCAL_PEERPID`` answer (a native ``pid_t``); OSError when it is not one,
    so that an unexpected answer serves nobody."""
    if len(raw) != 4:
        raise OSError(f"LOCAL_PEERPID answered {len(raw)} bytes, not a pid")
    pid = int.from_bytes(raw, sys.byteorder, signed=True)
    if pid <= 0:
        raise OSError(f"LOCAL_PEERPID answered pid {pid}")
    return pid


def parse_kinfo_proc(raw: bytes, pid: int) -> int | None:
    """The start time in a ``struct kinfo_proc`` (microseconds since the epoch), or None when
    it is empty (no such process), a zombie, or about another pid."""
    if len(raw) < _P_PID + 4:
        return None
    if int.from_bytes(raw[_P_PID : _P_PID + 4], sys.byteorder, signed=True) != pid:
        return None
    if raw[_P_STAT] == _SZOMB:
        return None
    seconds = int.from_bytes(raw[0:8], sys.byteorder, signed=True)
    micros = int.from_bytes(raw[8:12], sys.byteorder, signed=True)
    return seconds * 1_000_000 + micros


def parse_uuid(raw: bytes) -> str:
    """A NUL-terminated UUID string from ``sysctlbyname``; empty when it is not one."""
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
    return text if len(text) == 36 and text.count("-") == 4 else ""
