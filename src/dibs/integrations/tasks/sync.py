"""Telling the trackers: write-back to the task sources, and the ``[events]`` commands.

When dibs hands out a task (an ``acquire`` of ``issue:<id>``), lets it go (``release``, an
eviction) or lands it (the queue's ``land-done``), the task's own tool hears of it in its own
terms, and so does any command named in the ``[events]`` table of dibs.toml:

* beads (``bd`` on PATH): ``bd update ID --status in_progress --assignee AGENT`` when handed
  out; ``bd close ID --reason ...`` when landed; ``bd update ID --status open --assignee ""``
  when let go unlanded while beads still says in_progress;
* CCPM: the task file's ``status`` (``in-progress``, ``closed``, back to ``open``) and
  ``updated`` frontmatter lines, rewritten atomically, every other byte kept;
* ``[events]``: ``acquire``, ``release``, ``evict``, ``land``, ``landing-failed`` name shell
  commands run in the repository root with the event as JSON on stdin (and ``DIBS_EVENT``).

The log is the outbox. A delivery pass reads the events after a cursor kept in the log (table
``outbox``), delivers them, and records the new cursor with the deliveries that failed; those
are retried on later passes (up to `MAX_ATTEMPTS`, then reported as given up). A pass runs
after the commands that make such events, never inside their transaction: a tracker that is
down never blocks a claim, and its failure is reported on stderr. Delivery is at least once: a
pass cut short before it records its cursor delivers those events again next time. One pass
runs at a time (a short lease in the outbox record); the others leave the work to it.
"""

from __future__ import annotations

import json
import os
import sys

from dibs.core.events import new_event
from dibs.core.leases import Decision

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.integrations.tasks.model import Task
    from dibs.service import Coordinator

TABLE = "outbox"
KEY = "tasks"
#: Log ops that trackers hear of, and the event name they get.
EVENTS = {
    "acquire": "acquire",
    "release": "release",
    "auto-evict": "evict",
    "force-evict": "evict",
    "land-done": "land",
    "land-fail": "landing-failed",
}
NAMES = frozenset(EVENTS.values())
MAX_ATTEMPTS = 5
#: Seconds one ``[events]`` command or ``bd`` call may take.
TIMEOUT = 60.0
#: The first pass looks this far back (seconds) instead of replaying the whole history.
FIRST_LOOK_BACK = 600.0
#: Seconds a pass holds the outbox before another may take over.
PASS_LEASE = 300.0


def enabled(coord: Coordinator) -> bool:
    """Whether anything listens: an ``[events]`` command, or write-back to a task source."""
    if coord.settings["events"]:
        return True
    if not coord.settings["tasks.writeback"] or coord.repo is None:
        return False
    from dibs.integrations.tasks.reading import root, sources

    names, _ = sources(coord)
    if not names:
        return False  # the usual case: nothing to read, and no reader imported to say so
    import glob

    from dibs.integrations.tasks import beads, markdown

    for name in names:
        path = os.path.join(root(coord), name)
        if beads.is_beads(path, name):
            return True
        if any(markdown.is_epic(folder) for folder in glob.glob(path.rstrip("/"))):
            return True
    return False


def deliver(coord: Coordinator, *, tasks: list[Task] | None = None) -> list[dict[str, Any]]:
    """One delivery pass; returns what was delivered and what failed (also on stderr).
    Never raises: the claim it follows stands whatever becomes of the telling."""
    from dibs.ground.errors import DibsError

    try:
        if not enabled(coord):
            return []
        return _pass(coord, tasks)
    except (DibsError, OSError) as exc:
        said = exc.message if isinstance(exc, DibsError) else str(exc)
        sys.stderr.write(f"dibs: could not tell the trackers: {said}; will retry\n")
        return []


def _pass(coord: Coordinator, tasks: list[Task] | None) -> list[dict[str, Any]]:
    from dibs.ground import platform

    me = f"{platform.host_name()}:{os.getpid()}"
    taken = coord.transact(lambda state, ctx: _take(state, ctx, me)).result
    if taken is None:
        return []
    cursor, pending = taken["seq"], taken["pending"]
    try:
        last, report, failed = _work(coord, tasks, cursor, pending, taken.get("since_wall"))
    except BaseException:
        # Give the outbox back unchanged: the next pass delivers these events again.
        coord.transact(lambda state, ctx: _put(state, ctx, me, cursor, pending))
        raise
    coord.transact(lambda state, ctx: _put(state, ctx, me, last, failed))
    return report


