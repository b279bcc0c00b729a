"""Every agent's inbox, derived from the log: which events concern whom, and what they say.

An inbox is not a second store. A message is an event of the log, either one written to be
a message (``message``: `dibs send`) or one that already tells an agent what happened to it:
its lease was evicted, its landing landed or failed, a resource it gave up waiting for is free
now, its plan overlaps another's, it is stuck. `notices` maps an event (and the state it lands
on) to its recipients; `apply` keeps, per recipient, the seqs of its unread messages and its
read cursor in ``tables["inbox"]``, so both stores hold the same inbox and a crash loses
nothing. `message` renders one for people and models. Reading acknowledges with an
``inbox-read`` event that moves the cursor: a reader killed before that event reads the same
messages again (at least once, in log order).

Watchers (people, or an orchestrating agent, reading ``dibs inbox --watch``) share one stream,
`WATCH`, of what concerns the swarm rather than one agent: force and stuck evictions, failed
landings, stuck agents. Each watcher has its own cursor in it.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dibs.core import resources as res

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.events import Event
    from dibs.core.state import State

TABLE = "inbox"
#: Gave-up waits, remembered so that the waiter hears when the resource is free.
WANTS = "wants"
#: The watchers' shared stream (agent names cannot contain ``@``, so it is no agent's).
WATCH = "@watch"
#: Unread messages an inbox keeps; past that the oldest are dropped, and counted.
MAX_PENDING = 1000
#: Messages the watchers' stream keeps (a rolling window: watchers come and go).
MAX_WATCH = 500

#: What each kind of message is about, for `dibs inbox` and the docs.
KINDS = {
    "message": "a message someone sent with `dibs send`",
    "evicted": "a lease of yours was evicted (by whom, why)",
    "landed": "your branch landed",
    "land-failed": "your branch failed to land (gate, output tail, conflicting files)",
    "free": "a resource you gave up waiting for is free",
    "plan-overlap": "your plan overlaps another agent's",
    "stuck": "an agent (you, or one you watch) made no progress for agents.stuck_after",
}

_FREEING = frozenset(("release", "auto-evict", "force-evict"))


def notices(state: State, event: Event) -> list[tuple[str, Any]]:
    """``(recipient, extra)`` for each inbox *event* reaches, on *state* after it applied.

    *extra* is what rendering needs beyond the event (None for most kinds).
    """
    op = event["op"]
    agent = event.get("agent")
    if op == "message":
        return _message_recipients(state, event)
    out: list[tuple[str, Any]] = []
    if op in ("auto-evict", "force-evict") and agent:
        out.append((agent, None))
        if op == "force-evict" or event.get("reason") == "stuck":
            out.append((WATCH, None))
    elif op == "land-done" and agent:
        out.append((agent, None))
    elif op in ("land-fail", "stuck") and agent:
        out += [(agent, None), (WATCH, None)]
    elif op == "plan-add" and agent:
        out += _plan_overlaps(state, event)
    if op in _FREEING and state.tables.get(WANTS):
        out += _freed(state, event)
    return out


def _message_recipients(state: State, event: Event) -> list[tuple[str, Any]]:
    to = (event.get("details") or {}).get("to") or []
    if to == ["*"]:
        sender = event.get("agent")
        return [(name, None) for name in sorted(state.agents) if name != sender]
    return [(name, None) for name in to]


def _plan_overlaps(state: State, event: Event) -> list[tuple[str, Any]]:
    """The new plan's owner and every agent whose plan overlaps it."""
    owner = event["agent"]
    mine = (event.get("value") or {}).get("globs") or []
    mine_parsed = [res.parse_resource(g) for g in mine]
    out: list[tuple[str, Any]] = []
    others: list[str] = []
    for name, plan in sorted(state.tables.get("plans", {}).items()):
        if name == owner:
            continue
        shared = sorted(
            {
                theirs
                for theirs in plan.get("globs", [])
                if any(res.overlaps(m, res.parse_resource(theirs)) for m in mine_parsed)
            }
        )
        if shared:
            others.append(name)
            out.append((name, {"with": name, "globs": shared}))
    if others:
        out.insert(0, (owner, {"with": ", ".join(others), "globs": mine}))
    return out


