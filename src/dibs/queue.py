"""The merge queue: land agent branches on the target one by one, or in tested batches.

An agent hands its finished branch to the queue (`enqueue`, or `land` which also processes).
Whoever holds ``lock:merge-queue`` processes the queue; any `land` becomes the processor when
nobody is. For each entry, in order, the processor:

1. checks the entry's fencing token is still the current token of its issue claim (a stale
   holder cannot land work: "lease lost");
2. checks the manual gates (``dibs gate pass ISSUE review``) passed on the branch's commit;
3. in a temporary worktree, rebases the branch onto the target's tip (or merges it);
4. runs the command gates of ``dibs.toml`` on that exact commit, with a timeout;
5. moves the target with a compare-and-swap (``git update-ref REF NEW OLD``, or a push with
   ``--force-with-lease`` when ``merge.remote`` is set), so a target that moved meanwhile is
   never overwritten: the entry is then rebased onto the new tip and tested again;
6. records the outcome as an event.

A failing entry leaves the queue with its reason (gate, exit code, the tail of its output, or
the conflicting files); its branch is untouched, and the queue goes on with the next. With
batches, the processor stacks several entries on the tip, tests the top once, lands them all
on green and on red splits the batch in halves to find the culprit (as bors does): the result
equals landing them one by one.

The queue lives in the log as ``land-*`` events on table ``queue`` (key: the entry id); gate
results as ``gate`` events on table ``gates`` (key: the issue). Finished entries are pruned
from ``queue`` (the last `KEEP_FINISHED` stay for `dibs queue`), so nothing that decides reads
them there: what landed is also written, in the same transaction as each ``land-done``, to
table ``landed`` (key: the issue), which is never pruned (`landed_issues`), and an entry's
outcome is read back from the log once its row is gone (`entry`).
"""

from __future__ import annotations

import contextlib
import os
import time

from dibs.core.events import new_event
from dibs.core.leases import Decision, eviction_reason
from dibs.errors import Conflict, DibsError, LeaseLost, NotFound, Refused, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.git.discover import Repo
    from dibs.service import Coordinator

QUEUE = "queue"
GATES = "gates"
#: Every issue the queue ever landed (never pruned: readiness reads it).
LANDED = "landed"
LOCK = "lock:merge-queue"
#: Finished entries kept in the queue table for `dibs queue` (their events stay in the log).
KEEP_FINISHED = 50
#: States of an entry still to be handled.
OPEN = ("queued", "running")
#: Lines of a failing gate's output kept with the entry.
TAIL_LINES = 20
TAIL_CHARS = 4000
#: Times an entry is rebased onto a target that moved under it before it fails.
MAX_ATTEMPTS = 5
#: A committer for rebases and merge commits when git has none configured.
_IDENTITY = {
    "GIT_COMMITTER_NAME": "dibs merge queue",
    "GIT_COMMITTER_EMAIL": "dibs@localhost",
    "GIT_AUTHOR_NAME": "dibs merge queue",
    "GIT_AUTHOR_EMAIL": "dibs@localhost",
}


def _repo(dibs: Coordinator) -> Repo:
    if dibs.repo is None:
        raise UsageError("the merge queue needs a git repository", hint="run it inside one")
    return dibs.repo


def _target(dibs: Coordinator) -> str:
    return str(dibs.settings["merge.target"])


def required_gates(settings: Any) -> tuple[dict[str, str], list[str]]:
    """The command gates (name -> command) and every required gate name, in order."""
    table = dict(settings["gates"])
    required = table.pop("required", None)
    commands = {name: str(command) for name, command in table.items()}
    return commands, list(required) if required is not None else list(commands)


def issue_of_branch(pattern: str, branch: str) -> str | None:
    """The issue a branch named by *pattern* (``agent/{issue}``) is for, if it is one."""
    prefix, _, suffix = pattern.partition("{issue}")
    fits = branch.startswith(prefix) and branch.endswith(suffix)
    if fits and len(branch) > len(prefix) + len(suffix):
        return branch[len(prefix) : len(branch) - len(suffix)]
    return None


def _check_issue(issue: str) -> str:
    from dibs.core.resources import parse_resource

    return parse_resource("issue:" + issue.removeprefix("issue:")).name


def _issue_lease(state: State, issue: str, ctx: Context, agent: str | None) -> dict[str, Any]:
    """The live lease on ``issue:ISSUE`` the entry will be fenced by."""
    holders = state.claims.get("issue:" + issue, {})
    live = {
        name: lease for name, lease in holders.items() if not eviction_reason(state, lease, ctx)
    }
    if agent is not None:
        if agent not in live:
            raise LeaseLost(
                f"{agent} does not hold issue:{issue} (lost, expired or never claimed)",
                hint=f"claim it again (`dibs claim issue:{issue}`) before landing",
            )
        return dict(live[agent])
    if len(live) != 1:
        raise Refused(
            f"issue:{issue} is not claimed by one agent, so its work cannot be fenced",
            hint=f"claim it first (`dibs start {issue}` or `dibs claim issue:{issue}`)",
        )
    return dict(next(iter(live.values())))


