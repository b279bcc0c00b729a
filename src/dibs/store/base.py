"""The store protocol: the small seam between the rules and the disk (or the database).

A store does I/O only. It keeps the log and a current `State`, and offers one atomic step:
`Store.transact` brings the state up to date, reads the one clock that decides, calls the
decision function, appends the decision's events durably, and only then applies them. Every
store runs the same `dibs.core` code inside that step, so no store can bend a rule.

Stores shipped: `dibs.store.memory.MemoryStore` (a real fake, for tests and embedding),
`dibs.store.local.LocalStore` (the default: JSONL log + flock in the git common dir),
`dibs.store.postgres.PostgresStore` (agents on several machines; needs psycopg).

A store may also offer ``wait_for_change(timeout, scopes) -> bool`` (`Waiter`): block until
something that may overlap what the caller waits for may have been released since its last
decision. ``Coordinator.claim(wait=...)`` uses it between tries when present (PostgreSQL:
LISTEN/NOTIFY) and sleeps with backoff otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NotRequired, Protocol, TypedDict

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from dibs.core.events import Event
    from dibs.core.leases import Decision
    from dibs.core.state import State
    from dibs.ground.now import Now

    #: A decision function: given the current state and the time, what to do.
    DecideFn = Callable[[State, Now], Decision]


class Clock(Protocol):
    """Where a store reads the time that decides expiry."""

    def __call__(self) -> Now: ...


class Finding(TypedDict):
    """One thing a check found: what, what ``--repair`` does (or what a person must do)."""

    kind: str
    message: str
    repair: str
    repaired: bool
    repairable: NotRequired[bool]  # False: --repair cannot mend it; `repair` says who can


class Store(Protocol):
    """What every store offers. The contract suite in ``tests/contract`` holds each to it."""

    #: Where the store lives, for people (``local:/repo/.git/dibs``, ``memory:``, ...).
    url: str

    def create(self) -> None:
        """Make the store ready for use (folders, files, schema); safe to call again."""
        ...

    def transact(self, decide: DecideFn, *, footprint: Sequence[str] | None = None) -> Decision:
        """Atomically: catch up, read the clock, decide, append + sync, then apply.

        *footprint*: the caller vouches that *decide* is a plain claim or release that reads
        only its agent's record and the leases that may overlap these resources (and the
        ones its events name); a store may then append it past unrelated writes made since
        its cached state (the PostgreSQL store does; the others, which decide under their
        lock, ignore it). None (the default): *decide* may read anything.

        The decision's events get their ``seq`` here. When appending fails nothing is applied
        and `dibs.ground.errors.StoreIOError` is raised. A refused decision is returned, not raised:
        its events (evictions made on the way) are appended all the same.
        """
        ...

    def read(self) -> tuple[State, Now]:
        """The current state and the time, for queries. Do not keep or change the state."""
        ...

    def events(self, since: int = 0) -> Iterator[Event]:
        """Events with ``seq`` greater than *since*, oldest first."""
        ...

    def tail(self, count: int) -> list[Event]:
        """The last *count* events, oldest first."""
        ...

    def check(self, *, repair: bool = False) -> list[Finding]:
        """Verify the log and the cached state; with *repair*, mend what can be mended."""
        ...

    def close(self) -> None:
        """Release files, connections and locks."""
        ...


class Waiter(Protocol):
    """The optional hook of a store that can tell waiters when something was released."""

    def wait_for_change(self, timeout: float, scopes: Sequence[str] | None = None) -> bool:
        """Block until something may have been released since the last decision, or until
        *timeout* seconds passed; True when woken by a release. With *scopes*
        (`dibs.core.resources.scope` of the resources waited for), a store may leave out
        releases that cannot overlap any of them."""
        ...
