"""I/O faults: ENOSPC at the nth write and EIO at the nth sync, for every n of a workload.

The operation that meets the fault fails closed with a clear message, no success is reported
after a failed sync, and once the disk is healthy again the store opens cleanly and carries on,
with the history checker finding nothing wrong.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from dibs.ground.errors import Conflict, StoreIOError
from dibs.service import Coordinator
from dibs.store.local import LocalStore
from tests.conftest import FakeClock, FakeLiveness
from tests.faults.crashfs import local_store_os
from tests.faults.history import History, check


class FaultyOS:
    """``os`` for the local store, failing the nth write (ENOSPC) or the nth sync (EIO)."""

    path = os.path

    def __init__(self, *, fail_write: int = 0, fail_sync: int = 0):
        self.fail_write = fail_write
        self.fail_sync = fail_sync
        self.writes = 0
        self.syncs = 0
        self.fired = 0
        self.full = False

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        self.writes += 1
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self.writes == self.fail_write:
            # A disk that fills up mid-write: part goes down, the rest is refused.
            self.fired += 1
            self.full = True
            return os.write(fd, data[: max(1, len(data) // 2)])
        return os.write(fd, data)

    def _sync(self, real: Any, fd: int) -> None:
        self.syncs += 1
        if self.syncs == self.fail_sync:
            self.fired += 1
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    def fsync(self, fd: int) -> None:
        self._sync(os.fsync, fd)

    def fdatasync(self, fd: int) -> None:
        self._sync(os.fdatasync, fd)


def workload(
    coordinators: list[Coordinator], history: History, rounds: int
) -> tuple[int, list[str]]:
    """Claim and release in turns; return how many ops ran and what failed, and how."""
    failures: list[str] = []
    ops = 0
    for step in range(rounds):
        agent = coordinators[step % len(coordinators)]
        resource = f"issue:{step % 4}"
        op = history.record(agent.agent or "?", "acquire", resource)
        ops += 1
        try:
            [grant] = agent.claim([resource], note="x" * 120)
            history.done(op, "ok", grant["token"])
            agent.release([resource])
        except Conflict:
            history.done(op, "refused")
        except StoreIOError as exc:
            history.done(op, "failed")
            failures.append(exc.message)
    return ops, failures


def run(tmp_path: Path, faulty: FaultyOS) -> tuple[int, list[str], History]:
    root = tmp_path / "dibs"
    clock = FakeClock()
    history = History()
    coordinators = []
    for name in ("a1", "a2"):
        # No checkpoints: every write and sync below is the log's, so every fault must show.
        store = LocalStore(root, clock=clock, checkpoint_bytes=10**12)
        c = Coordinator(store, liveness=FakeLiveness())
        c.register(name)
        coordinators.append(c)
    with local_store_os(faulty):
        ops, failures = workload(coordinators, history, rounds=12)
    # Space returns: a fresh opener (and the old handles) carry on.
    ops2, failures2 = workload(coordinators, history, rounds=4)
    assert [] == failures2
    return ops + ops2, failures, history


@pytest.mark.parametrize("n", range(1, 25))  # the workload makes 24 writes
def test_disk_full_at_the_nth_write_fails_closed(tmp_path: Path, n: int) -> None:
    """ENOSPC at write n: that claim fails with a clear message; nothing half-written remains."""
    faulty = FaultyOS(fail_write=n)
    _, failures, history = run(tmp_path, faulty)
    assert 1 == faulty.fired
    assert failures
    assert all("No space left on device; nothing was done" in f for f in failures)
    store = LocalStore(tmp_path / "dibs")
    assert [] == [f for f in store.check() if f["kind"] in ("corrupt-log", "torn-tail")]
    check(store.events(), history).assert_clean()


@pytest.mark.parametrize("n", range(1, 21))
def test_failed_sync_at_the_nth_sync_is_never_reported_as_success(tmp_path: Path, n: int) -> None:
    """EIO at sync n: the operation is not acknowledged; the store opens cleanly afterwards."""
    faulty = FaultyOS(fail_sync=n)
    _, failures, history = run(tmp_path, faulty)
    assert 1 == faulty.fired
    [failure] = failures
    assert "Input/output error; the operation was not acknowledged" in failure
    [failed] = [op for op in history.ops if op.outcome == "failed"]
    assert failed.token is None
    store = LocalStore(tmp_path / "dibs")
    assert [] == [f for f in store.check() if f["kind"] == "corrupt-log"]
    check(store.events(), history).assert_clean()