def _authenticated(dibs: Coordinator, state: State) -> str | None:
    """The acting agent when it has a valid session token; None when nobody acts."""
    if not dibs.agent:
        return None
    from dibs.errors import AuthError
    from dibs.service import secret_hash

    record = state.agents.get(dibs.agent)
    if record is None or not dibs.token or record["secret"] != secret_hash(dibs.token):
        raise AuthError(
            f"not a valid session for agent {dibs.agent!r}",
            hint="check --agent/--token (or DIBS_AGENT/DIBS_TOKEN)",
        )
    return dibs.agent


def entries(dibs: Coordinator, *, finished: bool = True) -> list[dict[str, Any]]:
    """The queue: open entries in landing order (with ``position``), then finished ones."""
    state, _ = dibs.store.read()
    return _entries(state, finished=finished)


def _entries(state: State, *, finished: bool = True) -> list[dict[str, Any]]:
    table = state.tables.get(QUEUE, {})
    ordered = sorted(table.values(), key=lambda e: e["number"])
    live = [dict(e) for e in ordered if e["state"] in OPEN]
    for position, entry in enumerate(live, 1):
        entry["position"] = position
    done = [dict(e) for e in ordered if e["state"] not in OPEN] if finished else []
    done.sort(key=lambda e: e.get("finished") or "", reverse=True)
    return live + done


def entry(dibs: Coordinator, entry_id: str) -> dict[str, Any]:
    """One entry by id (``q12``): from the queue table, or from the log once it was pruned."""
    state, _ = dibs.store.read()
    found = state.tables.get(QUEUE, {}).get(entry_id)
    if found is None:
        found = _logged_entry(dibs, entry_id)
    if found is None:
        raise NotFound(f"no queue entry {entry_id!r}", hint="see `dibs queue`")
    return dict(found)


def _logged_entry(dibs: Coordinator, entry_id: str) -> dict[str, Any] | None:
    """The last value the log gave entry *entry_id*: its outcome after the row was pruned.

    ``q<n>`` is numbered by the seq of its first ``land-enqueue``, so the search starts there.
    """
    number = entry_id[1:]
    if not (entry_id.startswith("q") and number.isdigit()):
        return None
    last = None
    for event in dibs.store.events(int(number) - 1):
        if event.get("table") == QUEUE and event.get("key") == entry_id and event.get("value"):
            last = event["value"]
    return None if last is None else {**last, "pruned": True}


def landed_issues(state: State) -> set[str]:
    """Every issue the merge queue landed, however long ago (table `LANDED`, never pruned;
    plus the finished queue entries of a log written before that table existed)."""
    landed = set(state.tables.get(LANDED, {}))
    return landed | {
        e["issue"] for e in state.tables.get(QUEUE, {}).values() if e["state"] == "landed"
    }


def _landed_event(state: State, ctx: Context, value: dict[str, Any]) -> Any:
    """The durable record of a landing, written with its ``land-done``."""
    before = state.tables.get(LANDED, {}).get(value["issue"]) or {}
    record = {
        "issue": value["issue"],
        "entry": value["id"],
        "branch": value["branch"],
        "agent": value.get("agent"),
        "token": value.get("token"),
        "commit": value.get("commit"),
        "landed": ctx.now.iso(),
        "times": int(before.get("times", 0)) + 1,
    }
    return new_event(
        "landed",
        ctx.now,
        agent=value.get("agent"),
        resource=f"issue:{value['issue']}",
        table=LANDED,
        key=value["issue"],
        value=record,
    )


