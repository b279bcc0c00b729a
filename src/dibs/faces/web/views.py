"""``/api/state`` as JSON text, kept cheap for a page a team leaves open on a busy swarm.

With 10,000 live claims most of the work of one look is the same as the last one's: sorting
the claims, building each claim's view and encoding it as JSON. Only ``expires_in`` changes
with the time; everything else changes only when the log grows. So `StatePage` keeps, per log
seq, each lease in resource order with its view already encoded up to ``expires_in``, and a
look decides which leases still hold (`dibs.core.leases.eviction_reason`, the rule itself, on
every look, as `dibs.service.views.split_leases` does) and writes the seconds left into the
kept text (``%.3f``: half the cost of ``round`` and ``repr`` over 10,000 floats).
"""

from __future__ import annotations

import json
import threading

from dibs.core.leases import eviction_reason
from dibs.core.state import NS
from dibs.core.tables import WORKTREES
from dibs.service.views import lease_view, ordered_leases, status_view

TYPE_CHECKING = False
if TYPE_CHECKING:
    from dibs.core.state import LeaseRecord, State
    from dibs.ground.now import Now
    from dibs.service import Coordinator


class StatePage:
    """``/api/state`` of one coordinator: agents, claims, queue, pool, worktrees, summary."""

    def __init__(self, coord: Coordinator):
        self.coord = coord
        self.store_url = coord.store.url  # shown on the page; the store is read through coord
        self._lock = threading.Lock()
        self._seq = -1
        self._rows: list[tuple[LeaseRecord, str]] = []
        self._heads: dict[tuple[str, int, float, str | None], str] = {}

    def _kept(self, state: State, now: Now) -> list[tuple[LeaseRecord, str]]:
        """Each lease in resource order with its view encoded up to ``expires_in``, made
        again when the log grew.

        Leases are records of the state the store keeps; an event that changes one (a renew)
        grows the log, so the seq says when the order is out of date. What a lease's text
        shows changes only with its token, ttl or note, so a busy log (a new seq at every look)
        encodes only the leases that are new since the last look.
        """
        with self._lock:
            if state.seq != self._seq:
                heads, known = {}, self._heads
                rows = []
                for lease in ordered_leases(state):
                    key = (lease["resource"], lease["token"], lease["ttl"], lease.get("note"))
                    head = known.get(key)
                    if head is None:
                        head = _head(lease, now)
                    heads[key] = head
                    rows.append((lease, head))
                self._rows, self._heads, self._seq = rows, heads, state.seq
            return self._rows

    def json(self) -> bytes:
        """The page's state as UTF-8 JSON."""
        state, now = self.coord.read()
        ctx = self.coord.context(now)
        live: list[LeaseRecord] = []
        stale: list[tuple[LeaseRecord, str]] = []
        claims: list[str] = []
        mono = now.mono
        for lease, head in self._kept(state, now):
            reason = eviction_reason(state, lease, ctx)
            if reason is not None:
                stale.append((lease, reason))
            else:
                live.append(lease)  # it holds: same boot, not expired, so the seconds are > 0
                claims.append("%s%.3f}" % (head, (lease["expires"] - mono) / NS))  # noqa: UP031
        view = status_view(state, ctx, self.store_url, live, stale, claims=False)
        view["worktrees"] = [
            {"path": path, **record}
            for path, record in sorted(state.tables.get(WORKTREES, {}).items())
        ]
        view["now"] = now.iso()
        text = json.dumps(view, separators=(",", ":"))
        return f'{text[:-1]},"claims":[{",".join(claims)}]}}'.encode()


def _head(lease: LeaseRecord, now: Now) -> str:
    """*lease*'s view as JSON without its closing brace, ending in ``"expires_in":``."""
    view = {k: v for k, v in lease_view(lease, now).items() if k != "expires_in"}
    return json.dumps(view, separators=(",", ":"))[:-1] + ',"expires_in":'