def _freed(state: State, event: Event) -> list[tuple[str, Any]]:
    """Agents that gave up waiting for what *event* freed, when nothing holds it now.

    Every client applies every release, and most free nothing anyone wants: the scopes
    (plain text, never less than `res.overlaps`) rule those out before any glob is parsed."""
    where = res.scope(event["resource"]) or ""
    freed: res.Resource | None = None
    out: list[tuple[str, Any]] = []
    for waiter, want in sorted(state.tables[WANTS].items()):
        if waiter == event.get("agent"):
            continue
        for text in want["resources"]:
            wanted = res.parse_resource(text)
            if not res.scopes_may_overlap(res.scope(wanted.text) or "", where):
                continue
            if freed is None:
                freed = res.parse_resource(event["resource"])
            if not res.overlaps(wanted, freed):
                continue
            blocking = [
                lease
                for lease in state.overlapping(wanted)
                if lease["agent"] != waiter
                and not (lease["mode"] == "shared" and want.get("mode") == "shared")
            ]
            if not blocking:
                out.append((waiter, {"wanted": text}))
                break
    return out


# Keeping the index ------------------------------------------------------------------------


def note(state: State, event: Event, before: Any = None) -> None:
    """Fold *event* into the inbox index of *state* (called by `dibs.core.state.apply`)."""
    op = event["op"]
    if op == "inbox-read":
        _acknowledge(state, event)
        return
    if op == "unregister" and event.get("reason") != "replaced":
        _forget(state, event["agent"])
        return
    if op == "wait-end" and before is not None and event.get("reason") in ("gave-up", "deadlock"):
        wants = state.tables.setdefault(WANTS, {})
        wants[event["agent"]] = {"resources": before["resources"], "mode": before.get("mode")}
    elif op == "acquire" and state.tables.get(WANTS, {}).get(event.get("agent", "")):
        _drop_want(state, event["agent"], event["resource"])
    for recipient, extra in notices(state, event):
        _deliver(state, recipient, event["seq"], extra)
        if extra is not None and "wanted" in extra:
            _drop_want(state, recipient, extra["wanted"])


def _forget(state: State, agent: str) -> None:
    """An agent that left (not one registered again) leaves no inbox behind in the state:
    session agents come and go by the thousand. Its messages stay in the log."""
    for table in (TABLE, WANTS):
        found = state.tables.get(table)
        if found is not None and found.pop(agent, None) is not None and not found:
            del state.tables[table]


def _drop_want(state: State, agent: str, text: str) -> None:
    wants = state.tables.get(WANTS, {})
    want = wants.get(agent)
    if want is None:
        return
    left = [r for r in want["resources"] if r != text]
    if left:
        want["resources"] = left
    else:
        del wants[agent]
        if not wants:
            del state.tables[WANTS]


def _deliver(state: State, recipient: str, seq: int, extra: Any) -> None:
    box = state.tables.setdefault(TABLE, {}).setdefault(recipient, {"read": 0, "pending": []})
    pending = box["pending"]
    if pending and pending[-1][0] == seq:
        return  # one event, one message per recipient
    pending.append([seq, extra])
    cap = MAX_WATCH if recipient == WATCH else MAX_PENDING
    if len(pending) > cap:
        del pending[: len(pending) - cap]
        if recipient != WATCH:
            box["dropped"] = box.get("dropped", 0) + 1


def _acknowledge(state: State, event: Event) -> None:
    details = event.get("details") or {}
    upto = int(details.get("upto", 0))
    boxes = state.tables.setdefault(TABLE, {})
    if details.get("watch"):
        box = boxes.setdefault(WATCH, {"read": 0, "pending": []})
        readers = box.setdefault("readers", {})
        reader = details["reader"]
        readers[reader] = max(readers.get(reader, 0), upto)
        return
    box = boxes.get(details.get("reader") or event.get("agent", ""))
    if box is None:
        return
    box["read"] = max(box["read"], upto)
    box["pending"] = [p for p in box["pending"] if p[0] > upto]
    box.pop("dropped", None)


def unread(state: State, recipient: str, *, reader: str | None = None) -> list[list[Any]]:
    """``[seq, extra]`` of *recipient*'s unread messages, oldest first (for `WATCH`: those
    after *reader*'s cursor)."""
    box = state.tables.get(TABLE, {}).get(recipient)
    if box is None:
        return []
    cursor = box["read"] if recipient != WATCH else box.get("readers", {}).get(reader or "", 0)
    return [p for p in box["pending"] if p[0] > cursor]


# Rendering --------------------------------------------------------------------------------


