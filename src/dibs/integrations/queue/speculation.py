"""Speculation (``merge.parallel = N``): up to N entries tested at once, in queue order.

The entries being tested form a window, in landing order. Each is built (rebased or merged)
in its own temporary worktree on the commit of the entry ahead of it, the first on the
target's tip: the speculative result of landing everything ahead. Their gates run at the same
time, each in a thread that only waits for its command. The window is kept true by one rule,
`Speculation.build`: walking the window from the tip, an entry whose base is not the commit of
the last entry ahead of it that has not failed is stopped, rebuilt on that commit and tested
again. So when an entry fails, the speculation behind it is rebuilt without it; when the
target moves under the queue, everything is rebuilt on the new tip.

Only the head of the window lands, and only when its base is the target's tip: the gates that
passed ran on the exact commit that becomes the tip (the compare-and-swap makes sure of it),
after the same last gate as one-at-a-time (fence, claims, checkout) and the same ``moving``
record before the move. An entry that cannot be put on the entries ahead of it fails at once
with the conflicting files and the entries ahead that changed them: no gate runs for it.
With N = 1 this is the one-at-a-time queue.
"""

from __future__ import annotations

import queue
import threading

from dibs.integrations.queue.entries import MAX_ATTEMPTS
from dibs.integrations.queue.gates import GateRun
from dibs.integrations.queue.target import _Failed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.integrations.queue.processor import _Processor, _Workdir


class _Slot:
    """An entry in the window: where it is built, on what, and its gates' result."""

    def __init__(self, item: dict[str, Any], index: int, work: _Workdir) -> None:
        self.item = item
        self.index = index  # of its temporary worktree
        self.work = work
        self.base = ""  # the commit it is built on ('': not built yet)
        self.commit = ""  # its commit on *base*
        self.run: GateRun | None = None  # its gates' result, once in
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None
        self.generation = 0  # of its current run: results of stopped runs are ignored
        self.attempts = 1  # compare-and-swaps tried (the target moved under it)

    @property
    def failed(self) -> bool:
        return self.run is not None and not self.run.passed