def enqueue(
    dibs: Coordinator, branch: str | None = None, *, issue: str | None = None
) -> dict[str, Any]:
    """Put *branch* (default: the current one) in the queue; returns its entry.

    The entry remembers the branch's commit now (that commit, rebased, is what lands) and the
    fencing token of the issue's claim. Enqueuing a branch already waiting returns its entry.

    Raises:
        UsageError: no branch, the target itself, or no issue can be told.
        NotFound: no such branch.
        LeaseLost: the acting agent does not hold the issue.
        Refused: nobody (or several agents) holds the issue.
    """
    from dibs.git.run import git
    from dibs.setup import current_branch

    repo = _repo(dibs)
    target = _target(dibs)
    if branch is None:
        branch = current_branch(repo)
        if branch is None:
            raise UsageError("HEAD is detached: which branch?", hint="name it: dibs land BRANCH")
    branch = branch.removeprefix("refs/heads/")
    if branch == target:
        raise UsageError(
            f"{branch} is the target branch itself",
            hint="land an agent's branch (dibs land agent/ISSUE)",
        )
    if git(repo.root, "check-ref-format", "--branch", branch, check=False).strip() != branch:
        raise UsageError(f"{branch!r} is not a branch name", hint="see `git branch`")
    head = git(
        repo.root,
        "rev-parse",
        "--verify",
        "--quiet",
        f"refs/heads/{branch}^{{commit}}",
        check=False,
    ).strip()
    if not head:
        raise NotFound(f"no branch {branch!r} here", hint="see `git branch`")
    if issue is None:
        issue = issue_of_branch(str(dibs.settings["worktrees.branch"]), branch)
    issue = _check_issue(issue) if issue is not None else None
    remote = str(dibs.settings["merge.remote"])
    if remote:
        git(repo.root, "push", "--quiet", "--force", remote, f"{head}:refs/heads/{branch}")

    def decide(state: State, ctx: Context) -> Decision:
        try:
            agent = _authenticated(dibs, state)
            name = issue if issue is not None else _only_issue(state, ctx, agent, branch)
            lease = _issue_lease(state, name, ctx, agent)
        except DibsError as exc:
            return Decision(error=exc)
        table = state.tables.get(QUEUE, {})
        number = state.seq + 1
        for existing in table.values():
            if existing["branch"] == branch and existing["state"] in OPEN:
                if existing["state"] == "running" or existing["head"] == head:
                    return Decision(result={**existing, "already": True})
                number = existing["number"]  # queued with older commits: take the new ones
        value = {
            "id": f"q{number}",
            "number": number,
            "branch": branch,
            "issue": name,
            "agent": agent or lease["agent"],
            "token": lease["token"],
            "head": head,
            "target": target,
            "state": "queued",
            "enqueued": ctx.now.iso(),
            "enqueued_wall": ctx.now.wall,
        }
        events = [
            new_event(
                "land-enqueue",
                ctx.now,
                agent=value["agent"],
                resource=f"issue:{name}",
                token=lease["token"],
                table=QUEUE,
                key=value["id"],
                value=value,
            )
        ]
        done = sorted(
            (e for e in table.values() if e["state"] not in OPEN), key=lambda e: e["number"]
        )
        events += [
            new_event("record", ctx.now, table=QUEUE, key=old["id"], value=None)
            for old in done[: max(0, len(done) - KEEP_FINISHED + 1)]
        ]
        return Decision(events, result=value)

    return dict(dibs.transact(decide).result)


def _only_issue(state: State, ctx: Context, agent: str | None, branch: str) -> str:
    if agent is not None:
        held = [
            text.removeprefix("issue:")
            for text, holders in state.claims.items()
            if text.startswith("issue:")
            and agent in holders
            and not eviction_reason(state, holders[agent], ctx)
        ]
        if len(held) == 1:
            return held[0]
    raise UsageError(
        f"which issue is {branch} for?",
        hint="pass --issue ISSUE (or name the branch by the worktrees.branch pattern)",
    )


def cancel(dibs: Coordinator, entry_id: str) -> dict[str, Any]:
    """Take a waiting entry out of the queue (its branch is untouched)."""

    def decide(state: State, ctx: Context) -> Decision:
        found = state.tables.get(QUEUE, {}).get(entry_id)
        if found is None:
            return Decision(error=NotFound(f"no queue entry {entry_id!r}", hint="see `dibs queue`"))
        if found["state"] != "queued":
            return Decision(
                error=Refused(
                    f"{entry_id} is {found['state']}: only a waiting entry can be cancelled",
                    hint="see `dibs queue`",
                )
            )
        value = {**found, "state": "cancelled", "finished": ctx.now.iso()}
        value["reason"] = f"cancelled by {dibs.agent or os.environ.get('USER') or 'unknown'}"
        event = _entry_event("land-cancel", ctx, value)
        return Decision([event], result=value)

    return dict(dibs.transact(decide).result)


def _entry_event(op: str, ctx: Context, value: dict[str, Any]) -> Any:
    return new_event(
        op,
        ctx.now,
        agent=value.get("agent"),
        resource=f"issue:{value['issue']}",
        table=QUEUE,
        key=value["id"],
        value=value,
    )


# Gates ------------------------------------------------------------------------------------