def _work(
    coord: Coordinator,
    tasks: list[Task] | None,
    cursor: int,
    pending: list[dict[str, Any]],
    since: float | None,
) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """Deliver the pending items and the events after *cursor*: (last seq read, report,
    the items that failed and will be retried)."""
    work: list[dict[str, Any]] = list(pending)
    last = cursor
    for event in coord.events(since=cursor):
        last = event["seq"]
        payload = _payload(event)
        if payload is None or (since is not None and payload["at"] < since):
            continue
        if coord.settings["tasks.writeback"]:
            work.append({"to": "source", "event": payload, "attempts": 0})
        if payload["event"] in coord.settings["events"]:
            work.append({"to": "command", "event": payload, "attempts": 0})
    report: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    if work:
        if tasks is None:
            from dibs.integrations.tasks.reading import load

            tasks, _ = load(coord)
        state, _ = coord.read()
        by_id = {t.id: t for t in tasks}
        told: dict[str, str] = {}
        for item in work:
            try:
                said = _deliver(coord, item, by_id, state, told)
            except _Failed as exc:
                again = {**item, "attempts": item["attempts"] + 1, "error": str(exc)}
                gave_up = again["attempts"] >= MAX_ATTEMPTS
                _say(again, gave_up)
                report.append({**again, "delivered": False, "gave_up": gave_up})
                if not gave_up:
                    failed.append(again)
                continue
            if said:
                report.append({**item, "delivered": True, "said": said})
    return last, report, failed


class _Failed(Exception):
    """A delivery that did not go through (retried later)."""


def _take(state: State, ctx: Context, me: str) -> Decision:
    box = state.tables.get(TABLE, {}).get(KEY)
    if box is None:
        box = {"seq": 0, "pending": [], "since_wall": ctx.now.wall - FIRST_LOOK_BACK}
    elif box.get("busy_until", 0) > ctx.now.wall and box.get("busy_by") != me:
        return Decision(result=None)  # another pass is at it
    elif box["seq"] >= state.seq and not box["pending"]:
        return Decision(result=None)  # nothing new (the last event is our own record)
    value = {**box, "busy_by": me, "busy_until": ctx.now.wall + PASS_LEASE}
    event = new_event("outbox", ctx.now, table=TABLE, key=KEY, value=value)
    return Decision([event], result=box)


def _put(state: State, ctx: Context, me: str, seq: int, pending: list[Any]) -> Decision:
    box = state.tables.get(TABLE, {}).get(KEY) or {}
    if box.get("busy_by") not in (me, None) and box.get("busy_until", 0) > ctx.now.wall:
        return Decision(result=None)  # our lease ran out and another pass took over
    # The record itself is the next event: start after it, so an idle pass finds nothing.
    value = {"seq": max(seq, int(box.get("seq", 0))), "pending": pending}
    if seq >= state.seq:
        value["seq"] = state.seq + 1
    event = new_event("outbox", ctx.now, table=TABLE, key=KEY, value=value)
    return Decision([event], result=value)


def _payload(event: Any) -> dict[str, Any] | None:
    name = EVENTS.get(event.get("op", ""))
    resource = str(event.get("resource") or "")
    if name is None or not resource.startswith("issue:"):
        return None
    value = event.get("value") if isinstance(event.get("value"), dict) else {}
    payload = {
        "event": name,
        "issue": resource.removeprefix("issue:"),
        "resource": resource,
        "agent": event.get("agent") or value.get("agent"),
        "seq": event["seq"],
        "wall": event.get("wall"),
        "at": _seconds(str(event.get("wall") or "")),
    }
    for name in ("reason", "by", "token", "note"):
        if event.get(name) is not None:
            payload[name] = event[name]
    for name in ("commit", "branch", "error", "stage"):
        if value.get(name) is not None:
            payload[name] = value[name]
    return payload


