"""Batches (``merge.batch = N``): several entries stacked on the tip and tested once.

On green the whole stack lands; on red it is split in halves to find the culprit (as bors
does), so the result equals landing the entries one by one. A batch saves gate runs when most
entries are good; `speculation` saves wall time instead.
"""

from __future__ import annotations

from dibs.integrations.queue.entries import MAX_ATTEMPTS
from dibs.integrations.queue.gates import FAILURES
from dibs.integrations.queue.target import _Failed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.integrations.queue.processor import Results, _Processor

    #: Entries put on one another, each with its commit.
    Stack = list[tuple[dict[str, Any], str]]


def process_batches(proc: _Processor) -> None:
    """Take up to ``batch`` entries at a time off the queue until it is empty."""
    bisect = _Bisect(proc)
    while True:
        pending = proc.pending()
        if not pending:
            return
        proc.keep_lock()
        ready = [item for item in map(proc._take, pending[: proc.batch]) if item is not None]
        if ready:
            tip = proc._tip()
            bisect.settle(bisect.stack(ready, tip), tip, attempt=1)


class _Bisect:
    """Test a stack, land it or split it; gate results are written with the next outcome."""

    def __init__(self, proc: _Processor) -> None:
        self.proc = proc
        self.results: list[Results] = []
        self.failures: dict[str, dict[str, Any]] = {}
        self.flaky: dict[str, list[dict[str, Any]]] = {}

    def conclude(self, outcomes: list[tuple[dict[str, Any], str, dict[str, Any]]]) -> None:
        results, self.results = self.results, []
        failures, self.failures = self.failures, {}
        self.proc._conclude(outcomes, results, failures)

    def fail(self, item: dict[str, Any], fields: dict[str, Any]) -> None:
        self.conclude([(item, "failed", fields)])

    def stack(self, items: list[dict[str, Any]], base: str) -> Stack:
        """Put each of *items* on the one before (the first on *base*); failures leave."""
        stack = []
        for item in items:
            try:
                commit = self.proc._apply(item, base)
            except _Failed as failed:
                self.fail(item, failed.fields)
                continue
            stack.append((item, commit))
            base = commit
        return stack

    def settle(self, stack: Stack, tip: str, attempt: int) -> str:
        """Test the top of *stack* (built on *tip*) and land it, or split to find the culprit.

        Returns the target's tip afterwards.
        """
        if not stack:
            return tip
        failure = self.test(stack, tip)
        if failure is None:
            return self.land(stack, tip, attempt)
        if len(stack) == 1:
            self.fail(stack[0][0], failure)
            return tip
        half = len(stack) // 2
        first, second = stack[:half], stack[half:]
        after = self.settle(first, tip, attempt)
        if after != first[-1][1]:  # some of the first half failed: the rest must be rebuilt
            second = self.stack([item for item, _ in second], after)
        return self.settle(second, after, attempt)

    def land(self, stack: Stack, tip: str, attempt: int) -> str:
        """Move the target from *tip* to the top of the tested *stack*, after the last gate."""
        proc = self.proc
        top = stack[-1][1]
        lost = []
        base = tip
        for item, commit in stack:
            try:
                proc._last_gate(item, base, commit)
            except _Failed as failed:
                self.fail(item, failed.fields)
                lost.append(item["id"])
            base = commit
        if lost:
            rest = [item for item, _ in stack if item["id"] not in lost]
            return self.settle(self.stack(rest, tip), tip, attempt)
        # Written before the target moves: a processor killed between the move and its
        # `land-done` leaves this behind, and whoever looks next (the next processor,
        # `dibs ready`/`next`) sees from the target that the entry landed.
        proc._write(
            [(item, "land-start", {"moving": {"commit": c, "onto": tip}}) for item, c in stack]
        )
        try:
            moved = proc._move(tip, top)
        except _Failed as failed:  # the target's checkout cannot take the whole stack
            self.conclude([(item, "failed", failed.fields) for item, _ in stack])
            return tip
        if moved:
            done: dict[str, Any] = {"onto": tip, "attempts": attempt}
            if self.flaky:
                done |= {"flaky": sorted(self.flaky), "tries": self.flaky}
            self.flaky = {}
            self.conclude([(item, "landed", {**done, "commit": c}) for item, c in stack])
            return top
        items = [item for item, _ in stack]
        if attempt >= MAX_ATTEMPTS:
            reason = f"{proc.target} kept moving: gave up after {attempt} tries"
            self.conclude([(item, "failed", {"reason": reason}) for item in items])
            return tip
        new_tip = proc._tip()
        return self.settle(self.stack(items, new_tip), new_tip, attempt + 1)

    def test(self, stack: Stack, tip: str) -> dict[str, Any] | None:
        """Run the command gates on the top of *stack*; the first failure, or None."""
        proc = self.proc
        if not proc.gates.names:
            return None
        items = [item for item, _ in stack]
        top = stack[-1][1]
        work = proc._workdir(0)
        path = proc._check_out(work, top)
        work.dirty = True
        run = proc.gates.run(
            top,
            path,
            items,
            base_tree=lambda: proc._tree(tip),
            cache=proc.coord.read()[0].tables.get(FAILURES, {}),
            tick=proc.keep_lock,
            record=work.record,
        )
        if run.ran:
            proc.outcome.gate_runs += 1
        self.results.append((sorted({item["issue"] for item in items}), run.results))
        self.failures |= run.failed
        if run.failure is None:
            self.flaky |= run.flaky
        return run.failure