def record_gate(
    dibs: Coordinator,
    issue: str,
    gate: str,
    *,
    passed: bool,
    note: str | None = None,
    commit: str | None = None,
) -> dict[str, Any]:
    """Record a manual gate (a review, say) as passed or failed for *issue*.

    The result holds for one commit: *commit*, else the head of the issue's waiting queue
    entry, else of its branch (``worktrees.branch``). New commits need the gate again.
    """
    from dibs.git.run import git

    repo = _repo(dibs)
    issue = _check_issue(issue)
    if not gate or len(gate) > 64 or not gate.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"{gate!r} is not a gate name", hint="letters, digits, '-' and '_'")
    if note is not None and len(note) > 2000:
        raise UsageError("the note is over 2000 characters", hint="say it shorter")
    if commit is None:
        state, _ = dibs.store.read()
        waiting = [e for e in _entries(state, finished=False) if e["issue"] == issue]
        if waiting:
            commit = waiting[0]["head"]
        else:
            branch = str(dibs.settings["worktrees.branch"]).replace("{issue}", issue)
            commit = f"refs/heads/{branch}"
    sha = git(repo.root, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", check=False)
    if not sha.strip():
        raise NotFound(
            f"cannot tell which commit the gate is for ({commit} is not a commit)",
            hint="pass --commit REF",
        )
    by = dibs.agent or os.environ.get("USER") or "unknown"
    result = {"result": "pass" if passed else "fail", "commit": sha.strip(), "by": by}
    if note:
        result["note"] = note
    recorded: dict[str, Any] = _record_results(dibs, [issue], {gate: result})[issue][gate]
    return recorded


def _gate_events(
    state: State, ctx: Context, issues: list[str], results: dict[str, dict[str, Any]]
) -> list[Any]:
    table = state.tables.get(GATES, {})
    events = []
    for issue in issues:
        value = dict(table.get(issue) or {})
        for gate, result in results.items():
            value[gate] = {**result, "at": ctx.now.iso()}
        events.append(
            new_event(
                "gate", ctx.now, resource=f"issue:{issue}", table=GATES, key=issue, value=value
            )
        )
    return events


def _record_results(
    dibs: Coordinator, issues: list[str], results: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    def decide(state: State, ctx: Context) -> Decision:
        events = _gate_events(state, ctx, issues, results)
        return Decision(events, result={e["key"]: e["value"] for e in events})

    return dict(dibs.transact(decide).result)


def gates(dibs: Coordinator, issue: str) -> dict[str, Any]:
    """Which required gates passed, failed or are missing for *issue*, and on which commit."""
    issue = _check_issue(issue)
    commands, required = required_gates(dibs.settings)
    state, _ = dibs.store.read()
    recorded = state.tables.get(GATES, {}).get(issue, {})
    rows = []
    for name in dict.fromkeys([*required, *recorded]):
        result = recorded.get(name)
        rows.append(
            {
                "gate": name,
                "kind": "command" if name in commands else "manual",
                "required": name in required,
                "state": "missing"
                if result is None
                else ("passed" if result["result"] == "pass" else "failed"),
                **({} if result is None else {k: v for k, v in result.items() if k != "result"}),
            }
        )
    missing = [r["gate"] for r in rows if r["required"] and r["state"] != "passed"]
    return {"issue": issue, "gates": rows, "ready": not missing, "missing": missing}


# Processing -------------------------------------------------------------------------------


class Outcome:
    """What one processing run did."""

    def __init__(self) -> None:
        self.handled: list[dict[str, Any]] = []
        self.gate_runs = 0


def process(dibs: Coordinator, *, batch: int | None = None) -> Outcome | None:
    """Process the queue until it is empty, if nobody else is processing it.

    Returns:
        What was handled, or None when another process holds ``lock:merge-queue``.
    """
    size = int(batch if batch is not None else dibs.settings["merge.batch"])
    if not 1 <= size <= 64:
        raise UsageError(f"batch {size} is out of range", hint="give 1 to 64")
    processor = _Processor(dibs, size)
    if not processor.acquire():
        return None
    try:
        processor.run()
    finally:
        processor.close()
    return processor.outcome


def land(
    dibs: Coordinator,
    branch: str | None = None,
    *,
    issue: str | None = None,
    batch: int | None = None,
    wait: float | None = None,
    on_change: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Enqueue *branch* and see it through: process the queue, or wait for whoever does.

    Args:
        wait: seconds to wait for the entry to finish (None: as long as it takes).
        on_change: called with the entry whenever its state changes (progress for people).

    Returns:
        The finished entry (``state`` is ``landed`` or ``failed``), with ``gate_runs``.

    Raises:
        LockTimeout: the entry is still waiting when *wait* runs out.
    """
    from dibs.errors import LockTimeout

    entry_now = enqueue(dibs, branch, issue=issue)
    deadline = None if wait is None else time.monotonic() + wait
    seen = None
    delay = 0.05
    runs = 0
    while True:
        outcome = process(dibs, batch=batch)
        if outcome is not None:
            runs += outcome.gate_runs
        current = entry(dibs, entry_now["id"])
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


def dead_lander_worktrees(base: str) -> list[str]:
    """The temporary worktrees in *base* (``<git common dir>/dibs-land``) of processors on
    this host whose process is gone (killed mid-landing)."""
    from dibs.host import process_start

    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        parts = name.split("-")
        if len(parts) == 3 and parts[1].isdigit() and process_start(int(parts[1])) is None:
            out.append(os.path.join(base, name))
    return out


class _Failed(Exception):
    """An entry cannot land: carries the fields recorded with it."""

    def __init__(self, reason: str, **fields: Any):
        super().__init__(reason)
        self.fields = {"reason": reason, **fields}


class _Processor:
    """One processing run: holds ``lock:merge-queue`` through its own short-lived agent."""

    def __init__(self, dibs: Coordinator, batch: int):
        from dibs.service import Coordinator

        self.dibs = dibs
        self.repo = _repo(dibs)
        self.batch = batch
        self.target = _target(dibs)
        self.remote = str(dibs.settings["merge.remote"])
        self.strategy = str(dibs.settings["merge.strategy"])
        self.timeout = float(dibs.settings["merge.gate_timeout"])
        self.commands, self.required = required_gates(dibs.settings)
        self.me = Coordinator(
            dibs.store, settings=dibs.settings, repo=dibs.repo, liveness=dibs.liveness
        )
        self.name = f"lander-{os.getpid()}-{os.urandom(3).hex()}"
        self.ttl = float(dibs.settings["leases.ttl"])
        self.renewed = 0.0
        self.workdir: str | None = None
        self.at = ""  # the commit the temporary worktree has checked out
        self.dirty = False  # gates ran there since (they may leave files behind)
        self.checkout: str | None = None  # a worktree with the target checked out
        self.env: dict[str, str] = {}
        self.outcome = Outcome()
        #: Gate results to record with the next entry events: (issues, {gate: result}).
        self.results: tuple[list[str], dict[str, dict[str, Any]]] | None = None

    # The lock ---------------------------------------------------------------------------

    def acquire(self) -> bool:
        self.me.register(self.name, ttl=self.ttl, pid=os.getpid())
        try:
            self.me.claim([LOCK], note="processing the merge queue", record_refusal=False)
        except Conflict:
            self.me.unregister()
            return False
        self.renewed = time.monotonic()
        return True

    def keep_lock(self, *, check: bool = False) -> None:
        """Renew the lock when a third of its ttl has gone; with *check*, make sure it is
        still ours even if not (a read, no write). Raises LeaseLost."""
        if time.monotonic() - self.renewed > self.ttl / 3:
            self.me.renew([LOCK])
            self.renewed = time.monotonic()
        elif check:
            state, now = self.dibs.store.read()
            lease = state.claims.get(LOCK, {}).get(self.name)
            if lease is None or eviction_reason(state, lease, self.dibs.context(now)):
                raise LeaseLost(
                    f"{self.name} lost {LOCK} (paused or partitioned past its ttl)",
                    hint="another `dibs land` is processing the queue now",
                )

    def close(self) -> None:
        from dibs.git.run import git

        if self.workdir is not None:
            git(self.repo.root, "worktree", "remove", "--force", self.workdir, check=False)
            import shutil

            shutil.rmtree(self.workdir, ignore_errors=True)
        with contextlib.suppress(DibsError):  # the lock was taken from us: nothing to let go
            self.me.unregister()

    # The run ----------------------------------------------------------------------------

    def run(self) -> None:
        while True:
            state, _ = self.dibs.store.read()
            pending = _entries(state, finished=False)
            if not pending:
                return
            self.keep_lock()
            group = pending[: self.batch]
            ready = []
            for waiting in group:
                item = self._mark(waiting, "land-start", state="running", processor=self.name)
                try:
                    self._precheck(item)
                except _Failed as failed:
                    self._finish(item, "failed", **failed.fields)
                    continue
                ready.append(item)
            if ready:
                tip = self._tip()
                self._settle(self._stack(ready, tip), tip, attempt=1)

    def _mark(self, item: dict[str, Any], op: str, **fields: Any) -> dict[str, Any]:
        return dict(self._write([(item, op, fields)])[0])

    def _write(self, changes: list[tuple[dict[str, Any], str, dict[str, Any]]]) -> list[Any]:
        """Entry events (and the gate results not yet recorded) in one transaction."""
        results, self.results = self.results, None

        def decide(state: State, ctx: Context) -> Decision:
            events = [] if results is None else _gate_events(state, ctx, *results)
            values = []
            for item, op, fields in changes:
                value = {**state.tables.get(QUEUE, {}).get(item["id"], item), **fields}
                if op == "land-start":
                    value.setdefault("started", ctx.now.iso())
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

        return list(self.dibs.transact(decide).result)

    def _finish(self, item: dict[str, Any], state: str, **fields: Any) -> None:
        self._conclude([(item, state, fields)])

    def _conclude(self, outcomes: list[tuple[dict[str, Any], str, dict[str, Any]]]) -> None:
        changes = [
            (item, "land-done" if state == "landed" else "land-fail", {**fields, "state": state})
            for item, state, fields in outcomes
        ]
        self.outcome.handled += self._write(changes)

    def _precheck(self, item: dict[str, Any]) -> None:
        self._check_fence(item)
        recorded = self.dibs.store.read()[0].tables.get(GATES, {}).get(item["issue"], {})
        for gate in self.required:
            if gate in self.commands:
                continue
            result = recorded.get(gate)
            if result is None or result["result"] != "pass":
                said = "failed" if result else "not passed"
                raise _Failed(
                    f"gate {gate} has {said} for issue {item['issue']}",
                    gate=gate,
                    hint=f"dibs gate pass {item['issue']} {gate}, then land again",
                )
            if result["commit"] != item["head"]:
                raise _Failed(
                    f"gate {gate} passed on {result['commit'][:12]}, but the branch was "
                    f"queued at {item['head'][:12]}",
                    gate=gate,
                    hint=f"pass {gate} on the new commits, then land again",
                )

    def _check_fence(self, item: dict[str, Any]) -> None:
        state, now = self.dibs.store.read()
        ctx = self.dibs.context(now)
        lease = state.claims.get("issue:" + item["issue"], {}).get(item["agent"])
        if lease is None or lease["token"] != item["token"] or eviction_reason(state, lease, ctx):
            now_held = [
                f"{name} (token {other['token']})"
                for name, other in state.claims.get("issue:" + item["issue"], {}).items()
            ]
            raise _Failed(
                f"lease lost: token {item['token']} of {item['agent']} on issue:{item['issue']} "
                "is no longer current"
                + (f"; now held by {', '.join(now_held)}" if now_held else ""),
                lease_lost=True,
            )

    # Git --------------------------------------------------------------------------------

    def _git(self, *args: str, check: bool = True, cwd: str | None = None) -> str:
        from dibs.git.run import git

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

    def _worktree(self, commit: str) -> str:
        """The temporary worktree, checked out (detached) at *commit*, clean."""
        if self.workdir is None:
            if not self._git("config", "user.email", check=False).strip():
                self.env = dict(_IDENTITY)
            base = os.path.join(self.repo.common_dir, "dibs-land")
            os.makedirs(base, exist_ok=True)
            self._sweep(base)
            self.workdir = os.path.join(base, self.name)
            self._git("worktree", "add", "--quiet", "--detach", self.workdir, commit)
        elif self.at != commit or self.dirty:
            self._git("reset", "--quiet", "--hard", commit, cwd=self.workdir)
            if self.dirty:
                self._git("clean", "-ffdq", cwd=self.workdir)
        self.at, self.dirty = commit, False
        return self.workdir

    def _sweep(self, base: str) -> None:
        """Remove temporary worktrees of processors that died (kill -9) on this host."""
        import shutil

        for path in dead_lander_worktrees(base):
            self._git("worktree", "remove", "--force", path, check=False)
            shutil.rmtree(path, ignore_errors=True)
        self._git("worktree", "prune", check=False)

    def _fetch(self, item: dict[str, Any]) -> None:
        if self._commit_exists(item["head"]):
            return
        if self.remote:
            self._git("fetch", "--quiet", self.remote, f"refs/heads/{item['branch']}", check=False)
        if not self._commit_exists(item["head"]):
            raise _Failed(f"commit {item['head'][:12]} of {item['branch']} is not in this clone")

    def _commit_exists(self, sha: str) -> bool:
        from dibs.git.run import GitError

        try:
            self._git("cat-file", "-e", sha + "^{commit}")
        except GitError:
            return False
        return True

    def _apply(self, item: dict[str, Any], base: str) -> str:
        """*item*'s commit put on *base* (rebased or merged); raises _Failed on a conflict."""
        from dibs.git.run import GitError

        if self.remote:
            self._fetch(item)
        head = str(item["head"])
        if head == base:
            return head
        work = self._worktree(head if self.strategy == "rebase" else base)
        try:
            if self.strategy == "rebase":
                self._git("rebase", "--quiet", base, cwd=work)
            else:
                message = f"Merge {item['branch']} (issue {item['issue']}) via dibs land"
                self._git("merge", "--quiet", "--no-ff", "-m", message, head, cwd=work)
        except GitError as exc:
            files = self._git("diff", "--name-only", "--diff-filter=U", cwd=work).split()
            verb = "rebase" if self.strategy == "rebase" else "merge"
            self._git(verb, "--abort", cwd=work, check=False)
            self.at = ""
            if not files:
                raise _Failed(f"cannot {verb} {item['branch']}: {exc.message}") from None
            raise _Failed(
                f"conflicts with {self.target} in {', '.join(files)}",
                files=files,
                hint=f"rebase {item['branch']} onto {self.target}, resolve, and land again",
            ) from None
        self.at = self._git("rev-parse", "HEAD", cwd=work).strip()
        return self.at

    def _stack(self, items: list[dict[str, Any]], base: str) -> list[tuple[dict[str, Any], str]]:
        """Put each of *items* on the one before (the first on *base*); failures leave."""
        stack = []
        for item in items:
            try:
                commit = self._apply(item, base)
            except _Failed as failed:
                self._finish(item, "failed", **failed.fields)
                continue
            stack.append((item, commit))
            base = commit
        return stack

    # Gates and landing ------------------------------------------------------------------

    def _settle(self, stack: list[tuple[dict[str, Any], str]], tip: str, attempt: int) -> str:
        """Test the top of *stack* (built on *tip*) and land it, or split to find the culprit.

        Returns the target's tip afterwards.
        """
        if not stack:
            return tip
        top = stack[-1][1]
        failure = self._run_gates(top, [item for item, _ in stack])
        if failure is None:
            lost = []
            for item, _ in stack:
                try:
                    self._check_fence(item)
                except _Failed as failed:
                    self._finish(item, "failed", **failed.fields)
                    lost.append(item["id"])
            if lost:
                rest = [item for item, _ in stack if item["id"] not in lost]
                return self._settle(self._stack(rest, tip), tip, attempt)
            if self._move(tip, top):
                done = {"onto": tip, "attempts": attempt}
                self._conclude([(item, "landed", {**done, "commit": c}) for item, c in stack])
                return top
            items = [item for item, _ in stack]
            if attempt >= MAX_ATTEMPTS:
                for item in items:
                    self._finish(
                        item,
                        "failed",
                        reason=f"{self.target} kept moving: gave up after {attempt} tries",
                    )
                return tip
            new_tip = self._tip()
            return self._settle(self._stack(items, new_tip), new_tip, attempt + 1)
        if len(stack) == 1:
            self._finish(stack[0][0], "failed", **failure)
            return tip
        half = len(stack) // 2
        first, second = stack[:half], stack[half:]
        after = self._settle(first, tip, attempt)
        if after != first[-1][1]:  # some of the first half failed: the rest must be rebuilt
            second = self._stack([item for item, _ in second], after)
        return self._settle(second, after, attempt)

    def _run_gates(self, commit: str, items: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Run every required command gate on *commit*; the first failure, or None."""
        names = [g for g in self.required if g in self.commands]
        if not names:
            return None
        self.outcome.gate_runs += 1
        if self.results is not None:  # an earlier run's, not yet recorded with an outcome
            _record_results(self.dibs, *self.results)
            self.results = None
        work = self._worktree(commit)
        self.dirty = True
        results: dict[str, dict[str, Any]] = {}
        failure = None
        for name in names:
            code, tail, seconds = self._run(self.commands[name], work, commit, items)
            result: dict[str, Any] = {
                "result": "pass" if code == 0 else "fail",
                "commit": commit,
                "by": self.name,
                "exit": code,
                "seconds": seconds,
            }
            if code != 0:
                result["tail"] = tail
            results[name] = result
            if code != 0:
                said = "timed out" if code == "timeout" else f"exited {code}"
                failure = {
                    "reason": f"gate {name} {said}",
                    "gate": name,
                    "exit": code,
                    "tail": tail,
                }
                break
        self.results = (sorted({item["issue"] for item in items}), results)
        return failure

    def _run(
        self, command: str, cwd: str, commit: str, items: list[dict[str, Any]]
    ) -> tuple[int | str, str, float]:
        import signal
        import subprocess
        import tempfile

        env = {
            **os.environ,
            **self.env,
            "DIBS_LAND_COMMIT": commit,
            "DIBS_LAND_BRANCHES": " ".join(item["branch"] for item in items),
            "DIBS_LAND_ISSUES": " ".join(item["issue"] for item in items),
        }
        started = time.monotonic()
        with tempfile.TemporaryFile() as out:
            child = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            code: int | str
            while True:
                left = started + self.timeout - time.monotonic()
                try:
                    code = child.wait(timeout=max(0.0, min(left, self.ttl / 3)))
                    break
                except subprocess.TimeoutExpired:
                    if time.monotonic() - started >= self.timeout:
                        os.killpg(child.pid, signal.SIGKILL)
                        child.wait()
                        code = "timeout"
                        break
                    try:
                        self.keep_lock()
                    except LeaseLost:
                        os.killpg(child.pid, signal.SIGKILL)
                        child.wait()
                        raise
            out.seek(0)
            text = out.read().decode(errors="replace")
        tail = "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])[-TAIL_CHARS:]
        return code, tail, round(time.monotonic() - started, 3)

    def _move(self, old: str, new: str) -> bool:
        """Move the target from *old* to *new* if it is still at *old* (compare and swap)."""
        from dibs.git.run import GitError

        self.keep_lock(check=True)  # a processor that lost the lock stops here
        if old == new:
            return True
        message = f"dibs land: {self.target} {old[:12]} -> {new[:12]}"
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
                self._git(
                    "update-ref",
                    "-m",
                    message,
                    f"refs/heads/{self.target}",
                    new,
                    *([local] if local else []),
                    check=False,
                )
                self._sync_checkouts(local or old, new)
            return True
        try:
            self._git("update-ref", "-m", message, f"refs/heads/{self.target}", new, old)
        except GitError:
            return False
        self._sync_checkouts(old, new)
        return True

    def _sync_checkouts(self, old: str, new: str) -> None:
        """Bring a clean checkout of the target (the main worktree, usually) to *new*.

        ``update-ref`` moves the branch but not the files of a worktree that has it checked
        out; ``read-tree -m -u OLD NEW`` carries that worktree forward, keeping local changes
        to files the landing did not touch (and refusing, harmlessly, when it would lose one).
        """
        if self.checkout is None:
            self.checkout = ""
            path = None
            for line in self._git("worktree", "list", "--porcelain").splitlines():
                if line.startswith("worktree "):
                    path = line[len("worktree ") :]
                elif line == f"branch refs/heads/{self.target}" and path is not None:
                    self.checkout = path
        if self.checkout:
            self._git("read-tree", "-m", "-u", old, new, cwd=self.checkout, check=False)


# Conflict prediction ----------------------------------------------------------------------


def conflicts(dibs: Coordinator) -> dict[str, Any]:
    """Predicted conflicts among live agent branches, and of each with the target.

    Live branches: those of waiting queue entries, of registered agents, and every branch
    named by the ``worktrees.branch`` pattern that is not merged into the target. Each branch
    is merged with the target, and each pair of branches that changed a common path (or a
    file and a folder of one name) with each other, by ``git merge-tree --write-tree``, in
    memory: nothing is checked out or written to a branch.
    """
    from dibs.git.run import git

    repo = _repo(dibs)
    target = _target(dibs)
    tip = git(repo.root, "rev-parse", "--verify", "--quiet", f"refs/heads/{target}", check=False)
    if not tip.strip():
        raise NotFound(f"the target branch {target!r} does not exist", hint="set merge.target")
    state, _ = dibs.store.read()
    names = {e["branch"] for e in _entries(state, finished=False)}
    names |= {a["branch"] for a in state.agents.values() if a.get("branch")}
    pattern = str(dibs.settings["worktrees.branch"])
    prefix = pattern.partition("{issue}")[0]
    listing = git(
        repo.root,
        "for-each-ref",
        "--format=%(refname:short)",
        "--no-merged",
        target,
        f"refs/heads/{prefix}" if prefix else "refs/heads/",
    )
    names |= {n for n in listing.split() if issue_of_branch(pattern, n) is not None}
    names.discard(target)
    changed: dict[str, set[str]] = {}
    for name in sorted(names):
        if git(repo.root, "rev-parse", "--verify", "--quiet", f"refs/heads/{name}", check=False):
            files = git(repo.root, "diff", "--name-only", f"{target}...refs/heads/{name}")
            changed[name] = set(files.split("\n")) - {""}
    found = []
    checked = 0
    branches = sorted(changed)
    for i, a in enumerate(branches):
        pairs = [target] + [b for b in branches[i + 1 :] if _overlap(changed[a], changed[b])]
        for b in pairs:
            checked += 1
            clashing = _merge_tree(repo.root, b, a)
            if clashing:
                found.append({"a": a, "b": b, "files": clashing, "with_target": b == target})
    return {"target": target, "branches": branches, "pairs_checked": checked, "conflicts": found}


def _overlap(a: set[str], b: set[str]) -> bool:
    if a & b:
        return True
    folders_a = {p.rsplit("/", i)[0] for p in a for i in range(1, p.count("/") + 1)}
    folders_b = {p.rsplit("/", i)[0] for p in b for i in range(1, p.count("/") + 1)}
    return bool(folders_a & b or folders_b & a)


def _merge_tree(root: str, a: str, b: str) -> list[str]:
    """Files that would conflict merging branches *a* and *b* (empty: a clean merge)."""
    import subprocess

    done = subprocess.run(
        ["git", "merge-tree", "--write-tree", "--name-only", "--no-messages", a, b],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode == 0:
        return []
    if done.returncode != 1:
        from dibs.git.run import GitError

        raise GitError(f"git merge-tree {a} {b} failed: {done.stderr.strip()}")
    return sorted(set(done.stdout.split("\n")[1:]) - {""})
