"""The merge queue: land agent branches on the target one by one, or in tested batches.

An agent hands its finished branch to the queue (`enqueue`, or `land` which also processes).
Whoever holds ``lock:merge-queue`` processes the queue; any `land` becomes the processor when
nobody is. For each entry, in order, the processor:

1. checks the entry's fencing token is still the current token of its issue claim (a stale
   holder cannot land work: "lease lost");
2. checks the manual gates (``dibs gate pass ISSUE review``) passed on the branch's commit;
3. in a temporary worktree, rebases the branch onto the target's tip (or merges it);
4. runs the command gates of ``dibs.toml`` on that exact commit, with a timeout;
5. re-checks the fence, refuses a diff that changes what another agent holds (claims are the
   last gate) or what has uncommitted changes in the target's checkout, and then
   moves the target with a compare-and-swap (``git update-ref REF NEW OLD``, or a push with
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
from dibs.ground.errors import Conflict, DibsError, LeaseLost, NotFound, Refused, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.ground.git.discover import Repo
    from dibs.service import Coordinator
    from dibs.service.identity import Actor

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


def _repo(coord: Coordinator) -> Repo:
    if coord.repo is None:
        raise UsageError("the merge queue needs a git repository", hint="run it inside one")
    return coord.repo


def _target(coord: Coordinator) -> str:
    return str(coord.settings["merge.target"])


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


def _actor(coord: Coordinator, state: State, as_operator: bool) -> Actor:
    from dibs.service.identity import actor

    return actor(state, coord.agent, coord.token, as_operator=as_operator)


def entries(coord: Coordinator, *, finished: bool = True) -> list[dict[str, Any]]:
    """The queue: open entries in landing order (with ``position``), then finished ones."""
    state, _ = coord.store.read()
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


def entry(coord: Coordinator, entry_id: str) -> dict[str, Any]:
    """One entry by id (``q12``): from the queue table, or from the log once it was pruned."""
    state, _ = coord.store.read()
    found = state.tables.get(QUEUE, {}).get(entry_id)
    if found is None:
        found = _logged_entry(coord, entry_id)
    if found is None:
        raise NotFound(f"no queue entry {entry_id!r}", hint="see `dibs queue`")
    return dict(found)


def _logged_entry(coord: Coordinator, entry_id: str) -> dict[str, Any] | None:
    """The last value the log gave entry *entry_id*: its outcome after the row was pruned.

    ``q<n>`` is numbered by the seq of its first ``land-enqueue``, so the search starts there.
    """
    number = entry_id[1:]
    if not (entry_id.startswith("q") and number.isdigit()):
        return None
    last = None
    for event in coord.store.events(int(number) - 1):
        if event.get("table") == QUEUE and event.get("key") == entry_id and event.get("value"):
            last = event["value"]
    return None if last is None else {**last, "pruned": True}


def _contains(root: str, tip: str, commit: str) -> bool:
    """Whether *commit* is *tip* or one of its ancestors (False when git does not know it)."""
    from dibs.ground.git.run import git

    base = git(root, "merge-base", tip, commit, check=False).strip()
    return base == commit


def moved_unrecorded(coord: Coordinator, state: State) -> set[str]:
    """Issues whose landing moved the target though no ``land-done`` says so: its processor
    was killed between the two (the entry is still open, with the ``moving`` it wrote first).

    Asks git only when such an entry exists; readiness adds these to the landed issues so the
    task is never handed out again before the next processor records the landing.
    """
    moving = [
        e for e in state.tables.get(QUEUE, {}).values() if e["state"] in OPEN and e.get("moving")
    ]
    if not moving or coord.repo is None:
        return set()
    from dibs.ground.git.run import git

    target = _target(coord)
    remote = str(coord.settings["merge.remote"])
    ref = f"refs/remotes/{remote}/{target}" if remote else f"refs/heads/{target}"
    tip = git(coord.repo.root, "rev-parse", "--verify", "--quiet", ref, check=False).strip()
    if not tip:
        return set()
    return {e["issue"] for e in moving if _contains(coord.repo.root, tip, e["moving"]["commit"])}


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
    coord: Coordinator,
    branch: str | None = None,
    *,
    issue: str | None = None,
    as_operator: bool = False,
) -> dict[str, Any]:
    """Put *branch* (default: the current one) in the queue; returns its entry.

    The entry remembers the branch's commit now (that commit, rebased, is what lands) and the
    fencing token of the issue's claim. Enqueuing a branch already waiting returns its entry.
    The acting agent (proven by its token) must hold the issue; a person lands another
    agent's branch only with *as_operator* (recorded as ``by: user@host``).

    Raises:
        UsageError: no branch, the target itself, or no issue can be told.
        NotFound: no such branch.
        AuthError: no agent, or not its token, and not *as_operator* (exit 1).
        LeaseLost: the acting agent does not hold the issue.
        Refused: another agent holds the issue (exit 3), or nobody (or several agents) holds
            it.
    """
    from dibs.ground.git.run import git
    from dibs.integrations.setup import current_branch

    repo = _repo(coord)
    target = _target(coord)
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
        issue = issue_of_branch(str(coord.settings["worktrees.branch"]), branch)
    issue = _check_issue(issue) if issue is not None else None
    remote = str(coord.settings["merge.remote"])
    if remote:
        git(repo.root, "push", "--quiet", "--force", remote, f"{head}:refs/heads/{branch}")

    def decide(state: State, ctx: Context) -> Decision:
        try:
            acting = _actor(coord, state, as_operator)
            agent = acting.agent
            name = issue if issue is not None else _only_issue(state, ctx, agent, branch)
            if agent is not None:
                _not_holders_work(state, ctx, name, acting)
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
            "by": acting.by,
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

    return dict(coord.transact(decide).result)


def _not_holders_work(state: State, ctx: Context, issue: str, acting: Actor) -> None:
    """Refuse (exit 3) an agent landing an issue another agent holds live."""
    from dibs.service.identity import not_yours

    if acting.agent in state.claims.get("issue:" + issue, {}):
        return
    for holder, lease in state.claims.get("issue:" + issue, {}).items():
        if eviction_reason(state, lease, ctx) is None:
            refusal = not_yours(acting, holder, f"issue:{issue}")
            if refusal is not None:
                raise refusal


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


def cancel(coord: Coordinator, entry_id: str, *, as_operator: bool = False) -> dict[str, Any]:
    """Take a waiting entry out of the queue (its branch is untouched).

    Only the entry's agent (with its token) may, or a person with *as_operator*.
    """
    from dibs.service.identity import not_yours

    def decide(state: State, ctx: Context) -> Decision:
        found = state.tables.get(QUEUE, {}).get(entry_id)
        if found is None:
            return Decision(error=NotFound(f"no queue entry {entry_id!r}", hint="see `dibs queue`"))
        try:
            acting = _actor(coord, state, as_operator)
        except DibsError as exc:
            return Decision(error=exc)
        refusal = not_yours(acting, found.get("agent"), f"queue entry {entry_id}")
        if refusal is not None:
            return Decision(error=refusal)
        if found["state"] != "queued":
            return Decision(
                error=Refused(
                    f"{entry_id} is {found['state']}: only a waiting entry can be cancelled",
                    hint="see `dibs queue`",
                )
            )
        value = {**found, "state": "cancelled", "finished": ctx.now.iso()}
        value["reason"] = f"cancelled by {acting.by}"
        event = _entry_event("land-cancel", ctx, value)
        return Decision([event], result=value)

    return dict(coord.transact(decide).result)


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
    coord: Coordinator,
    issue: str,
    gate: str,
    *,
    passed: bool,
    note: str | None = None,
    commit: str | None = None,
    as_operator: bool = False,
) -> dict[str, Any]:
    """Record a manual gate (a review, say) as passed or failed for *issue*.

    The result holds for one commit: *commit*, else the head of the issue's waiting queue
    entry, else of its branch (``worktrees.branch``). New commits need the gate again.

    The verdict is given by a verified agent (its token) or by a person with *as_operator*
    (recorded as ``user@host``). Nobody passes a gate on their own work: the agent that holds
    the issue, works in its worktree or queued its branch is refused (exit 3).
    """
    from dibs.ground.git.run import git

    repo = _repo(coord)
    issue = _check_issue(issue)
    if not gate or len(gate) > 64 or not gate.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"{gate!r} is not a gate name", hint="letters, digits, '-' and '_'")
    if note is not None and len(note) > 2000:
        raise UsageError("the note is over 2000 characters", hint="say it shorter")
    if commit is None:
        state, _ = coord.store.read()
        waiting = [e for e in _entries(state, finished=False) if e["issue"] == issue]
        if waiting:
            commit = waiting[0]["head"]
        else:
            branch = str(coord.settings["worktrees.branch"]).replace("{issue}", issue)
            commit = f"refs/heads/{branch}"
    sha = git(repo.root, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}", check=False)
    if not sha.strip():
        raise NotFound(
            f"cannot tell which commit the gate is for ({commit} is not a commit)",
            hint="pass --commit REF",
        )
    result = {"result": "pass" if passed else "fail", "commit": sha.strip()}
    if note:
        result["note"] = note

    def decide(state: State, ctx: Context) -> Decision:
        from dibs.service.identity import verified

        try:
            acting = _actor(coord, state, as_operator)
        except DibsError as exc:
            return Decision(error=exc)
        # An agent's own session stays itself even when it claims to be a person.
        me = acting.agent or verified(state, coord.agent, coord.token)
        authors = _authors(state, issue)
        if passed and me is not None and me in authors:
            return Decision(
                error=Refused(
                    f"{me} cannot pass the {gate} gate of {issue}: it judges {me}'s own work",
                    hint="another agent (with its token) or a person "
                    "(--as-operator, outside that agent's session) gives the verdict",
                    gate=gate,
                    issue=issue,
                    author=me,
                )
            )
        events = _gate_events(state, ctx, [issue], {gate: {**result, "by": acting.by}})
        return Decision(events, result=events[0]["value"][gate])

    recorded: dict[str, Any] = coord.transact(decide).result
    return dict(recorded)


def _authors(state: State, issue: str) -> set[str]:
    """Agents whose work *issue*'s gates judge: its holders, its worktree's and queue's agent."""
    authors = set(state.claims.get("issue:" + issue, {}))
    authors |= {
        r["agent"] for r in state.tables.get("worktrees", {}).values() if r.get("issue") == issue
    }
    authors |= {
        e["agent"]
        for e in state.tables.get(QUEUE, {}).values()
        if e["issue"] == issue and e["state"] in OPEN
    }
    return {a for a in authors if a}


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
    coord: Coordinator, issues: list[str], results: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    def decide(state: State, ctx: Context) -> Decision:
        events = _gate_events(state, ctx, issues, results)
        return Decision(events, result={e["key"]: e["value"] for e in events})

    return dict(coord.transact(decide).result)


