"""Waiting for a release: LISTEN/NOTIFY, for `dibs claim --wait` (`dibs.store.base.Waiter`)."""

from __future__ import annotations

import select
import time

import psycopg

from dibs.store.postgres import wake
from dibs.store.postgres.admin import Admin
from dibs.store.postgres.connection import _PING_EVERY, Q, _one

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
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

    def wait_for_change(self, timeout: float, scopes: Sequence[str] | None = None) -> bool:
        """Block until something may have been released since the last decision, or *timeout*.

        Listens for the NOTIFY that releasing decisions send, after checking the log for
        releases that came before the LISTEN took effect. True when woken by a release.
        With *scopes* (`dibs.core.resources.scope` of what the caller waits for), only a
        release that may overlap one of them wakes it (`dibs.store.postgres.wake`).
        """
        wanted = None if scopes is None else list(scopes)

        def wait(conn: psycopg.Connection[Any]) -> bool:
            state = self._state if self._state is not None else self._load(conn)
            self._notes = 0  # earlier ones are in the log the catch-up below reads
            self._wanted = wanted
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
            if bodies and wake.frees_for(self._apply_bodies(state, bodies), wanted):
                self._unlisten(conn)
                return True
            deadline = time.monotonic() + timeout
            self._take_notes(conn)  # any libpq read with the catch-up's answer
            while not self._notes and (remaining := deadline - time.monotonic()) > 0:
                # When the socket is readable a notification (or anything) arrived: read it
                # without a round trip. A release that wakes nobody here costs no query.
                # After a quiet second, a ping: the connection is still there.
                if select.select([conn.fileno()], [], [], min(remaining, _PING_EVERY))[0]:
                    self._take_notes(conn)
                else:
                    conn.execute(Q["ping"])
            # UNLISTEN as the wait ends: the next decision would send it anyway (one round
            # trip either way), but a process that idles after a wait (the CLI helper, an
            # MCP server) would go on being sent every release of the namespace, unread,
            # until its socket filled and its server process stalled.
            self._unlisten(conn)
            if self._notes:
                self._count("woken")
            return bool(self._notes)

        with self._tlock:
            try:
                return bool(self._retrying(wait, allow=timeout))
            finally:
                self._wanted = None

    def _take_notes(self, conn: psycopg.Connection[Any]) -> None:
        """Hand the notifications that reached the connection to `_noted`, no query sent
        (the connection is idle: no query of psycopg's is reading them meanwhile)."""
        pgconn = conn.pgconn
        encoding = conn.info.encoding
        pgconn.consume_input()  # reads what arrived, never blocks; raises when the link is gone
        while (note := pgconn.notifies()) is not None:
            try:
                payload = note.extra.decode(encoding)
            except UnicodeDecodeError:
                payload = self.namespace + ":"  # unreadable: taken as naming no scopes
            self._noted(
                psycopg.Notify(note.relname.decode(encoding, "replace"), payload, note.be_pid)
            )
