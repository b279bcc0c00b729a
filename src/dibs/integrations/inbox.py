"""The swarm hears itself: send to inboxes, read them (acknowledging), push them to hosts,
note progress and list stuck agents.

What reaches an inbox is decided in `dibs.core.inbox` from the log's own events (evictions,
landings, gave-up waits, plan overlaps, stuck agents) and from ``message`` events written
here by `send`. Reading returns the unread messages in log order and, unless peeking, writes
one ``inbox-read`` event that moves the reader's cursor past them: a reader killed before
that event gets the same messages again. Only the agent itself (its token) reads and
acknowledges its inbox, or a person with the explicit override (``--as-operator``), logged as
``by: user@host``; a message is logged with its verified sender.
"""

from __future__ import annotations

import time

from dibs.core import inbox as box
from dibs.core.events import new_event
from dibs.core.leases import Decision, eviction_reason, idle_for, stuck_for
from dibs.core.resources import parse_resource
from dibs.ground.errors import DibsError, NotFound, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.ground.now import Now
    from dibs.service import Coordinator

#: The longest message `send` accepts (characters).
MAX_MESSAGE = 4000
#: Recipients one `send` may name.
MAX_RECIPIENTS = 256
#: Messages one read returns at most (the rest stay unread for the next).
MAX_READ = 1000
#: A guarded edit or commit is written down as progress at most this often per agent
#: (seconds; half of ``agents.stuck_after`` when that is shorter): it keeps a busy agent
#: from counting as stuck without a write per edit.
PROGRESS_EVERY = 60.0


