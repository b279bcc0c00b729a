"""The merge queue: land agent branches on the target in order, tested on what they land on.

An agent hands its finished branch to the queue (`enqueue`, or `land` which also processes).
Whoever holds ``lock:merge-queue`` processes the queue; any `land` becomes the processor when
nobody is. For each entry, in landing order (`entries`), the processor:

1. checks the entry's fencing token is still the current token of its issue claim (a stale
   holder cannot land work: "lease lost");
2. checks the manual gates (``dibs gate pass ISSUE review``) passed on the branch's commit;
3. in a temporary worktree, rebases the branch onto what it will land on (or merges it): the
   target's tip, or with ``merge.parallel`` the speculative result of the entries ahead of it;
   one that cannot is refused at once with the conflicting files;
4. runs the command gates of ``dibs.toml`` on that exact commit, with a timeout and a gate's
   ``retries`` (`gates`); a failure already seen on the same base and commits is not run again;
5. re-checks the fence, refuses a diff that changes what another agent holds (claims are the
   last gate) or what has uncommitted changes in the target's checkout, and then
   moves the target with a compare-and-swap (``git update-ref REF NEW OLD``, or a push with
   ``--force-with-lease`` when ``merge.remote`` is set), so a target that moved meanwhile is
   never overwritten: the entry is then rebuilt on the new tip and tested again;
6. records the outcome as an event (``land-done`` or ``land-fail``, with the entry's agent, the
   reason and the files: what tells its author).

The modules: `entries` (queueing, order, history), `gates` (manual verdicts, running command
gates, the failure cache), `conflicts` (prediction among live branches), `target` (the lock
and the compare-and-swap), `checks` (fence, claims, checkout), `processor` (taking entries,
building commits, writing outcomes) and its two engines, `speculation` (``merge.parallel``)
and `batch` (``merge.batch``, bisected on red).
"""

from __future__ import annotations

import time

from dibs.integrations.queue.conflicts import conflicts
from dibs.integrations.queue.entries import (
    GATES,
    KEEP_FINISHED,
    LANDED,
    LOCK,
    OPEN,
    PRIORITIES,
    QUEUE,
    cancel,
    enqueue,
    entries,
    entry,
    history,
    issue_of_branch,
    landed_issues,
    moved_unrecorded,
)
from dibs.integrations.queue.gates import (
    gate_retries,
    gates,
    record_gate,
    required_gates,
    stop_orphaned_gates,
)
from dibs.integrations.queue.processor import Outcome, _Processor, dead_lander_worktrees

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dibs.service import Coordinator

__all__ = [
    "GATES",
    "KEEP_FINISHED",
    "LANDED",
    "LOCK",
    "OPEN",
    "PRIORITIES",
    "QUEUE",
    "Outcome",
    "cancel",
    "conflicts",
    "dead_lander_worktrees",
    "enqueue",
    "entries",
    "entry",
    "gate_retries",
    "gates",
    "history",
    "issue_of_branch",
    "land",
    "landed_issues",
    "moved_unrecorded",
    "process",
    "record_gate",
    "required_gates",
    "stop_orphaned_gates",
]


def process(
    coord: Coordinator, *, batch: int | None = None, parallel: int | None = None
) -> Outcome | None:
    """Process the queue until it is empty, if nobody else is processing it.

    *batch* (default ``merge.batch``) over 1 tests that many entries as one, bisecting on red;
    otherwise *parallel* (default ``merge.parallel``) entries are tested at once, each on
    those ahead of it.

    Returns:
        What was handled, or None when another process holds ``lock:merge-queue``.
    """
    from dibs.service.checks import check_number

    size = batch if batch is not None else coord.settings["merge.batch"]
    check_number(size, "batch", low=1, high=64, whole=True, hint="give 1 to 64")
    width = parallel if parallel is not None else coord.settings["merge.parallel"]
    check_number(width, "parallel", low=1, high=64, whole=True, hint="give 1 to 64")
    processor = _Processor(coord, size, width)
    if not processor.acquire():
        return None
    try:
        processor.run()
    finally:
        processor.close()
    return processor.outcome


def land(
    coord: Coordinator,
    branch: str | None = None,
    *,
    issue: str | None = None,
    batch: int | None = None,
    parallel: int | None = None,
    priority: str = "normal",
    wait: float | None = None,
    on_change: Callable[[dict[str, Any]], None] | None = None,
    as_operator: bool = False,
) -> dict[str, Any]:
    """Enqueue *branch* and see it through: process the queue, or wait for whoever does.

    Who may land is `enqueue`'s rule: the agent holding the issue, or a person with
    *as_operator*.

    Args:
        priority: ``high`` goes ahead of every ``normal`` entry not yet being tested.
        wait: seconds to wait for the entry to finish (None: as long as it takes).
        on_change: called with the entry whenever its state changes (progress for people).

    Returns:
        The finished entry (``state`` is ``landed`` or ``failed``), with ``gate_runs``.

    Raises:
        LockTimeout: the entry is still waiting when *wait* runs out.
    """
    from dibs.ground.errors import LockTimeout
    from dibs.service.checks import check_wait

    wait = check_wait(wait)
    entry_now = enqueue(coord, branch, issue=issue, priority=priority, as_operator=as_operator)
    deadline = None if wait is None else time.monotonic() + wait
    seen = None
    delay = 0.05
    runs = 0
    while True:
        outcome = process(coord, batch=batch, parallel=parallel)
        if outcome is not None:
            runs += outcome.gate_runs
        current = entry(coord, entry_now["id"])
        if on_change is not None and current["state"] != seen:
            on_change(current)
        seen = current["state"]
        if current["state"] not in OPEN:
            current["gate_runs"] = runs
            return current
        if deadline is not None and time.monotonic() >= deadline:
            raise LockTimeout(
                f"{current['id']} is still {current['state']} after {wait:g} s",
                hint="it stays queued; see `dibs queue`",
                entry=current,
            )
        if outcome is None:
            time.sleep(delay)
            delay = min(delay * 2, 1.0)
