"""Which releases wake which waiters: the payload of a release's notification, and its reading.

Every write that frees a lease sends ``NOTIFY dibs`` with the payload ``namespace:seq``
(the seq of its last event), and from schema 6 on, when it knows them, ``:`` and a JSON
array of the scopes of the resources it freed (`dibs.core.resources.scope`). A waiting
claim (`dibs.store.postgres.listen`) wakes only for a release in its namespace whose scopes
may overlap one of its own, or for one that names none (an agent unregistered, freeing
leases the event does not list; a payload too long to carry them). Scopes never claim less
than `dibs.core.resources.overlaps`, so no release that could let a waiter in is passed over;
one that could not is, and the waiter does not read the log, decide again and listen anew
for it, as it did for every release in the namespace before.

Pure: no I/O.
"""

from __future__ import annotations

import json

from dibs.core.resources import scope, scopes_may_overlap

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from dibs.core.events import Event

#: Ops that free leases: a waiter may get in after one (``unregister`` names no resource).
FREEING = frozenset(("release", "auto-evict", "force-evict", "unregister"))

#: A payload must stay under PostgreSQL's 8,000 bytes; one longer than this goes without
#: scopes, and then wakes every waiter.
_MOST = 7000


def _freed(events: Iterable[Event]) -> set[str] | None:
    """The scopes of what *events* free; None when one frees leases it does not name."""
    freed: set[str] = set()
    for event in events:
        if event["op"] in FREEING:
            text = scope(event.get("resource"))
            if text is None:
                return None
            freed.add(text)
    return freed


def _overlap(freed: Iterable[str], wanted: Sequence[str]) -> bool:
    return any(scopes_may_overlap(a, b) for a in freed for b in wanted)


def suffix(events: Iterable[Event]) -> str:
    """What follows ``namespace:seq`` in the notification of a write of *events*: ``:`` and
    the scopes of what they free, or '' (wake every waiter) when one frees leases it does
    not name or the list would be too long."""
    freed = _freed(events)
    if not freed:
        return ""
    out = ":" + json.dumps(sorted(freed), ensure_ascii=False, separators=(",", ":"))
    return out if len(out.encode()) <= _MOST else ""


def wakes(payload: str, namespace: str, wanted: Sequence[str] | None) -> bool:
    """Whether a notification with *payload* may let a waiter for the scopes *wanted*
    (None: anything) in, in *namespace*. A payload it cannot read wakes it."""
    head = namespace + ":"
    if not payload.startswith(head):
        return False
    if wanted is None:
        return True
    _seq, colon, listed = payload[len(head) :].partition(":")
    if not colon:
        return True
    try:
        freed = json.loads(listed)
    except ValueError:
        return True
    if not isinstance(freed, list) or not all(isinstance(text, str) for text in freed):
        return True
    return _overlap(freed, wanted)


def frees_for(events: Iterable[Event], wanted: Sequence[str] | None) -> bool:
    """Whether any of *events* (read from the log) may let a waiter for *wanted* in."""
    freed = _freed(events)
    if freed is None:
        return True
    return bool(freed) and (wanted is None or _overlap(freed, wanted))
