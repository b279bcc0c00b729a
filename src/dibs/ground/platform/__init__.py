"""This machine's primitives, chosen per platform on purpose: the one place that knows them.

Every store and integration reaches the operating system's durability, clock, boot, process,
locking and peer-credential primitives through this package (a test greps ``src/`` for direct uses):

==============  =================  =========================  ======================
primitive       Linux (`linux`)    macOS (`darwin`)           other POSIX (`posix`)
==============  =================  =========================  ======================
durable sync    fdatasync          F_FULLFSYNC (or fsync)     fsync
deciding clock  CLOCK_BOOTTIME     CLOCK_MONOTONIC            CLOCK_MONOTONIC
boot identity   kernel boot_id     kern.bootsessionuuid       kern.boottime
process start   /proc/<pid>/stat   sysctl KERN_PROC_PID       unknown (os.kill only)
group alive     /proc/*/stat pgrp  killpg(pgid, 0)            killpg(pgid, 0)
locking         flock              flock                      flock
peer creds      SO_PEERCRED        getpeereid, LOCAL_PEERPID  none: no CLI helper
==============  =================  =========================  ======================

Linux falls back to the portable answers where ``/proc`` is not mounted or ``os.fdatasync``
is missing. Each module says what its choices guarantee; docs/explanation/platforms.md
compares them.

``DIBS_PLATFORM=posix`` (a testing switch) uses the portable primitives on any system: the
test suite runs the store's contract, the races and the CLI basics that way. Native Windows
is not supported (no ``flock``): `unsupported` says so and the CLI stops at once.
"""

from __future__ import annotations

import os
import sys

from dibs.ground.platform.posix import SYNC_CHOICES, UNKNOWN_START, Posix
from dibs.ground.platform.unsupported import UnsupportedPlatform, unsupported

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "NAME",
    "SYNC_CHOICES",
    "UNKNOWN_START",
    "boot_id",
    "clock_name",
    "clock_ns",
    "describe",
    "group_alive",
    "host_name",
    "lock",
    "parent_death_setup",
    "peer_credentials",
    "peer_credentials_name",
    "problem",
    "process_alive",
    "process_parent",
    "process_start",
    "replace_file",
    "select",
    "stop_group",
    "sync_data",
    "sync_dir",
    "sync_file",
    "sync_primitives",
    "unlock",
    "unsupported",
]

#: The testing switch: the name of the implementation to use instead of this system's.
ENV = "DIBS_PLATFORM"
NAMES = ("linux", "darwin", "posix")


def select(name: str | None = None) -> Posix:
    """The implementation called *name* (default: ``DIBS_PLATFORM``, else this system's)."""
    if name is None:
        name = os.environ.get(ENV) or (
            "linux"
            if sys.platform.startswith("linux")
            else "darwin"
            if sys.platform == "darwin"
            else "posix"
        )
    if name == "linux":
        from dibs.ground.platform.linux import Linux

        return Linux()
    if name == "darwin":
        from dibs.ground.platform.darwin import Darwin

        return Darwin()
    if name == "posix":
        return Posix()
    raise UnsupportedPlatform(
        f"{ENV}={name!r} names no platform",
        hint=f"use one of {', '.join(NAMES)}, or unset {ENV} (it is a testing switch)",
    )


def _current() -> Posix:
    try:
        return select()
    except UnsupportedPlatform:
        # A bad testing switch must not break `import dibs`: the CLI reports it at start.
        return Posix()


current: Posix = _current()
NAME = current.name

#: Make appended bytes durable (see `Posix.sync_data`); *how* is ``store.sync``.
sync_data = current.sync_data
#: Make a file's data and metadata durable.
sync_file = current.sync_file
#: Make new or renamed directory entries durable.
sync_dir = current.sync_dir
sync_primitives = current.sync_primitives
#: The exclusive lock on an open file (flock), and its release.
lock = current.lock
try_lock = current.try_lock
#: Send a signal to a process (the CLI helper passes the caller's on, ends its spares).
send_signal = current.send_signal
unlock = current.unlock
#: The deciding clock in nanoseconds, and its name.
clock_ns = current.clock_ns
clock_name = current.clock_name
#: This boot's id.
boot_id = current.boot_id
#: When a process started (opaque), `UNKNOWN_START`, or None when it is gone.
process_start = current.process_start
host_name = current.host_name
#: Whether a process group has a running member, and stopping one (its leader's start known).
group_alive = current.group_alive
stop_group = current.stop_group
#: A process's command name and parent pid (walking up to a session's client).
process_parent = current.process_parent
#: ``(pid, uid)`` of a Unix socket's peer, from the kernel (the CLI helper serves only its own
#: user); OSError when unknown. The name is None where there is none: no helper then.
peer_credentials = current.peer_credentials
peer_credentials_name = current.peer_credentials_name
#: Which primitive decides each answer here, for people (`dibs doctor`).
describe = current.describe
parent_death_setup: Callable[[], Callable[[], None] | None] = current.parent_death_setup


def replace_file(path: str, data: bytes, how: str = "full", *, sync_folder: bool = False) -> None:
    """Replace *path* with *data* atomically and durably: a temp file beside it, written in
    full and synced (*how* as ``store.sync``), renamed over *path*; with *sync_folder* the
    folder is synced too, so the rename itself survives a crash. A failed write leaves no
    temp file behind."""
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            view = memoryview(data)
            while view:  # os.write may write less than asked
                view = view[os.write(fd, view) :]
            sync_file(fd, how)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    if sync_folder:
        sync_dir(os.path.dirname(path) or ".")


def process_alive(pid: int, start: int | None) -> bool:
    """Whether *pid* runs and is the process that started at *start* (when both are known)."""
    found = process_start(pid)
    if found is None:
        return False
    if start is None or UNKNOWN_START in (start, found):
        return True
    return found == start


def problem() -> UnsupportedPlatform | None:
    """Why dibs cannot run here (native Windows, or a ``DIBS_PLATFORM`` that names nothing),
    or None; the CLI checks it first and stops with the message and hint."""
    found = unsupported()
    if found is None and os.environ.get(ENV):
        try:
            select()
        except UnsupportedPlatform as exc:
            found = exc
    return found
