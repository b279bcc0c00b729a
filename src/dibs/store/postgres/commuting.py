"""Claims and releases that commute: appended whatever was written since the client's state.

A claim or release decided on a cached state that others have written past since is still
the decision the rules would make on the state as it is now, when nothing written meanwhile
touches what the decision read: the agent's own record, and the leases that may overlap the
resources it names. ``dibs.append_commuting`` checks exactly that under the namespace lock,
in the one statement that appends, and moves the decision's events up past what was written
meanwhile (their seq, and each new fencing token). No client round trip happens under the
lock, so writers of different resources no longer queue behind each other's round trips.

Only a caller that knows its decision reads nothing else may ask for this: the coordinator
does it for a plain claim (no ``--wait``) and a release (``footprint``, the resources the
command names, on ``Store.transact``); everything else is decided as before.
docs/explanation/postgres.md ("Writes that commute") gives the argument; with
``DIBS_VERIFY_COMMUTING=1`` (the test suite sets it) the store decides again on the
caught-up state after every commuting append and fails loudly when the answers differ.

Pure: no I/O. The store calls these around the same `dibs.core` decisions as every store.
"""

from __future__ import annotations

from dibs.core.events import encode
from dibs.core.resources import scope
from dibs.core.state import ttl_ns
from dibs.ground.errors import Conflict
from dibs.store.postgres import wake

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

    from dibs.core.events import Event
    from dibs.core.leases import Decision

#: The only ops a commuting decision may write (anything else reads more of the state):
#: a grant or a release, an acknowledgement of read messages (it names the last one read,
#: so messages that arrive meanwhile stay unread), or the record of a refused claim.
OPS = frozenset(("acquire", "release", "inbox-read"))
REFUSED = frozenset(("refuse",))
#: Ops that, written by another agent meanwhile, leave a plain claim or release decided
#: before them as it was (besides the check of their resource's scope): they change only
#: leases (scope-checked), an integration's tables (which such a decision never reads), or
#: nothing; and at most the progress of their agent, which only makes it less stuck.
HARMLESS = frozenset(
    (
        "acquire",
        "release",
        "refuse",
        "auto-evict",
        "force-evict",
        "record",
        "message",
        "inbox-read",
        "progress",
        "wait",
        "wait-end",
        "plan-add",
        "plan-drop",
        "plan-commit",
        "limit-set",
        "limit-update",
        "limit-take",
        "doc-write",
        "archive",
        "land-enqueue",
        "land-start",
        "land-done",
        "land-fail",
        "land-cancel",
        "landed",
        "gate",
        "outbox",
        "agent-roles",
        "worktree-adopt",
    )
)
#: Ops that clash with any commuting decision decided before them: a stale agent seen alive
#: again (``register``, ``heartbeat``, ``renew``) can make a stuck notice fall due; an agent
#: gone (``unregister``) frees leases without naming them; ``stuck`` and ``log-repair``
#: are rare. Every op is in exactly one of the two sets (tests/unit/test_commuting.py).
CLASHING = frozenset(("register", "unregister", "heartbeat", "renew", "stuck", "log-repair"))
_HARMLESS = sorted(HARMLESS)

#: Placeholders in a body template (``dibs.append_commuting``): JSON escapes control
#: characters inside strings, so these bytes never appear unescaped in an encoded event.
SEQ, TOKEN, TXN = "\x01", "\x02", "\x03"
_QUOTED = {mark: '"\\u000' + str(ord(mark)) + '"' for mark in (SEQ, TOKEN, TXN)}


def mover(decision: Decision) -> str | None:
    """The agent whose claim or release *decision* is, when it may commute; else None.

    It may when it writes only ``acquire`` and ``release`` events of one agent and was not
    refused, or when it was refused as a conflict and writes only that claim's ``refuse``
    event: evictions, renewals, stuck notices and waits read more than that agent's record
    and the leases on the resources it names.
    """
    events = decision.events
    if not events:
        return None
    if decision.error is None:
        allowed = OPS
    elif isinstance(decision.error, Conflict):
        allowed = REFUSED
    else:
        return None
    agent = events[0].get("agent")
    if not isinstance(agent, str):
        return None
    for event in events:
        if event["op"] not in allowed or event.get("agent") != agent:
            return None
    return agent


