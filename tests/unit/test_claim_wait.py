"""How `Coordinator.claim(wait=...)` waits on a store that can wake it (`Waiter`): what it
asks the store to wait for, and for how long."""

from __future__ import annotations

from collections.abc import Sequence

from dibs.service import Coordinator
from dibs.store.memory import MemoryStore
from tests.conftest import FakeClock


class WakingStore(MemoryStore):
    """A store with ``wait_for_change`` that records each wait and lets that much time pass
    on the deciding clock, as a wait nobody woke would."""

    def __init__(self, clock: FakeClock):
        super().__init__(clock=clock)
        self.fake = clock
        self.waits: list[tuple[float, list[str] | None]] = []

    def wait_for_change(self, timeout: float, scopes: Sequence[str] | None = None) -> bool:
        self.waits.append((timeout, None if scopes is None else list(scopes)))
        self.fake.advance(timeout)
        return False


def test_a_wait_names_what_it_waits_for_and_looks_again_when_the_blocker_expires(
    clock: FakeClock,
) -> None:
    """The store hears the scopes of the claimed resources (a path: its folder), and a lease
    that runs out (nobody releases it, so nothing wakes the waiter) is looked at again just
    after its expiry, not at the next 5 s poll."""
    store = WakingStore(clock)
    holder, waiter = Coordinator(store), Coordinator(store)
    holder.register("holder", ttl=60)
    waiter.register("waiter", ttl=60)
    holder.claim(["path:src/app/**"], ttl=2)
    granted = waiter.claim(["path:src/app/x.py", "issue:1"], wait=30)
    assert ["waiter", "waiter"] == [lease["agent"] for lease in granted]
    [(timeout, scopes)] = store.waits
    assert 2.0 <= timeout < 2.5
    assert ["path:src/app/x.py", "issue:1"] == scopes
