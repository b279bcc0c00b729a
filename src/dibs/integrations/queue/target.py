"""The processor's footing: the queue's lock, git, and moving the target by compare-and-swap.

The target moves only with ``git update-ref REF NEW OLD`` (or a push with
``--force-with-lease``): a target that moved meanwhile is never overwritten. The worktree that
has the target checked out is carried along, or the move is undone and refused.
"""

from __future__ import annotations

import contextlib
import os
import time

from dibs.core.leases import eviction_reason
from dibs.ground.errors import Conflict, DibsError, LeaseLost, NotFound
from dibs.integrations.queue.conflicts import _meeting
from dibs.integrations.queue.entries import LOCK, _repo, _target

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.service import Coordinator


class _Failed(Exception):
    """An entry cannot land: carries the fields recorded with it."""

    def __init__(self, reason: str, **fields: Any):
        super().__init__(reason)
        self.fields = {"reason": reason, **fields}


class _Base:
    """One processing run: holds ``lock:merge-queue`` through its own short-lived agent."""

    def __init__(self, coord: Coordinator):
        from dibs.service import Coordinator

        self.coord = coord
        self.repo = _repo(coord)
        self.target = _target(coord)
        self.remote = str(coord.settings["merge.remote"])
        self.me = Coordinator(
            coord.store, settings=coord.settings, repo=coord.repo, liveness=coord.liveness
        )
        self.name = f"lander-{os.getpid()}-{os.urandom(3).hex()}"
        self.ttl = float(coord.settings["leases.ttl"])
        self.renewed = 0.0
        self.checkout: str | None = None  # a worktree with the target checked out
        self.env: dict[str, str] = {}

    # The lock ---------------------------------------------------------------------------

    def acquire(self) -> bool:
        if self._held_elsewhere():
            return False
        self.me.register(self.name, ttl=self.ttl, pid=os.getpid())
        try:
            self.me.claim([LOCK], note="processing the merge queue", record_refusal=False)
        except Conflict:
            self.me.unregister()
            return False
        self.renewed = time.monotonic()
        return True

    def _held_elsewhere(self) -> bool:
        """Whether a processor holds the lock now and may not be evicted (a read, no write).

        Every waiting `dibs land` tries to process the queue again and again; without this
        look each try registered an agent of its own and unregistered it after the refusal:
        two durable writes a try (12 agents landing wrote 3,568 such events in two minutes,
        and every reader of the log applied them). A lock freed just after the look costs one
        more try, never a wrong answer: the claim decides."""
        state, now = self.coord.read()
        ctx = self.coord.context(now)
        holders = state.claims.get(LOCK, {}).values()
        return any(not eviction_reason(state, lease, ctx) for lease in holders)

    def keep_lock(self, *, check: bool = False) -> None:
        """Renew the lock when a third of its ttl has gone; with *check*, make sure it is
        still ours even if not (a read, no write). Raises LeaseLost."""
        if time.monotonic() - self.renewed > self.ttl / 3:
            self.me.renew([LOCK])
            self.renewed = time.monotonic()
        elif check:
            state, now = self.coord.read()
            lease = state.claims.get(LOCK, {}).get(self.name)
            if lease is None or eviction_reason(state, lease, self.coord.context(now)):
                raise LeaseLost(
                    f"{self.name} lost {LOCK} (paused or partitioned past its ttl)",
                    hint="another `dibs land` is processing the queue now",
                )

    def let_go(self) -> None:
        """Unregister the processor's agent (and so release the lock)."""
        with contextlib.suppress(DibsError):  # the lock was taken from us: nothing to let go
            self.me.unregister()

    # Git --------------------------------------------------------------------------------

    def _git(self, *args: str, check: bool = True, cwd: str | None = None) -> str:
        from dibs.ground.git.run import git

        return git(cwd or self.repo.root, *args, check=check, env=self.env or None)

    def _tip(self) -> str:
        if self.remote:
            ref = f"refs/remotes/{self.remote}/{self.target}"
            self._git("fetch", "--quiet", self.remote, f"+refs/heads/{self.target}:{ref}")
        else:
            ref = f"refs/heads/{self.target}"
        tip = self._git("rev-parse", "--verify", "--quiet", ref + "^{commit}", check=False)
        if not tip.strip():
            raise NotFound(
                f"the target branch {self.target!r} does not exist",
                hint="set merge.target in dibs.toml to the branch agents land on",
            )
        return tip.strip()

    def _move(self, old: str, new: str) -> bool:
        """Move the target from *old* to *new* if it is still at *old* (compare and swap).

        Raises:
            _Failed: the target's checkout here has uncommitted changes the move would undo.
        """
        from dibs.ground.git.run import GitError

        self.keep_lock(check=True)  # a processor that lost the lock stops here
        if old == new:
            return True
        if self.remote:
            lease = f"--force-with-lease=refs/heads/{self.target}:{old}"
            try:
                self._git("push", "--quiet", lease, self.remote, f"{new}:refs/heads/{self.target}")
            except GitError:
                return False
            local = self._git(
                "rev-parse", "--verify", "--quiet", f"refs/heads/{self.target}", check=False
            ).strip()
            if not local or self._git("merge-base", local, new).strip() == local:
                # Landed on the remote already: a local checkout that cannot follow keeps its
                # branch and files where they were (behind, which `git pull` mends; never
                # corrupted). Refusing here would not undo the push.
                with contextlib.suppress(_Failed):
                    self._move_local(local, new)
            return True
        return self._move_local(old, new)

    def _move_local(self, old: str, new: str) -> bool:
        """Compare-and-swap the local target, carrying the worktree that has it checked out.

        ``update-ref`` moves a branch but not the index and files of a worktree that has it
        checked out: that worktree would then show the landing undone, as staged changes, and
        its next ``git commit`` would revert it. So the checkout is carried from *old* to *new*
        with ``read-tree -m -u`` (local changes to files the landing does not touch are kept).
        Where that cannot be done (uncommitted changes to a landed file, an untracked file in
        the way) the landing is refused, as git's ``updateInstead`` refuses a push, rather than
        merged into someone's unfinished work: `_check_checkout` refuses it before the swap,
        and if the checkout changed since (or git refuses for a reason that check cannot see),
        the swap is undone here.
        """
        from dibs.ground.git.run import GitError

        ref = f"refs/heads/{self.target}"
        message = f"dibs land: {self.target} {old[:12]} -> {new[:12]}"
        try:
            self._git("update-ref", "-m", message, ref, new, *([old] if old else []))
        except GitError:
            return False
        checkout = self._checkout() if old else ""
        if checkout:
            try:
                self._carry(checkout, old, new)
            except _Failed:
                undo = f"dibs land: {self.target} back to {old[:12]} (its checkout cannot follow)"
                try:
                    self._git("update-ref", "-m", undo, ref, old, new)
                except GitError:
                    return True  # someone committed on top already: it has landed
                raise
        return True

    def _carry(self, checkout: str, old: str, new: str) -> None:
        """Update *checkout*'s index and files from *old* to *new*, or raise _Failed."""
        from dibs.ground.git.run import GitError

        if self.remote:  # else `_check_checkout`'s `git status` has just refreshed the index
            # A file touched but not changed would make read-tree refuse ("not uptodate").
            self._git("update-index", "-q", "--refresh", cwd=checkout, check=False)
        try:
            self._git("read-tree", "-m", "-u", old, new, cwd=checkout)
        except GitError as exc:
            landed = set(self._git("diff", "--name-only", "-z", old, new).split("\0")) - {""}
            busy = sorted(_meeting(landed, self._uncommitted(checkout)))
            said = ", ".join(busy[:5]) + (" ..." if len(busy) > 5 else "")
            raise _Failed(
                f"refused: {checkout} has {self.target} checked out and cannot be brought "
                "to the landed commit"
                + (f" (uncommitted changes to {said})" if busy else f": {exc.message}"),
                files=busy,
                checkout=checkout,
                hint=f"commit, stash or discard the changes in {checkout}, then land again",
            ) from None

    def _checkout(self) -> str:
        """The worktree that has the target checked out (the main one, usually), or ''."""
        if self.checkout is None:
            self.checkout = ""
            path = None
            for line in self._git("worktree", "list", "--porcelain").splitlines():
                if line.startswith("worktree "):
                    path = line[len("worktree ") :]
                elif line == f"branch refs/heads/{self.target}" and path is not None:
                    self.checkout = path
        return self.checkout

    def _uncommitted(self, checkout: str) -> set[str]:
        """Paths with uncommitted work in *checkout*: staged, unstaged or untracked (ignored
        files aside, which git itself overwrites)."""
        listing = self._git(
            "status", "--porcelain", "-z", "--untracked-files=all", "--no-renames", cwd=checkout
        )
        return {entry[3:] for entry in listing.split("\0") if entry}