def templates(events: list[Event]) -> list[str] | None:
    """Each event's JSON line with placeholders where the server writes the final numbers
    (`SEQ`, `TOKEN` for an acquire's new token, `TXN` for a transaction's first seq); None
    when a placeholder would not be found exactly once (some text of the event spells one)."""
    out = []
    for event in events:
        marked: dict[str, Any] = dict(event)
        marks = [SEQ]
        marked["seq"] = SEQ
        if event["op"] == "acquire":
            marked["token"] = TOKEN
            marks.append(TOKEN)
        if "txn" in event:
            marked["txn"] = [TXN, event["txn"][1]]
            marks.append(TXN)
        text = encode(marked)[:-1].decode()  # type: ignore[arg-type]
        for mark in marks:
            quoted = _QUOTED[mark]
            if text.count(quoted) != 1:
                return None
            text = text.replace(quoted, mark)
        out.append(text)
    return out


def params(
    decision: Decision, events: list[Event], footprint: Sequence[str]
) -> dict[str, Any] | None:
    """What ``dibs.append_commuting`` needs of *decision* (its *events* sealed after the
    cached state; *footprint*, the resources it read), besides where the cache stands; None
    when it may not commute. A refused claim's event names only the first resource blocked,
    yet it read every one it asked for: the scopes are those of both."""
    agent = mover(decision)
    bodies = templates(events) if agent is not None else None
    if bodies is None:
        return None
    mono = events[0]["mono"]
    resources = [event.get("resource") for event in events]
    named = [text for text in resources if text is not None]
    if len(set(named)) != len(named):
        return None  # the server changes each resource's dibs.live row once per statement
    scopes = [scope(text) for text in resources]
    if any(event["mono"] != mono for event in events):
        return None  # one decision, one time: never otherwise, but the server assumes it
    return {
        "mover": agent,
        "mono": mono,
        "notify": any(event["op"] == "release" for event in events),
        "wake": wake.suffix(events),
        "ops": [event["op"] for event in events],
        "resources": resources,
        "tokens": [event.get("token") for event in events],
        "ttls": [ttl_ns(event["ttl"]) if "ttl" in event else None for event in events],
        "templates": bodies,
        "scopes": scopes,
        **probe({scope(text) for text in footprint}.union(scopes)),
        "harmless": _HARMLESS,
    }


def probe(reads: Iterable[str | None]) -> dict[str, Any]:
    """The arrays ``dibs.scope_clashes`` tests a scope against, for the scopes a decision
    read: the scopes (``reads``), the folders above its path scopes (``above``), LIKE patterns
    for what lies beneath them (``below``) and whether one is every path (``root``). Together
    they answer `dibs.core.resources.scopes_may_overlap` against each, with array operators
    only (tests/integration/test_postgres_commuting.py compares the two)."""
    texts = sorted({text for text in reads if text is not None})
    above: set[str] = set()
    below: list[str] = []
    for text in texts:
        if not text.startswith("path:") or text == "path:":
            continue
        parts = text[5:].split("/")
        above.update("path:" + "/".join(parts[:i]) for i in range(1, len(parts)))
        below.append(_like_literal(text) + "/%")
    return {"reads": texts, "above": sorted(above), "below": below, "root": "path:" in texts}


def _like_literal(text: str) -> str:
    """*text* as a LIKE pattern matching itself (backslash is LIKE's escape character)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def shift(decision: Decision, events: list[Event], moved: int, lifted: int) -> None:
    """Move *events* (the decision's, sealed) up by *moved* seqs and each new token by
    *lifted*, as the server wrote them, and tell the caller the tokens it now holds."""
    if moved or lifted:
        adopt_tokens(decision, moved_up(events, moved, lifted))


def moved_up(events: list[Event], moved: int, lifted: int) -> dict[str, int]:
    """Move *events* up in place (see `shift`); returns each acquired resource's token."""
    tokens: dict[str, int] = {}
    for event in events:
        event["seq"] += moved
        if "txn" in event:
            event["txn"] = [event["txn"][0] + moved, event["txn"][1]]
        if event["op"] == "acquire":
            event["token"] += lifted
            tokens[event["resource"]] = event["token"]
    return tokens


def adopt(decision: Decision, events: list[Event], recorded: list[Event]) -> None:
    """Replace *events* (the decision's) by the ones the log *recorded* for them (a lost
    answer settled afterwards: they may have been moved up)."""
    tokens: dict[str, int] = {}
    for event, found in zip(events, recorded, strict=True):
        record: dict[str, Any] = event  # type: ignore[assignment]
        record.clear()
        record.update(found)
        if event["op"] == "acquire":
            tokens[event["resource"]] = event["token"]
    adopt_tokens(decision, tokens)


def adopt_tokens(decision: Decision, tokens: dict[str, int]) -> None:
    """Give the claim's result (its new leases) the fencing *tokens* the log recorded."""
    if not tokens or not isinstance(decision.result, list):
        return
    for item in decision.result:
        if isinstance(item, dict) and item.get("new") and item.get("resource") in tokens:
            item["token"] = tokens[item["resource"]]