def _seconds(iso: str) -> float:
    """Unix seconds of the log's ``2026-11-23T10:00:00.123Z`` (0 when unreadable)."""
    import calendar
    import time

    try:
        return float(calendar.timegm(time.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return 0.0


def _say(item: dict[str, Any], gave_up: bool) -> None:
    event = item["event"]
    whom = "the task's source" if item["to"] == "source" else f"[events] {event['event']}"
    then = "gave up" if gave_up else f"will retry (attempt {item['attempts']} of {MAX_ATTEMPTS})"
    sys.stderr.write(
        f"dibs: could not tell {whom} that {event['issue']} had {event['event']}: "
        f"{item['error']}; {then}\n"
    )


def _deliver(
    coord: Coordinator,
    item: dict[str, Any],
    by_id: dict[str, Task],
    state: State,
    told: dict[str, str],
) -> str | None:
    event = item["event"]
    if item["to"] == "command":
        return _run_command(coord, event)
    task = by_id.get(event["issue"])
    if task is None or task.kind not in ("beads", "ccpm"):
        return None
    from dibs.integrations.tasks.reading import landed_issues

    status = told.get(task.id, task.status)
    name = event["event"]
    holders = state.claims.get(f"issue:{task.id}", {})
    if name == "acquire":
        if event["agent"] not in holders:
            return None  # let go since (or a retry of an old hand-out): the tool keeps its word
        target = "in_progress" if task.kind == "beads" else "in-progress"
    elif name == "land":
        target = "closed"
    elif name in ("release", "evict"):
        working = status in ("in_progress", "in-progress")
        if holders or task.id in landed_issues(state) or not working:
            return None
        target = "open"
    else:
        return None
    said = _tell_beads(coord, task, target, event) if task.kind == "beads" else None
    if task.kind == "ccpm":
        said = _tell_ccpm(task, target, event)
    told[task.id] = target
    return said


def _tell_ccpm(task: Task, status: str, event: dict[str, Any]) -> str | None:
    from datetime import UTC, datetime

    from dibs.integrations.tasks.markdown import write_status

    when = datetime.fromtimestamp(event["at"] or 0, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        changed = write_status(task.ref, status, when)
    except OSError as exc:
        raise _Failed(f"{task.ref}: {exc.strerror or exc}") from None
    return f"{task.ref}: status: {status}" if changed else None


def _tell_beads(coord: Coordinator, task: Task, status: str, event: dict[str, Any]) -> str | None:
    from dibs.integrations.tasks.beads import bd_command

    bd = bd_command()
    if bd is None:
        return None  # the export is beads' output, not its input: nothing to write to
    if status == "closed":
        reason = f"landed by dibs{' as ' + event['commit'] if event.get('commit') else ''}"
        args = ["close", task.id, "--reason", reason]
    elif status == "open":
        args = ["update", task.id, "--status", "open", "--assignee", ""]
    else:
        args = ["update", task.id, "--status", status, "--assignee", str(event["agent"] or "")]
    _run([bd, *args], coord, None)
    return "bd " + " ".join(args)


def _run_command(coord: Coordinator, event: dict[str, Any]) -> str:
    command = str(coord.settings["events"][event["event"]])
    body = json.dumps({k: v for k, v in event.items() if k != "at"}, sort_keys=True)
    _run(["/bin/sh", "-c", command], coord, body, {"DIBS_EVENT": event["event"]})
    return command


def _run(
    argv: list[str], coord: Coordinator, stdin: str | None, env: dict[str, str] | None = None
) -> None:
    import subprocess

    from dibs.integrations.tasks.reading import root

    try:
        out = subprocess.run(
            argv,
            cwd=root(coord),
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TIMEOUT,
            env={**os.environ, **(env or {})},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _Failed(f"`{argv[-1]}` ran past {TIMEOUT:g} s") from None
    except OSError as exc:
        raise _Failed(f"could not run {argv[0]}: {exc.strerror or exc}") from None
    if out.returncode != 0:
        last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
        raise _Failed(f"exit {out.returncode}: {last[0][:200]}")
