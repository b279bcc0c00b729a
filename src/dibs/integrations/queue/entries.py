"""Queue entries: who may queue what, the order they land in, and what became of them.

An entry is a ``land-*`` event on table ``queue`` (key: the entry id, ``q<seq>``). It remembers
the branch's commit when it was queued and the fencing token of its issue's claim. Open
entries land in this order: those being tested (in the order they were taken), then the
waiting ones, ``high`` priority before ``normal``, each in the order it was queued. Finished
entries are pruned from the table (the last `KEEP_FINISHED` stay for `dibs queue` and
`history`); what landed is also written, with each ``land-done``, to table ``landed``, which
is never pruned (`landed_issues`).
"""

from __future__ import annotations

from dibs.core.events import new_event
from dibs.core.leases import Decision, eviction_reason
from dibs.ground.errors import DibsError, LeaseLost, NotFound, Refused, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
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
#: Priorities of `dibs land --priority`: ``high`` goes ahead of every ``normal`` entry not yet
#: being tested.
PRIORITIES = ("normal", "high")
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
    state, _ = coord.read()
    return _entries(state, finished=finished)


def _landing_order(entry: dict[str, Any]) -> tuple[int, int, int]:
    """Being tested first (in the order taken: never overtaken), then ``high`` priority,
    then the order of queueing."""
    if entry["state"] == "running":
        return (0, int(entry.get("lane", 0)), entry["number"])
    return (1, 0 if entry.get("priority") == "high" else 1, entry["number"])


def _entries(state: State, *, finished: bool = True) -> list[dict[str, Any]]:
    table = state.tables.get(QUEUE, {})
    ordered = sorted(table.values(), key=lambda e: e["number"])
    live = sorted((dict(e) for e in ordered if e["state"] in OPEN), key=_landing_order)
    for position, entry in enumerate(live, 1):
        entry["position"] = position
    done = [dict(e) for e in ordered if e["state"] not in OPEN] if finished else []
    done.sort(key=lambda e: e.get("finished") or "", reverse=True)
    return live + done


def entry(coord: Coordinator, entry_id: str) -> dict[str, Any]:
    """One entry by id (``q12``): from the queue table, or from the log once it was pruned."""
    state, _ = coord.read()
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
    for event in coord.events(int(number) - 1):
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
    priority: str = "normal",
    as_operator: bool = False,
) -> dict[str, Any]:
    """Put *branch* (default: the current one) in the queue; returns its entry.

    A ``high`` *priority* entry goes ahead of every ``normal`` one not yet being tested.

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

    if priority not in PRIORITIES:
        raise UsageError(f"no priority {priority!r}", hint="give normal or high")
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
                same = existing["head"] == head and existing.get("priority", "normal") == priority
                if existing["state"] == "running" or same:
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
            "priority": priority,
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


#: What `history` keeps of a finished entry (besides its id and outcome), when present.
_HISTORY_FIELDS = (
    "branch",
    "issue",
    "agent",
    "by",
    "priority",
    "finished",
    "seconds",
    "queued_seconds",
    "commit",
    "onto",
    "reason",
    "gate",
    "exit",
    "tail",
    "files",
    "ahead",
    "flaky",
    "tries",
    "cached",
    "hint",
)


def history(coord: Coordinator, limit: int = 20) -> list[dict[str, Any]]:
    """Recent landings, failures and cancellations, newest first (at most *limit*, and at most
    `KEEP_FINISHED`: older entries are in the log, `dibs log --op land-done`).

    Each row: ``id``, ``outcome`` (landed, failed, cancelled) and those of `_HISTORY_FIELDS`
    the entry has: the reason of a failure (``gate``, ``exit``, the ``tail`` of its output,
    the conflicting ``files`` and the entries ``ahead`` it could not go on), ``seconds`` it
    took, ``flaky`` gates that failed then passed and their ``tries``.
    """
    from dibs.service.checks import check_number

    check_number(limit, "limit", low=1, high=KEEP_FINISHED, whole=True)
    state, _ = coord.read()
    done = [e for e in _entries(state) if e["state"] not in OPEN][:limit]
    return [
        {
            "id": e["id"],
            "outcome": e["state"],
            **{name: e[name] for name in _HISTORY_FIELDS if e.get(name) is not None},
        }
        for e in done
    ]
