"""Simulated power loss: record a store's file-system calls, then build every crash state.

`Recorder` stands in for the ``os`` module inside `dibs.store.local` and logs each call that
changes files (open with create or truncate, write, ftruncate, fsync, fdatasync, fchmod,
mkdir, rename) plus the test's own marks ("this operation was acknowledged"). `crash_states`
replays the log into a model that keeps, for every file, what is in the page cache and what an
fsync made durable, and for every directory which entries a directory fsync made durable
(ALICE, OSDI 2014, in small). At every point of the log it yields:

* ``durable``: power lost; only what was fsynced survives, and a file created or renamed in a
  directory that was not fsynced afterwards is gone (or still has its old name);
* ``cached``: the process died but the machine did not; everything written survives;
* ``torn@N``: power lost in the middle of the last write: everything before it survives and
  only its first N bytes do (one state per byte).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class Recorder:
    """A stand-in for ``os`` that records file-system changes (reads pass straight through)."""

    path = os.path

    def __init__(self) -> None:
        self.ops: list[tuple[Any, ...]] = []
        self._fds: dict[int, str] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def mark(self, what: Any) -> None:
        self.ops.append(("mark", what))

    def open(self, path: str, flags: int, mode: int = 0o777, **kw: Any) -> int:
        fd = os.open(path, flags, mode, **kw)
        full = os.path.abspath(path)
        self._fds[fd] = full
        self.ops.append(("open", full, fd, flags))
        return fd

    def close(self, fd: int) -> None:
        os.close(fd)
        self._fds.pop(fd, None)
        self.ops.append(("close", fd))

    def write(self, fd: int, data: bytes) -> int:
        written = os.write(fd, data)
        self.ops.append(("write", fd, bytes(data[:written])))
        return written

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)
        self.ops.append(("truncate", fd, length))

    def fsync(self, fd: int) -> None:
        os.fsync(fd)
        self.ops.append(("fsync", fd))

    def fdatasync(self, fd: int) -> None:
        os.fdatasync(fd)
        self.ops.append(("fdatasync", fd))

    def fchmod(self, fd: int, mode: int) -> None:
        os.fchmod(fd, mode)
        self.ops.append(("chmod", fd, mode))

    def mkdir(self, path: str, mode: int = 0o777) -> None:
        os.mkdir(path, mode)
        self.ops.append(("mkdir", os.path.abspath(path)))

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)
        self.ops.append(("rename", os.path.abspath(src), os.path.abspath(dst)))


@dataclass
class Inode:
    is_dir: bool = False
    data: bytearray = field(default_factory=bytearray)
    synced: bytes = b""
    mode: int = 0o644
    synced_mode: int = 0o644


@dataclass
class CrashState:
    """One possible disk after a crash: what is there, and which operations were acknowledged."""

    point: int
    variant: str
    files: dict[str, tuple[bytes, int]]  # path -> (content, mode); directories have mode -1
    acknowledged: list[Any]


class Model:
    """Page cache versus disk, replayed from a `Recorder` log."""

    def __init__(self, base: str):
        self.base = base
        self.cache: dict[str, Inode] = {}  # the names a process sees
        self.disk: dict[str, Inode] = {}  # the names a directory fsync made durable
        self.fds: dict[int, tuple[Inode, str, bool]] = {}  # fd -> (inode, path, append)
        self.offsets: dict[int, int] = {}

    def apply(self, op: tuple[Any, ...]) -> None:
        getattr(self, "_" + op[0])(*op[1:])

    def _open(self, path: str, fd: int, flags: int) -> None:
        inode = self.cache.get(path)
        if inode is None and flags & os.O_CREAT:
            inode = self.cache[path] = Inode()
        elif inode is None:  # a directory made by mkdir, or the base
            inode = self.cache.setdefault(path, Inode(is_dir=True))
        if flags & os.O_TRUNC:
            inode.data = bytearray()
        self.fds[fd] = (inode, path, bool(flags & os.O_APPEND))
        self.offsets[fd] = 0

    def _close(self, fd: int) -> None:
        self.fds.pop(fd, None)

    def _write(self, fd: int, data: bytes) -> None:
        inode, _, append = self.fds[fd]
        at = len(inode.data) if append else self.offsets[fd]
        inode.data[at : at + len(data)] = data
        self.offsets[fd] = at + len(data)

    def _truncate(self, fd: int, length: int) -> None:
        del self.fds[fd][0].data[length:]

    def _fsync(self, fd: int, *, metadata: bool = True) -> None:
        inode, path, _ = self.fds[fd]
        if inode.is_dir:
            self._sync_dir(path)
            return
        inode.synced = bytes(inode.data)
        if metadata:
            inode.synced_mode = inode.mode

    def _fdatasync(self, fd: int) -> None:
        self._fsync(fd, metadata=False)

    def _chmod(self, fd: int, mode: int) -> None:
        self.fds[fd][0].mode = mode

    def _mkdir(self, path: str) -> None:
        self.cache[path] = Inode(is_dir=True)

    def _rename(self, src: str, dst: str) -> None:
        self.cache[dst] = self.cache.pop(src)

    def _sync_dir(self, path: str) -> None:
        for name in set(self.cache) | set(self.disk):
            if os.path.dirname(name) == path:
                if name in self.cache:
                    self.disk[name] = self.cache[name]
                else:
                    self.disk.pop(name, None)

    def snapshot(self, *, durable: bool) -> dict[str, tuple[bytes, int]]:
        names = self.disk if durable else self.cache
        files: dict[str, tuple[bytes, int]] = {}
        for path in sorted(names, key=len):
            parent = os.path.dirname(path)
            if parent != self.base and parent not in files:
                continue  # its folder did not survive
            inode = names[path]
            if inode.is_dir:
                files[path] = (b"", -1)
            elif durable:
                files[path] = (inode.synced, inode.synced_mode)
            else:
                files[path] = (bytes(inode.data), inode.mode)
        return files


def crash_states(ops: list[tuple[Any, ...]], base: str) -> Iterator[CrashState]:
    """Every crash state of the recorded log, point by point (see the module docstring)."""
    model = Model(base)
    acknowledged: list[Any] = []
    for point, op in enumerate(ops):
        if op[0] == "mark":
            acknowledged.append(op[1])
            continue
        if op[0] == "write":
            fd, data = op[1], op[2]
            inode, path, append = model.fds[fd]
            at = len(inode.data) if append else model.offsets[fd]
            before = bytes(inode.data)
            files = model.snapshot(durable=False)
            for cut in range(len(data)):
                torn = bytearray(before)
                torn[at : at + cut] = data[:cut]
                yield CrashState(
                    point,
                    f"torn@{cut}",
                    {**files, path: (bytes(torn), inode.mode)},
                    list(acknowledged),
                )
        model.apply(op)
        yield CrashState(point, "durable", model.snapshot(durable=True), list(acknowledged))
        yield CrashState(point, "cached", model.snapshot(durable=False), list(acknowledged))


def materialize(state: CrashState, base: str, target: Path) -> Path:
    """Write *state* under *target* (paths re-rooted from *base*); return the new base."""
    target.mkdir(parents=True)
    for path, (content, mode) in state.files.items():
        where = target / os.path.relpath(path, base)
        if mode == -1:
            where.mkdir(exist_ok=True)
        else:
            where.write_bytes(content)
            where.chmod(mode)
    return target


@contextlib.contextmanager
def local_store_os(fake: Any) -> Iterator[None]:
    """Put *fake* in place of ``os`` wherever the local store reaches the disk: the store itself
    and the platform layer that syncs and locks for it."""
    import dibs.ground.platform
    import dibs.ground.platform.darwin
    import dibs.ground.platform.linux
    import dibs.ground.platform.posix
    import dibs.store.local

    modules = [
        dibs.store.local,
        dibs.ground.platform,  # replace_file
        dibs.ground.platform.posix,
        dibs.ground.platform.linux,
        dibs.ground.platform.darwin,
    ]
    originals = [m.os for m in modules]
    for module in modules:
        module.os = fake
    try:
        yield
    finally:
        for module, original in zip(modules, originals, strict=True):
            module.os = original
