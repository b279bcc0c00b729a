"""The processor: takes entries off the queue, builds their commits, records their outcomes.

Whoever holds ``lock:merge-queue`` processes; `run` hands the entries to one of two engines:
`speculation` (``merge.parallel``: each entry tested on those ahead of it, several at once)
or `batch` (``merge.batch``: several entries tested as one, bisected on red). Both land by the
compare-and-swap of `target` after the checks of `checks`, and write, before the target moves,
a ``land-start`` with ``moving`` (the commit about to land): a processor killed between the
move and its ``land-done`` is recognised by the next one, which records the landing without
landing it twice (`_take`).

A processor killed that way also leaves its gate commands running (they lead sessions of their
own). The next processor stops them before it tests anything, and again before it takes over
an entry of a processor that is gone (`_stop_orphans`): two runs of one entry's gates never
overlap, and no gate writes into a temporary worktree that is being swept or reused.
"""

from __future__ import annotations

import os

from dibs.core.leases import Decision
from dibs.integrations.queue.checks import _Checks
from dibs.integrations.queue.entries import (
    _IDENTITY,
    QUEUE,
    _contains,
    _entries,
    _entry_event,
    _landed_event,
)
from dibs.integrations.queue.gates import (
    FAILURES,
    RECORD,
    Gates,
    _gate_events,
    failure_events,
    stop_orphaned_gates,
)
from dibs.integrations.queue.target import _Failed

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.service import Coordinator

    #: Gate results to record with entry events: (issues, {gate: result}).
    Results = tuple[list[str], dict[str, dict[str, Any]]]


class Outcome:
    """What one processing run did."""

    def __init__(self) -> None:
        self.handled: list[dict[str, Any]] = []
        #: Commits put through the command gates (a retry of a flaky gate is not another).
        self.gate_runs = 0
        #: The gate records of processors that were gone whose process groups were stopped.
        self.stopped: list[dict[str, Any]] = []


def dead_lander_worktrees(base: str) -> list[str]:
    """The temporary worktrees in *base* (``<git common dir>/dibs-land``) of processors on
    this host whose process is gone (killed mid-landing); their gate records aside
    (`stop_orphaned_gates` reads and removes those)."""
    from dibs.ground.host import process_start

    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        parts = name.split("-")
        if name.endswith(RECORD) or len(parts) != 3 or not parts[1].isdigit():
            continue
        if process_start(int(parts[1])) is None:
            out.append(os.path.join(base, name))
    return out


