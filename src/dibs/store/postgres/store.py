"""The PostgreSQL store: the same rules, one database, agents on many machines.

Several repositories share one database, each in its own *namespace* (a row of
``dibs.namespaces``). Every write first runs the rules on the client's cached `State`, at an
estimate of the server's clock, and then takes the cheapest of three paths that is safe:

* a decision that only renews (a heartbeat, a renew keeping the ttl) is one statement on
  ``dibs.live`` that never touches the namespace row (``dibs.renew``; see `live` and
  docs/explanation/postgres.md for why an eviction and a renewal cannot both win);
* on a cache that is current, the decision is appended in one autocommit statement that
  inserts nothing if anyone wrote since (``dibs.append``: optimistic, no lock held across a
  round trip);
* else, one transaction in two pipelined round trips: (1) ``BEGIN`` and ``dibs.lock_and_read``,
  which locks the namespace row (writers of one namespace take turns, so exclusion holds for
  overlapping globs too) and the ``dibs.live`` rows the cache finds expired, then reads the
  clock and the events since the cache (after the lock was granted); (2) the client applies
  them, runs the same `decide` as every other store, and sends ``dibs.append`` and ``COMMIT``.

The lock is transaction-level: a client that dies or hangs mid-transaction loses it with its
connection, or after ``idle_in_transaction_session_timeout`` (set per session), never later.
Session-level advisory locks are never used: they survive dead clients and break behind
connection poolers.

The database's clock decides: every decision's `Now` is the server's ``clock_timestamp()``
(minus the namespace's ``mono_offset``), under the namespace's constant boot id, so clients'
clocks may drift without effect and no lease is ever voided as ``rebooted``.

Every write carries an idempotency key, recorded on its first event. When the connection
breaks after ``COMMIT`` was sent, the outcome is unknown; the store reconnects, takes the
namespace lock (so the old transaction has finished one way or the other) and looks the key
up: found, the decision stands and is returned; not found, nothing happened and the operation
is decided again on the fresh state. Either way the caller gets one answer and the log holds
the operation at most once.

SQL lives in ``sql/queries.sql`` (named queries) and ``sql/migrate_NNN.sql`` (migrations
applied by ``dibs init``); nothing here builds SQL from strings.
"""

from __future__ import annotations

import json
import os
import time

import psycopg

from dibs.core.events import encode
from dibs.core.resources import scope
from dibs.core.state import State, apply, seal
from dibs.ground.errors import CorruptLog, StoreIOError
from dibs.ground.now import Now
from dibs.store.postgres import commuting, live, wake
from dibs.store.postgres.arrays import arrays
from dibs.store.postgres.connection import (
    _EVENT_BYTES,
    _EXPIRY_MARGIN_NS,
    _OPTIMISTIC_TRIES,
    _PAGE,
    _PESSIMISTIC_AFTER_MISS,
    Q,
    _first_line,
    _Lost,
    _one,
    _Reload,
)
from dibs.store.postgres.listen import Listening

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from typing import Any

    from dibs.core.events import Event
    from dibs.core.leases import Decision
    from dibs.store.base import DecideFn