def check_message(text: Any) -> str:
    """A message's text: a non-empty UTF-8 string of at most `MAX_MESSAGE` characters."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError("the message is empty", hint="say something: dibs send AGENT 'TEXT'")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            "the message is not UTF-8 text; nothing was sent",
            hint="pass UTF-8 text (check the terminal's or the caller's encoding)",
        ) from None
    if len(text) > MAX_MESSAGE:
        raise UsageError(
            f"the message is {len(text)} characters long; at most {MAX_MESSAGE} are sent",
            hint="shorten it, or point to a file or an issue",
        )
    return text


# Sending ----------------------------------------------------------------------------------


def send(
    coord: Coordinator,
    text: str,
    *,
    to: list[str] | None = None,
    everyone: bool = False,
    holder: str | None = None,
) -> dict[str, Any]:
    """Send *text* to agents *to*, to every registered agent (*everyone*), or to whoever
    holds a live claim overlapping resource *holder* (a glob reaches the holders of every
    path it meets). The sender is the verified agent (its token) when one is set, else the
    person running this (``user@host``).

    Raises:
        UsageError: bad text, names or resource, or no recipients named.
        NotFound: a named agent is not registered, or nobody holds *holder*.
        AuthError: an agent is set but its token is missing or wrong.
    """
    from dibs.service.checks import check_agent_name

    text = check_message(text)
    names = [check_agent_name(name) for name in dict.fromkeys(to or [])]
    if len(names) > MAX_RECIPIENTS:
        raise UsageError(f"{len(names)} recipients; at most {MAX_RECIPIENTS}", hint="use --all")
    wanted = parse_resource(holder) if holder is not None else None
    if not names and not everyone and wanted is None:
        raise UsageError("send to whom?", hint="name agents, or pass --all or --holder RESOURCE")
    if coord.agent is not None:
        from dibs.service.identity import require

        require(coord.agent, coord.token)

    def decide(state: State, ctx: Context) -> Decision:
        from dibs.service.identity import operator, verify

        try:
            sender = verify(state, coord.agent, coord.token)["name"] if coord.agent else None
        except DibsError as exc:
            return Decision(error=exc)
        unknown = [name for name in names if name not in state.agents]
        if unknown:
            return Decision(
                error=NotFound(
                    f"no agent named {', '.join(map(repr, unknown))} is registered",
                    hint="see the agents with `dibs agents`",
                )
            )
        recipients = list(names)
        if wanted is not None:
            holders = sorted(
                {
                    lease["agent"]
                    for lease in state.overlapping(wanted)
                    if eviction_reason(state, lease, ctx) is None
                }
            )
            if not holders and not names and not everyone:
                return Decision(
                    error=NotFound(
                        f"nobody holds {wanted.text} (or anything it overlaps)",
                        hint="see the live claims with `dibs claims`",
                    )
                )
            recipients += [h for h in holders if h not in recipients]
        if everyone:
            recipients = ["*"]
        details: dict[str, Any] = {"to": recipients}
        if wanted is not None:
            details["holder"] = wanted.text
        event = new_event(
            "message",
            ctx.now,
            agent=sender,
            by=sender or operator(),
            note=text,
            details=details,
        )
        reached = sorted(n for n in state.agents if n != sender) if everyone else recipients
        return Decision([event], result={"from": event["by"], "to": reached})

    decision = coord.transact(decide)
    result: dict[str, Any] = dict(decision.result)
    result["seq"] = decision.events[0]["seq"]
    return result


# Reading ----------------------------------------------------------------------------------


class _Reader:
    """Whose inbox is read, and by whom: (recipient, cursor key, agent to log, by)."""

    __slots__ = ("agent", "by", "reader", "recipient")

    def __init__(self, recipient: str, reader: str, agent: str | None, by: str):
        self.recipient = recipient
        self.reader = reader
        self.agent = agent
        self.by = by


def _reader(state: State, coord: Coordinator, *, watch: bool, as_operator: bool) -> _Reader:
    """The verified reader: the agent itself by its token, or a person with the override
    (naming the agent with ``--agent``); for *watch*, any verified agent or person."""
    from dibs.service.identity import OPERATOR_FLAG, operator, verify

    if watch:
        if coord.agent is not None and not as_operator:
            name = verify(state, coord.agent, coord.token)["name"]
            return _Reader(box.WATCH, name, name, name)
        person = operator()
        return _Reader(box.WATCH, person, None, person)
    if as_operator:
        if not coord.agent:
            raise UsageError(
                "whose inbox? name the agent", hint=f"dibs inbox --agent NAME {OPERATOR_FLAG}"
            )
        from dibs.service.checks import check_agent_name

        name = check_agent_name(coord.agent)
        return _Reader(name, name, name, operator())
    name = verify(state, coord.agent, coord.token)["name"]
    return _Reader(name, name, name, name)


def read(
    coord: Coordinator,
    *,
    peek: bool = False,
    limit: int | None = None,
    watch: bool = False,
    as_operator: bool = False,
) -> dict[str, Any]:
    """The unread messages of the acting agent's inbox (or, with *watch*, of the watchers'
    stream), oldest first; unless *peek*, acknowledged: the reader's cursor moves past them.

    Returns:
        ``{"inbox", "messages", "unread", "dropped"}``: *unread* counts what is left
        unread after this read (past *limit*); *dropped*, messages an overfull inbox lost.
    """
    from dibs.service.checks import check_number

    if limit is not None:
        check_number(limit, "limit", low=1, high=MAX_READ, whole=True)
    state, _now = coord.read()
    who = _reader(state, coord, watch=watch, as_operator=as_operator)
    pending = box.unread(state, who.recipient, reader=who.reader)
    taken = pending[: limit or MAX_READ]
    dropped = int(state.tables.get(box.TABLE, {}).get(who.recipient, {}).get("dropped", 0))
    messages = _render(coord, taken)
    if taken and not peek:
        _acknowledge(coord, who, taken[-1][0], as_operator=as_operator)
    return {
        "inbox": who.recipient,
        "reader": who.reader,
        "messages": messages,
        "unread": len(pending) - len(taken),
        "dropped": dropped,
    }


def _render(coord: Coordinator, taken: list[list[Any]]) -> list[dict[str, Any]]:
    """The messages of *taken* (``[seq, extra]``), read from the log in one range."""
    if not taken:
        return []
    first, last = taken[0][0], taken[-1][0]
    found = {e["seq"]: e for e in coord.events(since=first - 1, limit=last - first + 1)}
    out = []
    for seq, extra in taken:
        event = found.get(seq)
        if event is not None:  # archived away: nothing left to say
            out.append(box.render(event, extra))
    return out


def _acknowledge(coord: Coordinator, who: _Reader, upto: int, *, as_operator: bool) -> None:
    """Move *who*'s cursor to *upto* (checked again in the same step as the write)."""

    def decide(state: State, ctx: Context) -> Decision:
        try:
            again = _reader(state, coord, watch=who.recipient == box.WATCH, as_operator=as_operator)
        except DibsError as exc:
            return Decision(error=exc)
        details: dict[str, Any] = {"upto": upto, "reader": again.reader}
        if again.recipient == box.WATCH:
            details["watch"] = True
        event = new_event("inbox-read", ctx.now, agent=again.agent, by=again.by, details=details)
        return Decision([event])

    # It reads only the reader's own record and names the last message read: it commutes
    # with what others write meanwhile (see dibs.store.postgres.commuting).
    coord.transact(decide, footprint=[])