def message(event: Event, extra: Any = None) -> dict[str, Any]:
    """One message as faces show it: ``seq``, ``at``, ``kind``, ``from``, ``text`` (and the
    event's details that matter for acting on it)."""
    op = event["op"]
    kind, sender, text, more = _RENDER.get(op, _render_other)(event, extra or {})
    out: dict[str, Any] = {"seq": event["seq"], "at": event["wall"], "kind": kind}
    out["from"] = sender
    out["text"] = text
    out.update(more)
    return out


def _render_message(event: Event, _extra: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    to = (event.get("details") or {}).get("to") or []
    about = (event.get("details") or {}).get("holder")
    more: dict[str, Any] = {"to": to}
    if about:
        more["holder_of"] = about
    return "message", event.get("by", "?"), event.get("note", ""), more


def _render_evict(event: Event, _extra: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    reason = event.get("reason", "?")
    by = event.get("by") or "dibs"
    resource = event.get("resource", "?")
    text = f"{event.get('agent')}'s claim on {resource} was evicted ({reason}, by {by})"
    if event.get("agent") and event["op"] == "auto-evict":
        text = f"{event['agent']}'s claim on {resource} was evicted: {_WHY.get(reason, reason)}"
    return "evicted", by, text, {"resource": resource, "reason": reason}


_WHY = {
    "expired": "no heartbeat renewed it within its ttl",
    "holder-dead": "its watched process is gone",
    "rebooted": "the machine rebooted",
    "replaced": "the agent was registered again",
    "stuck": "the agent made no progress for agents.stuck_after (agents.on_stuck = evict)",
}


def _render_landed(event: Event, _extra: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    value = event.get("value") or {}
    commit = str(value.get("commit") or "")[:12]
    text = f"{value.get('branch')} (issue {value.get('issue')}) landed on {value.get('target')}"
    text += f" as {commit}" if commit else ""
    return "landed", "queue", text, {"entry": value.get("id"), "issue": value.get("issue")}


def _render_land_fail(event: Event, _extra: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    value = event.get("value") or {}
    text = (
        f"{value.get('branch')} (issue {value.get('issue')}) failed to land: "
        f"{value.get('reason', 'no reason recorded')}"
    )
    if value.get("hint"):
        text += f" ({value['hint']})"
    more = {k: value[k] for k in ("id", "issue", "branch", "gate", "exit", "files") if k in value}
    if value.get("tail"):
        more["tail"] = value["tail"]
        text += "\n" + str(value["tail"])
    return "land-failed", "queue", text, more


def _render_stuck(event: Event, _extra: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    details = event.get("details") or {}
    idle = details.get("idle", 0)
    action = details.get("action", "notify")
    text = f"{event.get('agent')} is stuck: alive, but no progress for {round(idle)} s"
    if action == "evict":
        text += "; its claims are evicted (agents.on_stuck = evict)"
    else:
        text += " (any act of its own counts: a claim, a release, a commit, a guarded edit)"
    return "stuck", "dibs", text, {"agent": event.get("agent"), "idle": idle, "action": action}


def _render_plan(event: Event, extra: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    text = (
        f"the plan of {event.get('agent')} overlaps the plan of {extra.get('with')} "
        f"on {', '.join(extra.get('globs', []))}: agree who takes what (`dibs plan check`)"
    )
    by = (event.get("value") or {}).get("by") or event.get("agent") or "?"
    return "plan-overlap", by, text, {"plan_of": event.get("agent"), "with": extra.get("with")}


def _render_free(event: Event, extra: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    wanted = extra.get("wanted", event.get("resource"))
    text = f"{wanted}, which you gave up waiting for, is free now ({event['op']} of "
    text += f"{event.get('resource')} by {event.get('agent')}): claim it if you still want it"
    return "free", "dibs", text, {"resource": wanted}


def _render_other(event: Event, _extra: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
    return event["op"], "dibs", f"{event['op']} {event.get('resource', '')}".strip(), {}


_RENDER = {
    "message": _render_message,
    "auto-evict": _render_evict,
    "force-evict": _render_evict,
    "land-done": _render_landed,
    "land-fail": _render_land_fail,
    "stuck": _render_stuck,
    "plan-add": _render_plan,
}


def render(event: Event, extra: Any) -> dict[str, Any]:
    """`message`, except that a freeing event seen through a gave-up wait says so."""
    if extra is not None and "wanted" in extra:
        kind, sender, text, more = _render_free(event, extra)
        return {
            "seq": event["seq"],
            "at": event["wall"],
            "kind": kind,
            "from": sender,
            "text": text,
            **more,
        }
    return message(event, extra)