def gates(coord: Coordinator, issue: str) -> dict[str, Any]:
    """Which required gates passed, failed or are missing for *issue*, and on which commit."""
    issue = _check_issue(issue)
    commands, required = required_gates(coord.settings)
    state, _ = coord.store.read()
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


def process(coord: Coordinator, *, batch: int | None = None) -> Outcome | None:
    """Process the queue until it is empty, if nobody else is processing it.

    Returns:
        What was handled, or None when another process holds ``lock:merge-queue``.
    """
    from dibs.service.checks import check_number

    size = batch if batch is not None else coord.settings["merge.batch"]
    check_number(size, "batch", low=1, high=64, whole=True, hint="give 1 to 64")
    processor = _Processor(coord, size)
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
    wait: float | None = None,
    on_change: Callable[[dict[str, Any]], None] | None = None,
    as_operator: bool = False,
) -> dict[str, Any]:
    """Enqueue *branch* and see it through: process the queue, or wait for whoever does.

    Who may land is `enqueue`'s rule: the agent holding the issue, or a person with
    *as_operator*.

    Args:
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
    entry_now = enqueue(coord, branch, issue=issue, as_operator=as_operator)
    deadline = None if wait is None else time.monotonic() + wait
    seen = None
    delay = 0.05
    runs = 0
    while True:
        outcome = process(coord, batch=batch)
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


def dead_lander_worktrees(base: str) -> list[str]:
    """The temporary worktrees in *base* (``<git common dir>/dibs-land``) of processors on
    this host whose process is gone (killed mid-landing)."""
    from dibs.ground.host import process_start

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

    def __init__(self, coord: Coordinator, batch: int):
        from dibs.service import Coordinator

        self.dibs = coord
        self.repo = _repo(coord)
        self.batch = batch
        self.target = _target(coord)
        self.remote = str(coord.settings["merge.remote"])
        self.strategy = str(coord.settings["merge.strategy"])
        self.timeout = float(coord.settings["merge.gate_timeout"])
        self.commands, self.required = required_gates(coord.settings)
        self.me = Coordinator(
            coord.store, settings=coord.settings, repo=coord.repo, liveness=coord.liveness
        )
        self.name = f"lander-{os.getpid()}-{os.urandom(3).hex()}"
        self.ttl = float(coord.settings["leases.ttl"])
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
        from dibs.ground.git.run import git

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
                moving = waiting.get("moving")
                if moving and _contains(self.repo.root, self._tip(), moving["commit"]):
                    # Its processor died after moving the target, before recording it.
                    self._finish(waiting, "landed", commit=moving["commit"], onto=moving["onto"])
                    continue
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
                if op == "land-start" and "moving" in fields:
                    pass  # the same run, about to move the target: its start stands
                elif op == "land-start":
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

    def _last_gate(self, item: dict[str, Any], base: str, commit: str) -> None:
        """The checks made just before the compare-and-swap, on one read of the claims.

        The entry's fence, then the claims of others on what it changes, then the target's
        checkout. Claims are checked last, not when queued: a claim taken while the gates ran
        counts, and a commit made with ``--no-verify`` (or by a script, or by an agent without
        hooks) is caught here, where the work would otherwise land.
        """
        from dibs.integrations.guard import diff_changes

        checkout = "" if self.remote else self._checkout()  # with a remote it follows if it can
        uncommitted = self._uncommitted(checkout) if checkout and base != commit else set()
        state, now = self.dibs.store.read()
        ctx = self.dibs.context(now)
        self._check_fence(item, state, ctx)
        # Reading the diff costs a git run per landing: skipped when nothing could refuse it.
        if uncommitted or any(text.startswith("path:") for text in state.claims):
            files = diff_changes(self.repo.root, base, commit, lines=False)
            self._check_claims(item, state, ctx, files=files, diff=(base, commit))
            self._check_checkout(checkout, set(files), uncommitted)

    def _check_claims(
        self,
        item: dict[str, Any],
        state: State,
        ctx: Context,
        *,
        files: dict[str, list[tuple[int, int]] | None],
        diff: tuple[str, str],
    ) -> None:
        """Refuse a diff that changes a path, or lines, another agent holds exclusively.

        The author's own claims and shared claims never stand in the way (`guard.blockers`).
        *files* (what *diff*, ``(base, commit)``, changes) are whole files; the changed lines
        are read only when a line-range claim covers one of them.
        """
        from dibs.integrations.guard import blockers, diff_changes

        found = [
            block
            for path, spans in sorted(files.items())
            for block in blockers(state, ctx, path, agent=item["agent"], lines=spans)
        ]
        if any(block.lines is not None for block in found):
            changes = diff_changes(self.repo.root, *diff)
            found = [
                block
                for path, spans in sorted(changes.items())
                for block in blockers(state, ctx, path, agent=item["agent"], lines=spans)
            ]
        if not found:
            return
        said = "; ".join(block.describe() for block in found[:3])
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        holders = ", ".join(sorted({block.lease["agent"] for block in found}))
        raise _Failed(
            f"refused: the branch changes what another agent holds: {said}{more}",
            files=sorted({block.path for block in found}),
            held=[block.to_json() for block in found],
            hint=f"leave those changes out, or settle them with {holders} "
            f"(or wait until they are released), then land again",
        )

    def _check_checkout(self, checkout: str, paths: set[str], uncommitted: set[str]) -> None:
        """Refuse to land *paths* over *uncommitted* work in *checkout* (the target's)."""
        busy = sorted(_meeting(paths, uncommitted))
        if busy:
            raise _Failed(
                f"refused: {checkout} has {self.target} checked out with uncommitted changes "
                f"to {', '.join(busy[:5])}{' ...' if len(busy) > 5 else ''}, which the "
                "landing changes",
                files=busy,
                checkout=checkout,
                hint=f"commit, stash or discard those changes in {checkout}, then land again",
            )

    def _check_fence(
        self, item: dict[str, Any], state: State | None = None, ctx: Context | None = None
    ) -> None:
        if state is None or ctx is None:
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
        from dibs.ground.git.run import GitError

        try:
            self._git("cat-file", "-e", sha + "^{commit}")
        except GitError:
            return False
        return True

    def _apply(self, item: dict[str, Any], base: str) -> str:
        """*item*'s commit put on *base* (rebased or merged); raises _Failed on a conflict."""
        from dibs.ground.git.run import GitError

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
            base = tip
            for item, commit in stack:
                try:
                    self._last_gate(item, base, commit)
                except _Failed as failed:
                    self._finish(item, "failed", **failed.fields)
                    lost.append(item["id"])
                base = commit
            if lost:
                rest = [item for item, _ in stack if item["id"] not in lost]
                return self._settle(self._stack(rest, tip), tip, attempt)
            # Written before the target moves: a processor killed between the move and its
            # `land-done` leaves this behind, and whoever looks next (the next processor,
            # `dibs ready`/`next`) sees from the target that the entry landed.
            self._write(
                [(item, "land-start", {"moving": {"commit": c, "onto": tip}}) for item, c in stack]
            )
            try:
                moved = self._move(tip, top)
            except _Failed as failed:  # the target's checkout cannot take the whole stack
                self._conclude([(item, "failed", failed.fields) for item, _ in stack])
                return tip
            if moved:
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


# Conflict prediction ----------------------------------------------------------------------


def conflicts(coord: Coordinator) -> dict[str, Any]:
    """Predicted conflicts among live agent branches, and of each with the target.

    Live branches: those of waiting queue entries, of registered agents, and every branch
    named by the ``worktrees.branch`` pattern that is not merged into the target. Each branch
    is merged with the target, and each pair of branches that changed a common path (or a
    file and a folder of one name) with each other, by ``git merge-tree --write-tree``, in
    memory: nothing is checked out or written to a branch.
    """
    from dibs.ground.git.run import git

    repo = _repo(coord)
    target = _target(coord)
    tip = git(repo.root, "rev-parse", "--verify", "--quiet", f"refs/heads/{target}", check=False)
    if not tip.strip():
        raise NotFound(f"the target branch {target!r} does not exist", hint="set merge.target")
    state, _ = coord.store.read()
    names = {e["branch"] for e in _entries(state, finished=False)}
    names |= {a["branch"] for a in state.agents.values() if a.get("branch")}
    pattern = str(coord.settings["worktrees.branch"])
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
    return bool(_meeting(a, b))


def _meeting(a: set[str], b: set[str]) -> set[str]:
    """The paths of *a* that are paths of *b*, folders of them, or files in their way."""
    folders_b = {p.rsplit("/", i)[0] for p in b for i in range(1, p.count("/") + 1)}
    return {
        p
        for p in a
        if p in b
        or p in folders_b
        or any(p.rsplit("/", i)[0] in b for i in range(1, p.count("/") + 1))
    }


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
        from dibs.ground.git.run import GitError

        raise GitError(f"git merge-tree {a} {b} failed: {done.stderr.strip()}")
    return sorted(set(done.stdout.split("\n")[1:]) - {""})