class PostgresStore(Listening):
    """A namespace in a PostgreSQL database (see the module docstring; the arguments are
    `dibs.store.postgres.connection.Session`'s)."""

    # Writing ----------------------------------------------------------------------------

    def transact(self, decide: DecideFn, *, footprint: Sequence[str] | None = None) -> Decision:
        """Decide and append atomically (see `dibs.store.base.Store.transact`).

        *footprint*: the caller vouches that *decide* is a plain claim or release reading only
        its agent's record and the leases that may overlap these resources (the coordinator's
        plain claims and releases); such a decision is appended past what others wrote
        meanwhile when none of it touches those (`commuting`).
        """
        with self._tlock:
            request = os.urandom(16).hex()
            pending: tuple[Decision, list[Event]] | None = None
            deadline = 0.0
            delay = 0.05
            while True:
                try:
                    conn = self._connect()
                    self._arm(conn)
                    try:
                        if pending is not None:
                            decision = self._settle(conn, request, pending)
                            self.settled += 1
                            if decision is not None:
                                return decision
                            pending = None  # it did not happen: decide again
                        return self._step(conn, decide, request, footprint)
                    finally:
                        self._disarm()
                except _Lost as lost:
                    self._drop()
                    pending = lost.pending or pending
                    deadline = deadline or time.monotonic() + self.retry_for
                    if time.monotonic() >= deadline:
                        raise self._gave_up(_Lost(lost.cause, pending)) from lost.cause
                    self.repairs.append(
                        f"lost the connection to {self.where} ({_first_line(lost.cause)}); "
                        "reconnected and retried safely"
                    )
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                except _Reload:
                    self._state = None

    def _begin(
        self, conn: psycopg.Connection[Any], pipeline: psycopg.Pipeline, state: State
    ) -> Now:
        """Round trip 1: lock the namespace, read the clock and the events after the cached
        state; with them the rows of `dibs.live` the decision may find expired, locked.

        Returns the time to decide at. Rows that only turn out expired after the catch-up
        (events of other writers) are read and locked in one more round trip.
        """
        if self._listening:
            conn.execute(Q["unlisten"])
            self._listening = False
        since = state.seq
        keys = live.expiring(state, self._estimate()[0].mono + _EXPIRY_MARGIN_NS, self._confirmed)
        conn.execute(Q["begin"])
        locked = conn.execute(Q["lock_and_read"], self._keys(keys) | {"since": since})
        # A Sync, not a mere flush: only after a Sync is the session "idle in transaction"
        # on the server, so that idle_in_transaction_session_timeout ends it (and frees the
        # namespace lock) if this client stops before it commits.
        pipeline.sync()
        row = locked.fetchone()
        self._answered = time.perf_counter()
        if row is None:
            raise _Reload
        seq, boot, offset, micros, count, bodies, *rows = row
        if boot != self._boot or int(offset) != self._offset or seq < since:
            raise _Reload
        if count != seq - since:
            raise CorruptLog(
                f"namespace {self.namespace!r} in {self.where} is at seq {seq} but has "
                f"{count} events after {since}: the log has a gap",
                hint="run `dibs doctor`",
            )
        if bodies:
            self._apply_bodies(state, bodies)
        live.patch(state, rows)
        self._sync(micros)
        now = self._now(micros)
        live.confirm(state, *keys, now.mono, self._confirmed)
        more = live.expiring(state, now.mono, self._confirmed)
        if more[0]:
            # Locked after `now` was read: a renewal of one of them that has not committed
            # yet reads its clock after this transaction, too late to revive it.
            self._count("more-rows")
            fetched = conn.execute(Q["live_rows"], self._keys(more) | {"lock": True})
            pipeline.sync()
            live.patch(state, _one(fetched)[1:])
            live.confirm(state, *more, now.mono, self._confirmed)
        return now

    def _step(
        self,
        conn: psycopg.Connection[Any],
        decide: DecideFn,
        request: str,
        footprint: Sequence[str] | None,
    ) -> Decision:
        """One decision: a renewal without the lock, optimistically in one round trip, or
        else under the namespace lock.

        The rules decide first on the cached state. A decision that only renews is done in
        dibs.live alone (`_renew`). One that writes nothing (a waiting claim still blocked)
        needs only a current state: one lock-free catch-up read (`_current`). A plain claim
        or release is appended past unrelated writes in one statement (`_commuting`).
        Optimism pays when writers rarely meet; when they do, each miss costs round trips,
        so after a miss the next decisions take the lock straight away for a while. A cached
        state with rows that look expired and were not read under the lock cannot decide
        optimistically: they may have been renewed outside the log.
        """
        try:
            state = self._state if self._state is not None else self._load(conn)
        except psycopg.Error as exc:
            raise self._translate(conn, exc, None) from exc
        if self._listening:
            self._unlisten(conn)
        now, decided_us = self._estimate()
        decision = decide(state, now)
        renewal = live.renewal(state, decision)
        if renewal is None and live.renewal_blocked(decision):
            # It would renew but for leases that look expired: they may not be. Read them.
            now, decided_us, decision = self._reread(conn, state, decide)
            renewal = live.renewal(state, decision)
        if renewal is not None and self._renew(conn, state, renewal):
            return decision
        # Rows the cache finds expired may have been renewed outside the log: only a decision
        # that met none of them may be made without the lock.
        settled = not live.expiring(state, now.mono, self._confirmed)[0]
        if not decision.events and settled:
            # Nothing to write (a waiting claim still blocked, say): it needs a current state,
            # never the lock. Catch up and decide again at the time read.
            answer = self._current(conn, decide, state)
            if answer is not None:
                return answer
            now, decided_us = self._estimate()  # caught up, it writes: on to the write paths
            decision = decide(state, now)
            settled = not live.expiring(state, now.mono, self._confirmed)[0]
        if footprint is not None and settled and commuting.mover(decision) is not None:
            decided = self._commuting(
                conn, decide, request, (state, now, decided_us, decision), footprint
            )
            if decided is not None:
                return decided
            return self._locked(conn, decide, request)
        if self._pessimistic <= 0 and settled:
            first: tuple[Now, int | None, Decision] | None = (now, decided_us, decision)
            for _ in range(_OPTIMISTIC_TRIES):
                decided = self._optimistic(conn, decide, request, first)
                if decided is not None:
                    return decided
                first = None
            self._pessimistic = _PESSIMISTIC_AFTER_MISS
        self._pessimistic -= 1
        return self._locked(conn, decide, request)

    def _current(
        self, conn: psycopg.Connection[Any], decide: DecideFn, state: State
    ) -> Decision | None:
        """Catch *state* up in one lock-free read and decide at the server's time of it: a
        decision that writes nothing is then as good as one made under the lock (the state
        was the log's at that moment). None when, caught up, it does write something."""
        try:
            micros, count, bodies = self._fetch_one(
                conn, Q["catch_up"], {"ns": self.namespace, "since": state.seq}
            )
        except psycopg.Error as exc:
            raise self._translate(conn, exc, None) from exc
        self._sync(micros)
        if count:
            self._apply_bodies(state, bodies)
        decision = decide(state, self._now(micros))
        if decision.events:
            return None
        self._count("current-read")
        return decision

    def _reread(
        self, conn: psycopg.Connection[Any], state: State, decide: DecideFn
    ) -> tuple[Now, int | None, Decision]:
        """Read the expired-looking rows of dibs.live (no lock) and decide again."""
        now = self._estimate()[0]
        keys = live.expiring(state, now.mono, self._confirmed)
        try:
            rows = self._fetch_one(conn, Q["live_rows"], self._keys(keys) | {"lock": False})
        except psycopg.Error as exc:
            raise self._translate(conn, exc, None) from exc
        live.patch(state, rows[1:])
        self._sync(rows[0])
        now, decided_us = self._estimate()
        return now, decided_us, decide(state, now)

    def _renew(self, conn: psycopg.Connection[Any], state: State, renewal: dict[str, Any]) -> bool:
        """Renew in dibs.live alone, one statement, no namespace lock; False: decide under
        the lock instead (the server found something the cached state did not know)."""
        at_mono = self.clock().mono if self.clock is not None else None
        params = renewal | {"ns": self.namespace, "at_mono": at_mono, "offset": self._offset}
        try:
            micros = self._fetch_one(conn, Q["renew"], params)[0]
        except psycopg.Error as exc:
            raise self._translate(conn, exc, None) from exc
        if micros is None:
            self._count("renew-refused")
            return False
        self._sync(micros)
        live.renewed(state, renewal, at_mono if at_mono is not None else self._now(micros).mono)
        self._count("renew")
        return True

    def _commuting(
        self,
        conn: psycopg.Connection[Any],
        decide: DecideFn,
        request: str,
        decided: tuple[State, Now, int | None, Decision],
        footprint: Sequence[str],
    ) -> Decision | None:
        """Append a claim or release in one statement, moved up past whatever was written
        since *state* if all of that commutes with it (`commuting`); None when it was not
        appended (a clash, more than 256 events behind, or a clock estimate ahead of the
        server's): then decide under the lock, which catches up."""
        state, now, decided_us, decision = decided
        events = seal(decision.events, state.seq)
        params = commuting.params(decision, events, footprint)
        if params is None:
            return None
        pending = (decision, events)
        params |= {
            "ns": self.namespace,
            "expected": state.seq,
            "base_token": state.last_token,
            "request": request,
            "decided_us": decided_us,
            "async_after_us": self.async_after_us,
        }
        try:
            row = self._fetch_one(conn, Q["append_commuting"], arrays(params))
            # flush: it freed the lock before the disk flush, and the procedure waited for
            # the flush in a second transaction (migrate_005.sql) before answering.
            added, micros, moved, lifted, count, between, flush = row
            if added:
                self._check_appended(added, len(events))
            if flush:
                self._count("flushed")
        except psycopg.errors.SerializationFailure:
            self._count("commuting-clash")  # nothing was written; the locked path catches up
            return None
        except psycopg.Error as exc:
            raise self._translate(conn, exc, pending) from exc
        self._sync(micros)
        if count:
            self._apply_bodies(state, between)
        if not added:
            self._count("commuting-clash")
            return None
        commuting.shift(decision, events, moved, lifted)
        if self.verify_commuting:
            self._verify_commuting(decide, state, now, decision)
        for event in events:
            apply(state, event)
        self._since_checkpoint += sum(len(body) for body in params["templates"])
        self._maybe_checkpoint(conn, events[0]["seq"], events[-1]["seq"])
        self._count("commuting-moved" if moved else "commuting")
        return decision

    def _verify_commuting(
        self, decide: DecideFn, state: State, now: Now, appended: Decision
    ) -> None:
        """Decide again on the caught-up *state* at the same time: the events must be the
        ones just *appended*, the refusal the same (the test suite's check of `commuting`)."""
        again = decide(state, now)
        events = seal(again.events, state.seq)
        if events != appended.events or repr(again.error) != repr(appended.error):
            raise StoreIOError(
                f"a commuting append in namespace {self.namespace!r} differs from the decision "
                f"made again on the caught-up state: appended {appended.events} "
                f"({appended.error!r}), decided {events} ({again.error!r})",
                hint="this is a bug in dibs.append_commuting's check; report it",
            )

    def _optimistic(
        self,
        conn: psycopg.Connection[Any],
        decide: DecideFn,
        request: str,
        first: tuple[Now, int | None, Decision] | None,
    ) -> Decision | None:
        """Decide on the cached state; prove it current with the write itself (or a read).

        Returns None when the state was not current: it has caught up, decide again. No
        lock is held across a round trip, so a slow or paused client stalls nobody.
        """
        pending: tuple[Decision, list[Event]] | None = None
        state = self._state if self._state is not None else self._load(conn)
        try:
            if first is not None:
                _, decided_us, decision = first  # the rules ran on this state already
            else:
                now, decided_us = self._estimate()
                decision = decide(state, now)
            events = seal(decision.events, state.seq)
            if events:
                pending = (decision, events)
                params = self._append_params(state, events, request)
                params["decided_us"] = decided_us
                added, micros = self._fetch_one(conn, Q["append_if_current"], arrays(params))
                self._sync(micros)
                if added:
                    self._count("optimistic")
                    self._check_appended(added, len(events))
                    for event in events:
                        apply(state, event)
                    self._since_checkpoint += sum(len(b) for b in params["bodies"])
                    self._maybe_checkpoint(conn, events[0]["seq"], events[-1]["seq"])
                    return decision
            micros, count, bodies = self._fetch_one(
                conn, Q["catch_up"], {"ns": self.namespace, "since": state.seq}
            )
            self._sync(micros)
        except psycopg.Error as exc:
            raise self._translate(conn, exc, pending) from exc
        if not events and count == 0:
            # Nothing was written since the state we decided on: the answer stands.
            return decision
        if count:
            self._apply_bodies(state, bodies)
        self._count("optimistic-miss")
        return None

    def _locked(self, conn: psycopg.Connection[Any], decide: DecideFn, request: str) -> Decision:
        """The pessimistic path: two round trips holding the namespace lock in between."""
        pending: tuple[Decision, list[Event]] | None = None
        clock = time.perf_counter
        try:
            state = self._state if self._state is not None else self._load(conn)
            with conn.pipeline() as pipeline:
                t0 = clock()
                now = self._begin(conn, pipeline, state)
                t1 = self._answered
                decision = decide(state, now)
                events = seal(decision.events, state.seq)
                if events:
                    pending = (decision, events)
                    params = self._append_params(state, events, request)
                    params["decided_us"] = None  # decided at the server's own reading
                    t2 = clock()
                    added = conn.execute(Q["append_if_current"], arrays(params))
                    conn.execute(Q["commit"])
                    self._check_appended(_one(added)[0], len(events))
                else:
                    t2 = clock()
                    conn.execute(Q["commit"])
            if self.profile is not None:
                self._profiled(t1 - t0, t2 - t1, clock() - t2)
        except psycopg.Error as exc:
            raise self._translate(conn, exc, pending) from exc
        except BaseException:
            self._rollback(conn)
            raise
        for event in events:
            apply(state, event)
        if events:
            self._since_checkpoint += sum(len(body) for body in params["bodies"])
            self._maybe_checkpoint(conn, events[0]["seq"], events[-1]["seq"])
        return decision

    def _profiled(self, begin: float, decide: float, commit: float) -> None:
        """Add one locked write's times to `profile`: the first round trip (lock wait
        included), the client's turnaround (catch-up, decide, encode) and the commit."""
        profile = self.profile
        assert profile is not None  # noqa: S101 -- only called when profiling
        for key, value in (("begin", begin), ("decide", decide), ("commit", commit)):
            profile[key] = profile.get(key, 0.0) + value
        profile["locked"] = profile.get("locked", 0.0) + 1

    def _check_appended(self, added: int, expected: int) -> None:
        if added != expected:
            raise StoreIOError(
                f"namespace {self.namespace!r} moved while this client held its lock; nothing "
                "was recorded",
                hint="run `dibs doctor`; retry the command",
            )

    def _append_params(self, state: State, events: list[Event], request: str) -> dict[str, Any]:
        tokens = [e.get("token") for e in events]
        freeing = any(e["op"] in wake.FREEING for e in events)
        bodies = [encode(e)[:-1].decode() for e in events]
        return {
            "notify": (
                f"{self.namespace}:{events[-1]['seq']}{wake.suffix(events)}" if freeing else ""
            ),
            "ns": self.namespace,
            "expected": state.seq,
            "first": events[0]["seq"],
            "last": events[-1]["seq"],
            "token": max([state.last_token, *(t for t in tokens if t is not None)]),
            "request": request,
            "seqs": [e["seq"] for e in events],
            "ops": [e["op"] for e in events],
            "agents": [e.get("agent") for e in events],
            "resources": [e.get("resource") for e in events],
            "tokens": tokens,
            "bodies": bodies,
            "scopes": [scope(e.get("resource")) for e in events],
        } | live.live_params(events)

    def _settle(
        self,
        conn: psycopg.Connection[Any],
        request: str,
        pending: tuple[Decision, list[Event]],
    ) -> Decision | None:
        """After a lost COMMIT: the decision if it was recorded, None if it was not.

        The server process of the lost connection is ended first (`_end_orphan`): a single
        statement held up on the network could otherwise still run after we looked. Then the
        namespace lock is taken: a transaction that held it when the answer was lost has ended
        once we have it, so the answer cannot change later. A commuting append may have been
        moved up: the events are taken as recorded. Found, it is made durable (a commuting
        append commits without waiting for the disk) before it is reported.
        """
        decision, events = pending
        params = {"ns": self.namespace, "request": request, "count": len(events)}
        try:
            self._end_orphan(conn)
            with conn.pipeline():
                conn.execute(Q["begin"])
                conn.execute(Q["lock_namespace"], {"ns": self.namespace})
                found = conn.execute(Q["find_request"], params)
                conn.execute(Q["commit"])
                row = found.fetchone()
            if row is not None:
                conn.execute(Q["durable"])  # a commuting append may not be on disk yet
        except psycopg.Error as exc:
            raise self._translate(conn, exc, pending) from exc
        if row is None:
            return None
        first, bodies = row
        if first != events[0]["seq"]:
            recorded = [self._decode(first, body) for body in bodies.split("\n")]
            commuting.adopt(decision, events, recorded)
        state = self._state
        if state is not None and state.seq == events[0]["seq"] - 1:
            for event in events:
                apply(state, event)
        else:
            self._state = None  # reload on next use
        return decision

    def _maybe_checkpoint(self, conn: psycopg.Connection[Any], first: int, last: int) -> None:
        """Write a checkpoint once the events since the last one known outweigh it, by the
        client whose own events (seqs *first* to *last*) crossed a multiple of a stride of
        about that many events. Every client applies the same events, so without the stride
        each would write its own copy of the same checkpoint (16 clients of a 10,000-agent
        fleet wrote a few megabytes each, about once a second between them); with it, one
        crossing, one writer."""
        state = self._state
        if state is None:
            return
        weight = max(self.checkpoint_bytes, self._checkpoint_at[1])
        if self._since_checkpoint < weight:
            return
        stride = 1 << max(3, (weight // _EVENT_BYTES).bit_length())
        if last // stride == (first - 1) // stride:
            return
        data = json.dumps(state.to_json(), separators=(",", ":"))
        try:
            with conn.pipeline():
                conn.execute(
                    Q["save_checkpoint"], {"ns": self.namespace, "seq": state.seq, "state": data}
                )
                conn.execute(Q["prune_checkpoints"], {"ns": self.namespace})
        except psycopg.Error:
            # A checkpoint is a cache: failing to write one costs speed, never data.
            self._rollback(conn)
        self._checkpoint_at = (state.seq, len(data))
        self._since_checkpoint = 0

    # Reading ----------------------------------------------------------------------------

    def read(self) -> tuple[State, Now]:
        """Catch up (no lock) and return the state (do not change it) and the server's time."""

        def read(conn: psycopg.Connection[Any]) -> tuple[State, Now]:
            state = self._state if self._state is not None else self._load(conn)
            # Leases and agents that look expired may have been renewed outside the log:
            # their rows of dibs.live come in the same round trip as the catch-up.
            before = self._estimate()[0].mono + _EXPIRY_MARGIN_NS
            keys = live.expiring(state, before, self._confirmed)
            micros, _count, bodies, *rows = self._fetch_one(
                conn, Q["catch_up_live"], self._keys(keys) | {"since": state.seq}
            )
            if bodies:
                self._apply_bodies(state, bodies)
            live.patch(state, rows)
            self._sync(micros)
            return state, self._now(micros)

        with self._tlock:
            result: tuple[State, Now] = self._retrying(read)
            return result

    @property
    def seq(self) -> int:
        """The last seq this client has seen."""
        return self._state.seq if self._state is not None else 0

    def events(self, since: int = 0) -> Iterator[Event]:
        """Events after *since*, oldest first, fetched in pages."""
        while True:

            def page(conn: psycopg.Connection[Any], after: int = since) -> list[Any]:
                return conn.execute(
                    Q["events_page"], {"ns": self.namespace, "since": after, "limit": _PAGE}
                ).fetchall()

            with self._tlock:
                rows: list[Any] = self._retrying(page)
            for seq, body in rows:
                yield self._decode(seq, body)
            if len(rows) < _PAGE:
                return
            since = rows[-1][0]

    def tail(self, count: int) -> list[Event]:
        """The last *count* events, oldest first."""
        if count <= 0:
            return []

        def tail(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(Q["tail"], {"ns": self.namespace, "count": count}).fetchall()

        with self._tlock:
            rows: list[Any] = self._retrying(tail)
        return [self._decode(0, body) for (body,) in rows]

    def close(self) -> None:
        """Close the connection (and stop the watchdog)."""
        self._closing = True
        with self._tlock:
            self._drop()