class Speculation:
    """One processor's window of entries under test (see the module's docstring)."""

    def __init__(self, proc: _Processor, width: int) -> None:
        self.proc = proc
        self.width = width
        self.window: list[_Slot] = []
        self.free = list(range(width))  # temporary worktrees not in use
        self.tip = ""
        self.done: queue.Queue[tuple[_Slot, int, GateRun | BaseException]] = queue.Queue()

    def run(self) -> None:
        """Process until the queue is empty (the caller holds the lock)."""
        self.tip = self.proc._tip()
        try:
            while True:
                self.proc.keep_lock()
                self.fill()
                if not self.window:
                    return
                self.build()
                if not self.settle():
                    self.wait()
        finally:
            self.stop(self.window)

    # The window -------------------------------------------------------------------------

    def fill(self) -> None:
        """Take waiting entries, in landing order, until the window is full."""
        if len(self.window) >= self.width:
            return
        taken = {slot.item["id"] for slot in self.window}
        for waiting in self.proc.pending():
            if len(self.window) >= self.width:
                return
            if waiting["id"] in taken:
                continue
            item = self.proc._take(waiting)
            if item is not None:
                index = self.free.pop(0)
                self.window.append(_Slot(item, index, self.proc._workdir(index)))

    def build(self) -> None:
        """Make every entry's base the commit of the last unfailed entry ahead of it (the tip
        for the first); rebuild and retest those whose base is not."""
        chain = self.tip
        for slot in list(self.window):
            if slot.base != chain:
                self.stop([slot])
                try:
                    commit = self.proc._apply(slot.item, chain, slot.work)
                except _Failed as failed:
                    fields = self.conflict(slot, failed.fields)
                    self.drop(slot)
                    self.proc._finish(slot.item, "failed", **fields)
                    continue
                slot.base, slot.commit = chain, commit
                self.start(slot)
            if not slot.failed:
                chain = slot.commit

    def conflict(self, slot: _Slot, fields: dict[str, Any]) -> dict[str, Any]:
        """*fields* of a failure to build *slot*, naming the entries ahead of it (not landed
        yet) that changed its conflicting files."""
        files = set(fields.get("files") or ())
        if not files:
            return fields
        ahead = []
        for other in self.window:
            if other is slot:
                break
            if other.failed or not other.commit:
                continue
            changed = self.proc._git("diff", "--name-only", "-z", other.base, other.commit)
            if files & set(changed.split("\0")):
                ahead.append({k: other.item[k] for k in ("id", "branch", "issue", "agent")})
        if not ahead:
            return fields
        said = ", ".join(f"{a['id']} ({a['branch']})" for a in ahead)
        return {
            **fields,
            "ahead": ahead,
            "reason": f"conflicts in {', '.join(sorted(files))} with {said}, ahead of it in "
            "the queue",
            "hint": f"rebase {slot.item['branch']} onto {self.proc.target} once they land "
            "(or onto their branches), resolve, and land again",
        }

    def drop(self, slot: _Slot) -> None:
        self.window.remove(slot)
        self.free.append(slot.index)

    # Gate runs --------------------------------------------------------------------------

    def start(self, slot: _Slot) -> None:
        """Run *slot*'s gates on its commit, in a thread, in its own worktree."""
        proc = self.proc
        slot.run = None
        slot.generation += 1
        slot.cancel = threading.Event()
        path = proc._check_out(slot.work, slot.commit)
        slot.work.dirty = True
        cache, record = proc.failures, slot.work.record
        generation, cancel, item, commit, base = (
            slot.generation,
            slot.cancel,
            slot.item,
            slot.commit,
            slot.base,
        )

        def test() -> None:
            result: GateRun | BaseException
            try:
                result = proc.gates.run(
                    commit,
                    path,
                    [item],
                    base_tree=lambda: proc._tree(base),
                    cache=cache,
                    cancel=cancel,
                    record=record,
                )
            except BaseException as exc:  # noqa: BLE001 (handed to the main thread, raised there)
                result = exc
            self.done.put((slot, generation, result))

        slot.thread = threading.Thread(target=test, name=f"gate {item['id']}", daemon=True)
        slot.thread.start()

    def stop(self, slots: list[_Slot]) -> None:
        """Stop the gate runs of *slots* and wait until their commands are gone."""
        running = [(slot, slot.thread) for slot in slots if slot.thread is not None]
        for slot, _ in running:
            slot.cancel.set()
        for slot, thread in running:
            thread.join()
            slot.thread = None

    def wait(self) -> None:
        """Wait for gate results (renewing the lock meanwhile) and file them."""
        try:
            got = [self.done.get(timeout=min(1.0, self.proc.ttl / 6))]
        except queue.Empty:
            return
        while True:
            try:
                got.append(self.done.get_nowait())
            except queue.Empty:
                break
        for slot, generation, result in got:
            if isinstance(result, BaseException):
                raise result
            if result.ran:
                self.proc.outcome.gate_runs += 1
            current = generation == slot.generation and slot in self.window
            if current and not result.cancelled:
                slot.run, slot.thread = result, None

    # Landing ----------------------------------------------------------------------------

    def settle(self) -> bool:
        """Land or fail the head of the window if its result is in; whether it did."""
        if not self.window:
            return False
        head = self.window[0]
        if head.run is None or head.base != self.tip:
            return False
        results = [([head.item["issue"]], head.run.results)] if head.run.results else []
        if head.run.failure is not None:  # on the final base: a real failure
            self.drop(head)
            fields = head.run.failure
            self.proc._conclude([(head.item, "failed", fields)], results, head.run.failed)
            return True
        try:
            self.proc._last_gate(head.item, head.base, head.commit)
        except _Failed as failed:
            self.drop(head)
            self.proc._conclude([(head.item, "failed", failed.fields)], results)
            return True
        return self.move(head, head.run, results)

    def move(self, head: _Slot, run: GateRun, results: list[Any]) -> bool:
        """Compare-and-swap the target from the tip to *head*'s commit."""
        proc = self.proc
        # Written before the target moves: a processor killed between the move and its
        # `land-done` leaves this behind, and whoever looks next (the next processor,
        # `dibs ready`/`next`) sees from the target that the entry landed.
        moving = {"moving": {"commit": head.commit, "onto": self.tip}}
        proc._write([(head.item, "land-start", moving)])
        try:
            moved = proc._move(self.tip, head.commit)
        except _Failed as failed:  # the target's checkout cannot take it
            self.drop(head)
            proc._conclude([(head.item, "failed", failed.fields)], results)
            return True
        if moved:
            self.drop(head)
            done: dict[str, Any] = {
                "onto": self.tip,
                "attempts": head.attempts,
                "commit": head.commit,
            }
            if run.flaky:
                done |= {"flaky": sorted(run.flaky), "tries": run.flaky}
            proc._conclude([(head.item, "landed", done)], results)
            self.tip = head.commit
            return True
        if head.attempts >= MAX_ATTEMPTS:
            self.drop(head)
            reason = f"{proc.target} kept moving: gave up after {head.attempts} tries"
            proc._conclude([(head.item, "failed", {"reason": reason})], results)
            return True
        head.attempts += 1
        self.tip = proc._tip()  # everything is rebuilt on it
        return True
