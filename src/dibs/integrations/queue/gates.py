"""Gates: manual verdicts (`record_gate`), the command gates of ``dibs.toml`` and how they run.

A command gate runs on the exact commit that would become the target's tip, in a temporary
worktree, with a timeout. A gate with ``retries = K`` is run again up to K times after a
failure; one that fails and then passes counts as flaky, and the output of every try is
kept. A failure (after its retries) is remembered in table `FAILURES` by (base tree, branch
commits, gate command): the same combination is not run again, its recorded failure stands.

A gate command leads a session of its own, so a processor killed by SIGKILL would leave it
(and its test suite) running. While it runs, a `GateRecord` beside the processor's temporary
worktree names its process group with its leader's start time; the next processor on this host
stops the groups of processors that are gone (`stop_orphaned_gates`) before it tests again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time

from dibs.core.events import new_event
from dibs.core.leases import Decision
from dibs.ground.errors import DibsError, NotFound, Refused, UsageError
from dibs.integrations.queue.entries import (
    GATES,
    OPEN,
    QUEUE,
    TAIL_CHARS,
    TAIL_LINES,
    _actor,
    _check_issue,
    _entries,
    _repo,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.service import Coordinator

#: Failed (base tree, branch commits, gate) combinations, by `failure_key`.
FAILURES = "gate-failures"
#: Failures remembered; the oldest are forgotten first.
KEEP_FAILURES = 500
#: The name ending of a `GateRecord`'s file.
RECORD = ".gate"
#: Seconds an orphaned gate gets between SIGTERM and SIGKILL.
ORPHAN_GRACE = 3.0


def required_gates(settings: Any) -> tuple[dict[str, str], list[str]]:
    """The command gates (name -> command) and every required gate name, in order."""
    table = dict(settings["gates"])
    required = table.pop("required", None)
    commands = {
        name: str(gate["command"] if isinstance(gate, dict) else gate)
        for name, gate in table.items()
    }
    return commands, list(required) if required is not None else list(commands)


def gate_retries(settings: Any) -> dict[str, int]:
    """How many times each command gate is run again after a failure (``retries``)."""
    return {
        name: int(gate.get("retries", 0))
        for name, gate in dict(settings["gates"]).items()
        if isinstance(gate, dict)
    }


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
        state, _ = coord.read()
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
    state, _ = coord.read()
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


# The failure cache -------------------------------------------------------------------------


def failure_key(base_tree: str, heads: list[str], gate: str, command: str) -> str:
    """The key of one gate run: the tree the branches were put on, their commits, the gate
    and its command (a changed command is a new gate)."""
    text = "\0".join([base_tree, *heads, gate, command])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def failure_events(state: State, ctx: Context, found: dict[str, dict[str, Any]]) -> list[Any]:
    """``record`` events remembering *found* failures, forgetting the oldest over the limit."""
    table = state.tables.get(FAILURES, {})
    events = [
        new_event("record", ctx.now, table=FAILURES, key=key, value={**value, "at": ctx.now.iso()})
        for key, value in found.items()
    ]
    over = len(table) + len(found) - KEEP_FAILURES
    if over > 0:
        oldest = sorted(table, key=lambda key: str(table[key].get("at", "")))[:over]
        events += [new_event("record", ctx.now, table=FAILURES, key=k, value=None) for k in oldest]
    return events


# Running command gates ---------------------------------------------------------------------


class GateRecord:
    """The file that names a running gate's process group, for whoever outlives its processor.

    Written at ``<temporary worktree>.gate`` (outside the worktree: gates see nothing of it)
    once the command runs, removed once it has ended. It holds the group (the leader's pid and
    start time), the processor's pid and start time, and the host and boot they belong to: a
    pid alone says nothing once it may have been given to another process.
    """

    def __init__(self, path: str, fields: dict[str, Any]) -> None:
        self.path = path
        self.fields = fields

    def write(self, pid: int, gate: str) -> None:
        """Name the group *pid* leads, running *gate* (one write: a reader sees it whole or
        empty)."""
        from dibs.ground.host import process_start

        data = {**self.fields, "gate": gate, "pid": pid, "start": process_start(pid)}
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, json.dumps(data).encode())
        finally:
            os.close(fd)

    def clear(self) -> None:
        _forget(self.path)


def record_fields(processor: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    """What a `GateRecord` of *processor* (this process) testing *items* says besides the
    group."""
    from dibs.ground.host import boot_id, host_id, process_start

    return {
        "processor": processor,
        "processor_pid": os.getpid(),
        "processor_start": process_start(os.getpid()),
        "host": host_id(),
        "boot": boot_id(),
        "entries": [item["id"] for item in items],
    }


def stop_orphaned_gates(
    base: str, processor: str | None = None, grace: float = ORPHAN_GRACE
) -> list[dict[str, Any]]:
    """Stop the gates left running by processors that are gone, on this host, and forget
    their records; returns the records of the groups stopped.

    *base* is the folder of the temporary worktrees (``<git common dir>/dibs-land``);
    *processor* limits it to that processor's records. A record of another host is left
    alone; one of an earlier boot of this host is only forgotten (its processes are gone).
    A group is signalled only while its leader runs with the recorded start time
    (`dibs.ground.host.stop_process_group`).
    """
    from dibs.ground.host import boot_id, host_id, process_alive, stop_process_group

    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return []
    stopped = []
    for name in names:
        if not name.endswith(RECORD) or (processor and not name.startswith(processor + ".")):
            continue
        path = os.path.join(base, name)
        try:
            with open(path, "rb") as f:
                record = json.loads(f.read())
        except FileNotFoundError:
            continue
        except ValueError:  # killed between creating and writing it: no group to name
            pid = name.split("-")[1] if name.count("-") >= 2 else ""
            if pid.isdigit() and not process_alive(int(pid), None):
                _forget(path)
            continue
        if record.get("host") != host_id():
            continue
        if record.get("boot") == boot_id():
            if process_alive(record["processor_pid"], record["processor_start"]):
                continue
            if stop_process_group(record["pid"], record["start"], grace):
                stopped.append(record)
        _forget(path)
    return stopped


def _forget(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class GateRun:
    """What putting one commit through the command gates gave."""

    def __init__(self) -> None:
        #: The first failure (reason, gate, exit, tail, ...), or None: all passed.
        self.failure: dict[str, Any] | None = None
        #: Each gate's result as table ``gates`` records it.
        self.results: dict[str, dict[str, Any]] = {}
        #: Whether a gate command ran (False when none is configured, or the cache answered).
        self.ran = False
        #: Gates that failed and then passed on a retry, with every try's output.
        self.flaky: dict[str, list[dict[str, Any]]] = {}
        #: New failures to remember (`failure_events`).
        self.failed: dict[str, dict[str, Any]] = {}
        #: Stopped before the end (its speculation was rebuilt): nothing to conclude.
        self.cancelled = False

    @property
    def passed(self) -> bool:
        return self.failure is None and not self.cancelled


class Gates:
    """The command gates of ``dibs.toml``, run for one processor (named *by*)."""

    def __init__(self, settings: Any, by: str) -> None:
        self.commands, self.required = required_gates(settings)
        self.retries = gate_retries(settings)
        self.timeout = float(settings["merge.gate_timeout"])
        self.names = [g for g in self.required if g in self.commands]
        self.by = by
        self.env: dict[str, str] = {}

    def run(
        self,
        commit: str,
        cwd: str,
        items: list[dict[str, Any]],
        *,
        base_tree: Callable[[], str],
        cache: dict[str, dict[str, Any]],
        cancel: threading.Event | None = None,
        tick: Callable[[], None] | None = None,
        record: str | None = None,
    ) -> GateRun:
        """Run every required command gate on *commit* (checked out in *cwd*), in order, up
        to the first failure; a failure in *cache* for the same key stands without a run.
        *base_tree* tells the tree the items were put on (asked only when the cache has
        something or a gate failed: it costs a git call).

        *tick* is called every few seconds while a gate runs (the processor renews its lock
        there; what it raises kills the gate and propagates); *cancel* set stops the run.
        *record* is where a `GateRecord` names each command while it runs.
        """
        run = GateRun()
        recorder = GateRecord(record, record_fields(self.by, items)) if record else None
        heads = [str(item["head"]) for item in items]
        env = {
            **self.env,
            "DIBS_LAND_COMMIT": commit,
            "DIBS_LAND_BRANCHES": " ".join(item["branch"] for item in items),
            "DIBS_LAND_ISSUES": " ".join(item["issue"] for item in items),
        }
        tree = ""
        for name in self.names:
            if cache and not tree:
                tree = base_tree()
            known = cache.get(failure_key(tree, heads, name, self.commands[name])) if tree else None
            if known is not None:
                said = _said(known["exit"])
                run.failure = {
                    "reason": f"gate {name} {said} on these same commits and base before "
                    "(not run again)",
                    "gate": name,
                    "exit": known["exit"],
                    "tail": known.get("tail", ""),
                    "cached": True,
                    "hint": "push a fix (a new commit), or land again once the target moved",
                }
                run.results[name] = self._result(commit, known["exit"], 0.0, known.get("tail"))
                return run
            run.ran = True  # even if stopped: a gate run was spent
            tries = self._tries(name, cwd, env, cancel, tick, recorder=recorder)
            if tries is None:
                run.cancelled = True
                return run
            last = tries[-1]
            result = self._result(
                commit, last["exit"], sum(t["seconds"] for t in tries), last["tail"]
            )
            if len(tries) > 1:
                result["tries"] = tries
            run.results[name] = result
            if last["exit"] == 0:
                if len(tries) > 1:
                    run.flaky[name] = tries
                continue
            run.failure = {
                "reason": f"gate {name} {_said(last['exit'])}",
                "gate": name,
                "exit": last["exit"],
                "tail": last["tail"],
                **({"tries": tries} if len(tries) > 1 else {}),
            }
            if last["exit"] != "timeout":  # a timeout may be the machine's load, not the code
                key = failure_key(tree or base_tree(), heads, name, self.commands[name])
                run.failed[key] = {"gate": name, "exit": last["exit"], "tail": last["tail"]}
            return run
        return run

    def _result(
        self, commit: str, code: int | str, seconds: float, tail: str | None
    ) -> dict[str, Any]:
        result: dict[str, Any] = {
            "result": "pass" if code == 0 else "fail",
            "commit": commit,
            "by": self.by,
            "exit": code,
            "seconds": round(seconds, 3),
        }
        if code != 0 and tail is not None:
            result["tail"] = tail
        return result

    def _tries(
        self,
        name: str,
        cwd: str,
        env: dict[str, str],
        cancel: threading.Event | None,
        tick: Callable[[], None] | None,
        *,
        recorder: GateRecord | None,
    ) -> list[dict[str, Any]] | None:
        """Run gate *name* until it passes or its retries are spent; None: cancelled."""
        tries = []
        on_start = None if recorder is None else (lambda pid: recorder.write(pid, name))
        for _ in range(self.retries.get(name, 0) + 1):
            try:
                code, tail, seconds = run_command(
                    self.commands[name],
                    cwd,
                    env,
                    timeout=self.timeout,
                    cancel=cancel,
                    tick=tick,
                    on_start=on_start,
                )
            finally:
                if recorder is not None:
                    recorder.clear()
            if code == "cancelled":
                return None
            tries.append({"exit": code, "seconds": seconds, "tail": tail})
            if code == 0:
                break
        return tries


def _said(code: int | str) -> str:
    return "timed out" if code == "timeout" else f"exited {code}"


def run_command(
    command: str,
    cwd: str,
    env: dict[str, str],
    *,
    timeout: float,
    cancel: threading.Event | None = None,
    tick: Callable[[], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> tuple[int | str, str, float]:
    """Run *command* by ``/bin/sh`` in its own process group; (exit code, the tail of its
    output, seconds). The code is ``timeout`` or ``cancelled`` when it was killed for that.
    *on_start* is told the group's id (its leader's pid) once the command runs."""
    import signal
    import subprocess
    import tempfile

    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        child = subprocess.Popen(
            ["/bin/sh", "-c", command],
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if on_start is not None:
            try:
                on_start(child.pid)
            except BaseException:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                raise
        code: int | str
        while True:
            left = started + timeout - time.monotonic()
            try:
                code = child.wait(timeout=max(0.0, min(left, 0.1 if cancel else 1.0)))
                break
            except subprocess.TimeoutExpired:
                stop = ""
                if time.monotonic() - started >= timeout:
                    stop = "timeout"
                elif cancel is not None and cancel.is_set():
                    stop = "cancelled"
                if not stop and tick is not None:
                    try:
                        tick()
                    except BaseException:
                        os.killpg(child.pid, signal.SIGKILL)
                        child.wait()
                        raise
                if stop:
                    os.killpg(child.pid, signal.SIGKILL)
                    child.wait()
                    code = stop
                    break
        out.seek(0)
        text = out.read().decode(errors="replace")
    tail = "\n".join(text.rstrip().splitlines()[-TAIL_LINES:])[-TAIL_CHARS:]
    return code, tail, round(time.monotonic() - started, 3)
