"""An in-memory store: the whole contract, no disk. For tests and for embedding dibs.

It keeps the log as encoded lines and applies the decoded lines, exactly as the local store
does, so a value that would not survive the disk does not survive here either.
"""

from __future__ import annotations

import _thread

from dibs.core.events import decode, encode
from dibs.core.state import State, apply, seal
from dibs.ground import host

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from dibs.core.events import Event
    from dibs.core.leases import Decision
    from dibs.ground.now import Now
    from dibs.store.base import Clock, DecideFn, Finding


class MemoryStore:
    """A store that lives in this process only; thread-safe."""

    url = "memory:"

    def __init__(self, clock: Clock | None = None):
        self.clock: Clock = clock if clock is not None else host.now
        self._state = State()
        self._lines: list[bytes] = []
        self._lock = _thread.allocate_lock()

    def create(self) -> None:
        """Nothing to create."""

    def transact(
        self,
        decide: DecideFn,
        *,
        footprint: Sequence[str] | None = None,  # noqa: ARG002 -- decided on a current state
    ) -> Decision:
        """Decide and apply atomically (see `dibs.store.base.Store.transact`)."""
        with self._lock:
            decision = decide(self._state, self.clock())
            lines = [encode(e) for e in seal(decision.events, self._state.seq)]
            self._lines.extend(lines)
            for line in lines:
                apply(self._state, decode(line))
            return decision

    def read(self) -> tuple[State, Now]:
        """The live state and the time (do not change it)."""
        return self._state, self.clock()

    def events(self, since: int = 0) -> Iterator[Event]:
        """Events after *since*."""
        for line in self._lines[since:]:
            yield decode(line)

    def tail(self, count: int) -> list[Event]:
        """The last *count* events."""
        return [decode(line) for line in self._lines[-count:]] if count > 0 else []

    def check(self, *, repair: bool = False) -> list[Finding]:
        """Replay the log from scratch and compare with the live state."""
        rebuilt = State()
        for line in self._lines:
            apply(rebuilt, decode(line))
        if rebuilt.to_json() == self._state.to_json():
            return []
        if repair:
            self._state = rebuilt
        return [
            {
                "kind": "state-differs",
                "message": "the live state differs from a replay of the log",
                "repair": "replace the live state with the replay",
                "repaired": repair,
            }
        ]

    def close(self) -> None:
        """Nothing to release."""