class _Workdir:
    """A temporary worktree of the processor: where entries are rebased and gates run."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.made = False
        self.at = ""  # the commit checked out
        self.dirty = False  # gates ran since (they may leave files behind)
        self.record = path + RECORD  # names the gate running in it (a `GateRecord`)


class _Processor(_Checks):
    """One processing run (see the module's docstring)."""

    def __init__(self, coord: Coordinator, batch: int, parallel: int = 1):
        super().__init__(coord)
        self.batch = batch
        self.parallel = parallel
        self.strategy = str(coord.settings["merge.strategy"])
        self.gates = Gates(coord.settings, self.name)
        self.commands, self.required = self.gates.commands, self.gates.required
        self.workdirs: list[_Workdir] = []
        self.outcome = Outcome()
        #: The failure cache as `pending` last read it (its own failures are added as written).
        self.failures: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        """Remove the temporary worktrees and let go of the lock."""
        import shutil

        for work in self.workdirs:
            if work.made:
                self._git("worktree", "remove", "--force", work.path, check=False)
            shutil.rmtree(work.path, ignore_errors=True)
        self.let_go()

    def run(self) -> None:
        """Process until the queue is empty (gates left running by dead processors stopped
        first)."""
        self._stop_orphans()
        if self.batch > 1:
            from dibs.integrations.queue.batch import process_batches

            process_batches(self)
        else:
            from dibs.integrations.queue.speculation import Speculation

            Speculation(self, self.parallel).run()

    def pending(self) -> list[dict[str, Any]]:
        """The open entries, in landing order (and the failure cache of the same read)."""
        state = self.coord.read()[0]
        self.failures = state.tables.get(FAILURES, {})
        return _entries(state, finished=False)

    def _take(self, waiting: dict[str, Any]) -> dict[str, Any] | None:
        """Mark *waiting* as being tested by this processor; None when it is done with
        already: its landing moved the target but the processor died before recording it
        (recorded now), or it fails its fence or manual gates (recorded now)."""
        if waiting.get("processor") not in (None, self.name):
            self._stop_orphans(waiting["processor"])
        moving = waiting.get("moving")
        if moving and _contains(self.repo.root, self._tip(), moving["commit"]):
            self._finish(waiting, "landed", commit=moving["commit"], onto=moving["onto"])
            return None
        item = self._mark(waiting, "land-start", state="running", processor=self.name)
        try:
            self._precheck(item)
        except _Failed as failed:
            self._finish(item, "failed", **failed.fields)
            return None
        return item

    def _stop_orphans(self, processor: str | None = None) -> None:
        """Stop the gates that processors which are gone (or *processor*, if gone) left
        running on this host, saying so on standard error."""
        import sys

        base = os.path.join(self.repo.common_dir, "dibs-land")
        for record in stop_orphaned_gates(base, processor):
            self.outcome.stopped.append(record)
            entries = record["entries"]
            said = f"entr{'ies' if len(entries) > 1 else 'y'} {' '.join(entries)}"
            sys.stderr.write(
                f"dibs land: stopped gate {record.get('gate')} of {said} (process group "
                f"{record['pid']}), left running by {record['processor']}, which is gone\n"
            )

    # Writing outcomes -------------------------------------------------------------------

    def _mark(self, item: dict[str, Any], op: str, **fields: Any) -> dict[str, Any]:
        return dict(self._write([(item, op, fields)])[0])

    def _write(
        self,
        changes: list[tuple[dict[str, Any], str, dict[str, Any]]],
        results: Sequence[Results] = (),
        failures: dict[str, dict[str, Any]] | None = None,
    ) -> list[Any]:
        """Entry events, gate *results* and *failures* to remember, in one transaction."""

        def decide(state: State, ctx: Context) -> Decision:
            events = [e for found in results for e in _gate_events(state, ctx, *found)]
            if failures:
                events += failure_events(state, ctx, failures)
            values = []
            for item, op, fields in changes:
                value = {**state.tables.get(QUEUE, {}).get(item["id"], item), **fields}
                if op == "land-start" and "moving" in fields:
                    pass  # the same run, about to move the target: its start stands
                elif op == "land-start":
                    value.setdefault("started", ctx.now.iso())
                    value.setdefault("lane", state.seq + 1 + len(events))
                    value["started_wall"] = ctx.now.wall
                else:
                    value["finished"] = ctx.now.iso()
                    started = value.get("started_wall") or value["enqueued_wall"]
                    value["seconds"] = round(ctx.now.wall - started, 3)
                    value["queued_seconds"] = round(started - value["enqueued_wall"], 3)
                events.append(_entry_event(op, ctx, value))
                if op == "land-done":
                    events.append(_landed_event(state, ctx, value))
                values.append(value)
            return Decision(events, result=values)

        return list(self.coord.transact(decide).result)

    def _finish(self, item: dict[str, Any], state: str, **fields: Any) -> None:
        self._conclude([(item, state, fields)])

    def _conclude(
        self,
        outcomes: list[tuple[dict[str, Any], str, dict[str, Any]]],
        results: Sequence[Results] = (),
        failures: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        changes = [
            (item, "land-done" if state == "landed" else "land-fail", {**fields, "state": state})
            for item, state, fields in outcomes
        ]
        self.outcome.handled += self._write(changes, results, failures)
        self.failures = {**self.failures, **(failures or {})}

    # Temporary worktrees ----------------------------------------------------------------

    def _workdir(self, index: int) -> _Workdir:
        """Temporary worktree number *index* (made on first checkout)."""
        while len(self.workdirs) <= index:
            base = os.path.join(self.repo.common_dir, "dibs-land")
            name = f"{self.name}.{len(self.workdirs)}"
            self.workdirs.append(_Workdir(os.path.join(base, name)))
        return self.workdirs[index]

    def _check_out(self, work: _Workdir, commit: str) -> str:
        """*work* checked out (detached) at *commit*, clean; returns its path."""
        if not work.made:
            if not any(w.made for w in self.workdirs):  # the first: set up, sweep
                if not self._git("config", "user.email", check=False).strip():
                    self.env = dict(_IDENTITY)
                    self.gates.env = self.env
                base = os.path.dirname(work.path)
                os.makedirs(base, exist_ok=True)
                self._sweep(base)
            self._git("worktree", "add", "--quiet", "--detach", work.path, commit)
            work.made = True
        elif work.at != commit or work.dirty:
            self._git("reset", "--quiet", "--hard", commit, cwd=work.path)
            if work.dirty:
                self._git("clean", "-ffdq", cwd=work.path)
        work.at, work.dirty = commit, False
        return work.path

    def _sweep(self, base: str) -> None:
        """Remove temporary worktrees of processors that died (kill -9) on this host."""
        import shutil

        for path in dead_lander_worktrees(base):
            self._git("worktree", "remove", "--force", path, check=False)
            shutil.rmtree(path, ignore_errors=True)
        self._git("worktree", "prune", check=False)

    # Building an entry's commit ---------------------------------------------------------

    def _fetch(self, item: dict[str, Any]) -> None:
        if self._commit_exists(item["head"]):
            return
        if self.remote:
            self._git("fetch", "--quiet", self.remote, f"refs/heads/{item['branch']}", check=False)
        if not self._commit_exists(item["head"]):
            raise _Failed(f"commit {item['head'][:12]} of {item['branch']} is not in this clone")

    def _commit_exists(self, sha: str) -> bool:
        from dibs.ground.git.run import GitError

        try:
            self._git("cat-file", "-e", sha + "^{commit}")
        except GitError:
            return False
        return True

    def _apply(self, item: dict[str, Any], base: str, work: _Workdir | None = None) -> str:
        """*item*'s commit put on *base* (rebased or merged) in *work* (default: the first
        temporary worktree); raises _Failed with the conflicting files on a conflict."""
        from dibs.ground.git.run import GitError

        if self.remote:
            self._fetch(item)
        head = str(item["head"])
        if head == base:
            return head
        work = work or self._workdir(0)
        path = self._check_out(work, head if self.strategy == "rebase" else base)
        try:
            if self.strategy == "rebase":
                self._git("rebase", "--quiet", base, cwd=path)
            else:
                message = f"Merge {item['branch']} (issue {item['issue']}) via dibs land"
                self._git("merge", "--quiet", "--no-ff", "-m", message, head, cwd=path)
        except GitError as exc:
            files = self._git("diff", "--name-only", "--diff-filter=U", cwd=path).split()
            verb = "rebase" if self.strategy == "rebase" else "merge"
            self._git(verb, "--abort", cwd=path, check=False)
            work.at = ""
            if not files:
                raise _Failed(f"cannot {verb} {item['branch']}: {exc.message}") from None
            raise _Failed(
                f"conflicts with {self.target} in {', '.join(files)}",
                files=files,
                hint=f"rebase {item['branch']} onto {self.target}, resolve, and land again",
            ) from None
        work.at = self._git("rev-parse", "HEAD", cwd=path).strip()
        return work.at

    def _tree(self, commit: str) -> str:
        return self._git("rev-parse", commit + "^{tree}").strip()