def follow(
    coord: Coordinator,
    *,
    peek: bool = False,
    watch: bool = False,
    as_operator: bool = False,
    poll: float = 0.5,
) -> Iterator[dict[str, Any]]:
    """Yield messages as they arrive, forever, acknowledging each batch (unless *peek*:
    then each is yielded once by this call, and stays unread)."""
    seen = 0
    while True:
        found = read(coord, peek=True, watch=watch, as_operator=as_operator)
        fresh = [m for m in found["messages"] if m["seq"] > seen]
        yield from fresh
        if fresh:
            seen = fresh[-1]["seq"]
            if not peek:
                state, _ = coord.read()
                who = _reader(state, coord, watch=watch, as_operator=as_operator)
                _acknowledge(coord, who, seen, as_operator=as_operator)
        time.sleep(poll)


def push(coord: Coordinator, agent: str | None, token: str | None) -> str:
    """The unread messages of *agent* (verified by *token*) as one text for a host to put in
    the model's context, acknowledged; empty when there are none (or no verified agent).

    Cheap when the inbox is empty: one state read, no write.
    """
    from dibs.service.identity import verified

    state, _ = coord.read()
    name = verified(state, agent, token)
    if name is None or not box.unread(state, name):
        return ""
    before = coord.agent, coord.token
    coord.agent, coord.token = name, token
    try:
        found = read(coord, limit=20)
    finally:
        coord.agent, coord.token = before
    return render_text(found)


def render_text(found: dict[str, Any]) -> str:
    """Messages as text for people and models (`dibs inbox`, hooks)."""
    messages = found["messages"]
    if not messages:
        return ""
    lines = [f"dibs inbox of {found['inbox']}: {len(messages)} new"]
    for m in messages:
        text = str(m["text"]).replace("\n", "\n    ")
        lines.append(f"- [{m['kind']}] from {m['from']}: {text}")
    if found.get("unread"):
        lines.append(f"({found['unread']} more unread: run `dibs inbox`)")
    if found.get("dropped"):
        lines.append(f"({found['dropped']} older messages were dropped: the inbox was full)")
    return "\n".join(lines)


# Stuck agents and progress ----------------------------------------------------------------


def depths(state: State) -> dict[str, int]:
    """Unread messages per agent inbox (the watchers' stream left out)."""
    return {
        name: len(b["pending"])
        for name, b in sorted(state.tables.get(box.TABLE, {}).items())
        if name != box.WATCH and b["pending"]
    }


def stuck(coord: Coordinator) -> list[dict[str, Any]]:
    """Agents that are stuck now: ``{"agent", "idle"}`` (seconds without progress)."""
    state, now = coord.read()
    ctx = coord.context(now)
    out = []
    for name in sorted(state.agents):
        idle = stuck_for(state.agents[name], ctx)
        if idle is not None:
            out.append({"agent": name, "idle": round(idle, 3)})
    return out


def note_progress(coord: Coordinator, state: State, now: Now, agent: str, what: str) -> None:
    """Write a ``progress`` event for *agent* (a guarded edit, a commit) unless one was
    written within `PROGRESS_EVERY` seconds: a busy agent is never stuck, at the cost of
    at most one write a minute. Never fails the caller."""
    import contextlib

    record = state.agents.get(agent)
    stuck_after = float(coord.settings["agents.stuck_after"])
    if record is None or not stuck_after:
        return
    idle = idle_for(record, now)
    if idle is not None and idle < min(PROGRESS_EVERY, stuck_after / 2):
        return

    def decide(_state: State, ctx: Context) -> Decision:
        return Decision([new_event("progress", ctx.now, agent=agent, reason=what)])

    with contextlib.suppress(DibsError):
        coord.transact(decide)
