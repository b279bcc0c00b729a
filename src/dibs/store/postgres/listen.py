"""Waiting for a release: LISTEN/NOTIFY, for `dibs claim --wait` (`dibs.store.base.Waiter`)."""

from __future__ import annotations

import select
import time

import psycopg

from dibs.store.postgres.admin import Admin
from dibs.store.postgres.connection import (
    _FREEING,
    _PING_EVERY,
    Q,
    _one,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Listening(Admin):
    """A session that can wait for a release in its namespace."""

    def _unlisten(self, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.execute(Q["unlisten"])
        except psycopg.Error as exc:
            raise self._translate(conn, exc, None) from exc
        self._listening = False

    # Waiting ----------------------------------------------------------------------------

    def wait_for_change(self, timeout: float) -> bool:
        """Block until something may have been released since the last decision, or *timeout*.

        Listens for the NOTIFY that releasing decisions send, after checking the log for
        releases that came before the LISTEN took effect. True when woken by a release.
        """

        def wait(conn: psycopg.Connection[Any]) -> bool:
            state = self._state if self._state is not None else self._load(conn)
            self._notes = 0  # earlier ones are in the log the catch-up below reads
            with conn.pipeline() as pipeline:
                if not self._listening:
                    # LISTEN takes effect when its transaction commits, and a pipeline runs
                    # everything up to a Sync as one implicit transaction: sync here, or a
                    # release committed between the catch-up's snapshot and that commit
                    # would be neither in the catch-up nor notified.
                    conn.execute(Q["listen"])
                    pipeline.sync()
                caught = conn.execute(Q["catch_up"], {"ns": self.namespace, "since": state.seq})
                bodies: str = _one(caught)[2]
            self._listening = True
            if bodies:
                before = state.seq
                self._apply_bodies(state, bodies)
                freed = any(f'"op":"{op}"' in bodies for op in _FREEING)
                if freed and state.seq > before:
                    return True
            deadline = time.monotonic() + timeout
            while not self._notes and (remaining := deadline - time.monotonic()) > 0:
                # When the socket is readable a notification (or anything) arrived; a ping
                # makes psycopg read it and hand it to `_noted`. A ping at least every second
                # also delivers one that libpq had already read into its buffer.
                select.select([conn.fileno()], [], [], min(remaining, _PING_EVERY))
                conn.execute(Q["ping"])
            if self._notes:
                self._count("woken")
            return bool(self._notes)

        with self._tlock:
            return bool(self._retrying(wait, allow=timeout))
