"""The PostgreSQL store: the same rules, one database, agents on many machines.

Several repositories share one database, each in its own *namespace* (a row of
``dibs.namespaces``). A write is one transaction in two round trips, both pipelined:

1. ``BEGIN``; lock the namespace row (``SELECT ... FOR UPDATE``: writers of one namespace take
   turns, so exclusion holds for overlapping globs too); fetch the events committed since this
   client last looked, and the server's clock (a later statement of the transaction, so it sees
   everything committed before the lock was granted).
2. The client applies those events to its cached `State`, runs the same `decide` as every
   other store, and sends the decision's events, the namespace's new counters and
   ``COMMIT``.

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

import _thread
import contextlib
import json
import logging
import os
import re
import select
import time

import psycopg
from psycopg import conninfo as _conninfo

from dibs.core.events import SCHEMA_VERSION, encode
from dibs.core.state import State, apply, seal
from dibs.ground.errors import CorruptLog, StoreIOError, StoreUnavailable, UsageError
from dibs.ground.now import Now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

    from dibs.core.events import Event
    from dibs.core.leases import Decision
    from dibs.store.base import Clock, DecideFn, Finding

#: The schema version this dibs reads and writes (``sql/migrate_NNN.sql`` up to it).
SCHEMA = 1
NAMESPACE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
CHECKPOINT_BYTES = 64 * 1024
# An optimistic decision that meets a namespace moved by someone else catches up and tries
# again this many times before taking the namespace lock (which always makes progress).
_OPTIMISTIC_TRIES = 2
_PESSIMISTIC_AFTER_MISS = 16
_CLOCK_MARGIN_US = 1000
_PAGE = 5000
#: Ops that free a resource: a decision holding one wakes `dibs claim --wait` elsewhere.
#: Seconds between pings while waiting for a notification (see `wait_for_change`).
_PING_EVERY = 1.0
_FREEING = frozenset(("release", "auto-evict", "force-evict", "unregister"))
_SQL_DIR = os.path.join(os.path.dirname(__file__), "sql")
_HINT = (
    "check the host, port, user, password (PGPASSWORD or ~/.pgpass) and database name in "
    "DIBS_STORE (or store.url in dibs.toml), and that the server is running"
)


def _read_queries() -> dict[str, str]:
    """The named queries of ``sql/queries.sql`` (comment lines dropped)."""
    queries: dict[str, str] = {}
    name = ""
    with open(os.path.join(_SQL_DIR, "queries.sql"), encoding="utf-8") as f:
        for line in f:
            if line.startswith("-- name: "):
                name = line[len("-- name: ") :].strip()
                queries[name] = ""
            elif name and not line.lstrip().startswith("--"):
                queries[name] += line
    return {key: text.strip().rstrip(";") for key, text in queries.items()}


Q = _read_queries()

# psycopg logs a warning for each pipeline it tears down on a lost connection; this store
# recovers from those and says so itself (`repairs`), so keep them off people's terminals
# unless the application configured that logger.
if logging.getLogger("psycopg").level == logging.NOTSET:
    logging.getLogger("psycopg").setLevel(logging.ERROR)


def migrations() -> list[tuple[int, str]]:
    """Every migration shipped: ``(version, SQL)``, oldest first."""
    found = []
    for name in sorted(os.listdir(_SQL_DIR)):
        match = re.fullmatch(r"migrate_(\d+)\.sql", name)
        if match:
            with open(os.path.join(_SQL_DIR, name), encoding="utf-8") as f:
                found.append((int(match.group(1)), f.read()))
    return found


def describe(url: str) -> str:
    """*url* for people: ``postgresql://user@host:port/db``, the password left out."""
    params = parse_url(url)
    user = params.get("user") or os.environ.get("PGUSER") or ""
    where = params.get("host") or os.environ.get("PGHOST") or "localhost"
    port = params.get("port") or os.environ.get("PGPORT") or "5432"
    db = params.get("dbname") or os.environ.get("PGDATABASE") or user
    return f"postgresql://{user + '@' if user else ''}{where}:{port}/{db}"


def parse_url(url: str) -> dict[str, Any]:
    """The connection parameters of *url*; `UsageError` when it does not parse."""
    try:
        return _conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        shown = url.rsplit("@", maxsplit=1)[-1]  # never print a password
        raise UsageError(
            f"{shown!r} is not a valid PostgreSQL URL: {_first_line(exc)}",
            hint="write it as postgresql://USER@HOST:PORT/DATABASE (the password in "
            "PGPASSWORD or ~/.pgpass)",
        ) from None


def without_password(url: str) -> str:
    """*url* with any password removed (for files that are committed)."""
    params = parse_url(url)
    if "password" not in params:
        return url
    return re.sub(r"^(postgres(?:ql)?://[^:@/]*):[^@/]*@", r"\1@", url)


def check_namespace(name: str) -> str:
    """Validate a namespace name (as agent names: ``[a-z0-9][a-z0-9._-]{0,63}``)."""
    if not NAMESPACE.fullmatch(name):
        raise UsageError(
            f"{name!r} is not a valid namespace",
            hint="use 1-64 characters: lower-case letters, digits, '.', '_' and '-', starting "
            "with a letter or digit (store.namespace in dibs.toml, or DIBS_NAMESPACE)",
        )
    return name


def _one(cursor: psycopg.Cursor[Any]) -> Any:
    """The one row a query always returns (an aggregate, a function call)."""
    row = cursor.fetchone()
    if row is None:
        raise StoreIOError("PostgreSQL returned no row where one is always expected")
    return row


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class _Lost(Exception):
    """The connection broke; *pending* holds a decision whose COMMIT may have landed."""

    def __init__(self, cause: BaseException, pending: tuple[Decision, list[Event]] | None):
        super().__init__(str(cause))
        self.cause = cause
        self.pending = pending


class _Reload(Exception):
    """The namespace is not what the cache says (recreated, or restored from a backup)."""


class PostgresStore:
    """A namespace in a PostgreSQL database (see the module docstring).

    Args:
        url: a libpq URL or connection string, ``postgresql://user@host:port/db``.
        namespace: which namespace of the database (``[a-z0-9][a-z0-9._-]{0,63}``).
        clock: overrides the server's clock (tests only: expiry then follows this clock).
        retry_for: seconds to keep reconnecting after a lost connection (a server restart)
            before giving up with `StoreUnavailable`. A store that never connected fails at
            once: a wrong URL should not make anyone wait.
        lock_hold: seconds a client may sit inside a transaction (holding the namespace's
            lock) before the server ends its session; a paused client cannot stall the others
            for longer.
        lock_wait: seconds a write waits for the namespace's lock before giving up.
        connect_timeout: seconds to wait for a connection.
        op_timeout: seconds to wait for the server's answer to one request before treating the
            connection as lost (then reconnect, and settle an unanswered write by its
            idempotency key). A network that swallows packets gives no error at all; without
            this a client would wait for as long as the partition lasts, its leases expiring.
        checkpoint_bytes: write a checkpoint once this many bytes of events were applied after
            the last one (or the size of the last one, whichever is larger).
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        clock: Clock | None = None,
        retry_for: float = 30.0,
        lock_hold: float = 5.0,
        lock_wait: float = 60.0,
        connect_timeout: float = 5.0,
        op_timeout: float = 10.0,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
    ):
        self.namespace = check_namespace(namespace)
        params = parse_url(url)
        options = params.get("options", "")
        params["options"] = (
            f"{options} -c idle_in_transaction_session_timeout={int(lock_hold * 1000)}"
            f" -c lock_timeout={int(lock_wait * 1000)}"
        ).strip()
        params.setdefault("connect_timeout", max(1, round(connect_timeout)))
        params.setdefault("application_name", "dibs")
        self._conninfo = _conninfo.make_conninfo(**params)
        self.where = describe(url)
        self.url = f"{self.where} (namespace {self.namespace})"
        self.clock = clock
        self.retry_for = retry_for
        self.checkpoint_bytes = checkpoint_bytes
        #: Notes for people about what the store did on the way (reconnections).
        self.repairs: list[str] = []
        self._tlock = _thread.allocate_lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._connected_once = False
        self._listening = False
        #: Releases notified in this namespace since the last wait began (see `_noted`).
        self._notes = 0
        self._state: State | None = None
        self._boot = ""
        self._offset = 0
        self._checkpoint_at = (0, 0)  # (seq, bytes) of the newest checkpoint we know
        self._since_checkpoint = 0
        # (server clock in microseconds, our monotonic_ns then): to estimate the server's
        # clock without asking it, for the optimistic path (see _optimistic).
        self._synced: tuple[int, int] | None = None
        self._pessimistic = 0  # decisions left to take the lock for, after optimism missed
        self.op_timeout = op_timeout
        #: Requests the watchdog gave up on (no answer within op_timeout).
        self.timeouts = 0
        #: Writes whose answer was lost and were settled by their idempotency key.
        self.settled = 0
        self._armed: tuple[float, Any] | None = None  # (deadline, connection) of a request
        self._watchdog: Any = None
        self._closing = False

    # Connections ------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        self._listening = False
        try:
            conn = psycopg.connect(self._conninfo, autocommit=True)
        except psycopg.Error as exc:
            if not self._connected_once:
                raise StoreUnavailable(
                    f"cannot connect to PostgreSQL at {self.where}: {_first_line(exc)}",
                    hint=_HINT,
                ) from exc
            raise _Lost(exc, None) from exc
        conn.add_notify_handler(self._noted)
        self._conn = conn
        self._connected_once = True
        return conn

    def _noted(self, note: psycopg.Notify) -> None:
        """Count a release notification, whenever psycopg receives it.

        psycopg hands notifications that arrive while a query runs (the LISTEN and catch-up
        of `wait_for_change` itself) only to handlers, never to ``notifies()``, so dibs waits
        with a handler alone: a release landing in that moment is counted, not missed.
        """
        if note.payload.startswith(self.namespace + ":"):
            self._notes += 1

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._listening = False
        if conn is not None:
            # It may be broken already: there is nothing left to close cleanly.
            with contextlib.suppress(psycopg.Error):
                conn.close()

    def _arm(self, conn: psycopg.Connection[Any], seconds: float | None = None) -> None:
        """Expect an answer on *conn* within *seconds* (default op_timeout)."""
        self._armed = (time.monotonic() + (seconds or self.op_timeout), conn)
        if self._watchdog is None:
            import threading

            self._watchdog = threading.Thread(target=self._watch, daemon=True)
            self._watchdog.start()

    def _disarm(self) -> None:
        self._armed = None

    def _watch(self) -> None:
        """Shut a connection down when its request outlives its deadline.

        Arming is one assignment, so requests pay nothing; the watchdog looks four times per
        op_timeout. Shutting the socket down wakes the waiting request with a lost
        connection, which the store already handles: reconnect, settle, or give up saying so.
        """
        import socket

        while not self._closing:
            time.sleep(self.op_timeout / 4)
            armed = self._armed
            if armed is None or time.monotonic() < armed[0] or self._armed is not armed:
                continue
            conn = armed[1]
            self.timeouts += 1
            with (
                contextlib.suppress(OSError, ValueError, psycopg.Error),
                socket.socket(fileno=os.dup(conn.fileno())) as sock,
            ):
                sock.shutdown(socket.SHUT_RDWR)

    def _retrying(self, work: Any, *, allow: float = 0.0) -> Any:
        """Run ``work(conn)``; after a lost connection, reconnect and run it again.

        *allow* is extra time the work may take on top of op_timeout (a wait for a release).
        """
        deadline = 0.0
        delay = 0.05
        while True:
            try:
                conn = self._connect()
                self._arm(conn, self.op_timeout + allow)
                try:
                    return work(conn)
                except psycopg.Error as exc:
                    raise self._translate(conn, exc, None) from exc
                finally:
                    self._disarm()
            except _Lost as lost:
                self._drop()
                deadline = deadline or time.monotonic() + self.retry_for
                if time.monotonic() >= deadline:
                    raise self._gave_up(lost) from lost.cause
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except _Reload:
                self._state = None

    def _translate(
        self,
        conn: psycopg.Connection[Any],
        exc: psycopg.Error,
        pending: tuple[Decision, list[Event]] | None,
    ) -> BaseException:
        """Map a psycopg error to `_Lost` (retry) or a dibs error (tell the caller)."""
        if conn.broken or conn.closed or isinstance(exc, psycopg.OperationalError):
            return _Lost(exc, pending)
        self._rollback(conn)
        if isinstance(exc, psycopg.errors.UndefinedTable | psycopg.errors.InvalidSchemaName):
            return StoreUnavailable(
                f"dibs is not set up in the database {self.where}: {_first_line(exc)}",
                hint="run `dibs init --store URL` once to create its tables",
            )
        return StoreIOError(
            f"PostgreSQL at {self.where} refused the operation: {_first_line(exc)}; nothing "
            "was recorded",
            hint="run `dibs doctor`; if it persists, report it with the message above",
        )

    def _rollback(self, conn: psycopg.Connection[Any]) -> None:
        try:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.execute(Q["rollback"])
        except psycopg.Error:
            self._drop()

    def _gave_up(self, lost: _Lost) -> StoreUnavailable:
        unknown = lost.pending is not None
        silent = f" (no answer within {self.op_timeout:g} s)" if self.timeouts else ""
        return StoreUnavailable(
            f"lost the connection to PostgreSQL at {self.where}{silent} and could not reconnect "
            f"within {self.retry_for:g} s: {_first_line(lost.cause)}"
            + ("; the operation may or may not have been recorded" if unknown else ""),
            hint=("see what happened with `dibs status` and `dibs log`; " if unknown else "")
            + _HINT,
        )

    # Setting up -------------------------------------------------------------------------

    def schema_version(self) -> int | None:
        """The dibs schema version of the database (None: dibs was never set up there)."""
        conn = self._connect()
        try:
            return self._schema_version(conn)
        except psycopg.Error as exc:
            raise self._translate(conn, exc, None) from exc

    def _schema_version(self, conn: psycopg.Connection[Any]) -> int | None:
        exists = conn.execute(Q["schema_exists"]).fetchone()
        if exists is None or not exists[0]:
            return None
        row = conn.execute(Q["schema_version"]).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def create(self, *, boot: str | None = None, mono_offset: int = 0) -> None:
        """Apply missing migrations and create the namespace; safe to call again.

        Args:
            boot: the new namespace's boot id (default: a random one). `dibs store migrate`
                passes the local store's, with the *mono_offset* that continues its clock.
        """
        from dibs.ground.version import __version__

        conn = self._connect()
        try:
            with conn.transaction():
                conn.execute(Q["migrate_lock"])
                current = self._schema_version(conn) or 0
                if current > SCHEMA:
                    raise self._too_new(current)
                for version, sql in migrations():
                    if version > current:
                        conn.execute(sql.encode())
                        conn.execute(
                            Q["record_migration"], {"version": version, "dibs": __version__}
                        )
                conn.execute(
                    Q["create_namespace"],
                    {
                        "ns": self.namespace,
                        "boot": boot or "pg-" + os.urandom(8).hex(),
                        "mono_offset": mono_offset,
                    },
                )
        except psycopg.Error as exc:
            raise self._translate(conn, exc, None) from exc
        self._state = None

    def _too_new(self, version: int) -> StoreUnavailable:
        return StoreUnavailable(
            f"the dibs schema in {self.where} is version {version}; this dibs knows up to "
            f"version {SCHEMA}",
            hint="upgrade dibs on this machine (every machine must run a dibs that knows the "
            "database's schema)",
        )

    def _load(self, conn: psycopg.Connection[Any]) -> State:
        """Open the namespace: check the schema, load the newest checkpoint and the tail."""
        try:
            row = conn.execute(Q["open"], {"ns": self.namespace}).fetchone()
        except psycopg.errors.UndefinedTable as exc:
            raise StoreUnavailable(
                f"dibs is not set up in the database {self.where}",
                hint="run `dibs init --store URL` once to create its tables",
            ) from exc
        if row is None:
            version = self.schema_version()
            if version is not None and version != SCHEMA:
                raise self._version_error(version)
            raise StoreUnavailable(
                f"the namespace {self.namespace!r} does not exist in {self.where}",
                hint="run `dibs init --store URL` in the repository (once per namespace), or "
                "set store.namespace / DIBS_NAMESPACE to the team's namespace",
            )
        version, boot, offset, _seq, checkpoint_seq, checkpoint = row
        if version != SCHEMA:
            raise self._version_error(int(version))
        self._boot, self._offset = boot, int(offset)
        state = State()
        if checkpoint is not None:
            try:
                state = State.from_json(json.loads(checkpoint))
                self._checkpoint_at = (int(checkpoint_seq), len(checkpoint))
            except (ValueError, KeyError, TypeError):
                state = State()  # a checkpoint is a cache: a bad one costs a replay
        self._state = state
        self._since_checkpoint = 0
        since = state.seq
        while True:
            rows = conn.execute(
                Q["events_page"], {"ns": self.namespace, "since": since, "limit": _PAGE}
            ).fetchall()
            self._apply_bodies(state, [body for _, body in rows])
            if len(rows) < _PAGE:
                return state
            since = state.seq

    def _version_error(self, version: int) -> StoreUnavailable:
        if version > SCHEMA:
            return self._too_new(version)
        return StoreUnavailable(
            f"the dibs schema in {self.where} is version {version}; this dibs needs version "
            f"{SCHEMA}",
            hint="run `dibs init --store URL` once to migrate it (other machines keep working "
            "after they upgrade dibs)",
        )

    def _apply_bodies(self, state: State, bodies: list[str]) -> None:
        if not bodies:
            return
        text = "\n".join(bodies)
        try:
            events = json.loads("[" + text.replace("\n", ",") + "]")
        except ValueError as exc:
            raise CorruptLog(
                f"an event of namespace {self.namespace!r} in {self.where} is not JSON: {exc}",
                hint="run `dibs doctor` to find it",
            ) from exc
        event: Event
        for event in events:
            if type(event) is not dict or event.get("schema_version") != SCHEMA_VERSION:
                raise CorruptLog(
                    f"an event of namespace {self.namespace!r} is not a schema-"
                    f"{SCHEMA_VERSION} event: {str(event)[:200]}",
                    hint="upgrade dibs if a newer version wrote it; else run `dibs doctor`",
                )
            apply(state, event)
        self._since_checkpoint += len(text)

    # Writing ----------------------------------------------------------------------------

    def transact(self, decide: DecideFn) -> Decision:
        """Decide and append atomically (see `dibs.store.base.Store.transact`)."""
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
                        return self._step(conn, decide, request)
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
        self, conn: psycopg.Connection[Any], pipeline: psycopg.Pipeline, since: int
    ) -> tuple[Any, Any]:
        """Round trip 1: lock the namespace, then read the clock and the events after *since*."""
        if self._listening:
            conn.execute(Q["unlisten"])
            self._listening = False
        conn.execute(Q["begin"])
        params = {"ns": self.namespace, "since": since}
        locked = conn.execute(Q["lock_and_catch_up"], params)
        # A Sync, not a mere flush: only after a Sync is the session "idle in transaction"
        # on the server, so that idle_in_transaction_session_timeout ends it (and frees the
        # namespace lock) if this client stops before it commits.
        pipeline.sync()
        row = locked.fetchone()
        if row is None:
            raise _Reload
        seq, boot, offset, micros, count, bodies = row
        if boot != self._boot or int(offset) != self._offset or seq < since:
            raise _Reload
        if count != seq - since:
            # We waited for the lock: read what the writer before us added (see the query).
            caught = conn.execute(Q["catch_up"], params)
            pipeline.sync()
            micros, count, bodies = _one(caught)
        if count != seq - since:
            raise CorruptLog(
                f"namespace {self.namespace!r} in {self.where} is at seq {seq} but has "
                f"{count} events after {since}: the log has a gap",
                hint="run `dibs doctor`",
            )
        return micros, bodies

    def _step(self, conn: psycopg.Connection[Any], decide: DecideFn, request: str) -> Decision:
        """One decision: optimistically in one round trip, else under the namespace lock.

        Optimism pays when writers rarely meet; when they do, each miss costs round trips,
        so after a miss the next decisions take the lock straight away for a while.
        """
        if (self.clock is not None or self._synced is not None) and self._pessimistic <= 0:
            for _ in range(_OPTIMISTIC_TRIES):
                decision = self._optimistic(conn, decide, request)
                if decision is not None:
                    return decision
            self._pessimistic = _PESSIMISTIC_AFTER_MISS
        self._pessimistic -= 1
        return self._locked(conn, decide, request)

    def _sync(self, micros: int) -> None:
        self._synced = (int(micros), time.monotonic_ns())

    def _estimate(self) -> tuple[Now, int | None]:
        """The deciding time for an optimistic decision, and what the server must check."""
        if self.clock is not None:
            return self.clock(), None
        assert self._synced is not None  # noqa: S101 -- _step only comes here once synced
        micros, at = self._synced
        # Stay a little behind the server: a time it has not reached would be refused.
        estimate = micros + (time.monotonic_ns() - at) // 1000 - _CLOCK_MARGIN_US
        return self._now(estimate), estimate

    def _optimistic(
        self, conn: psycopg.Connection[Any], decide: DecideFn, request: str
    ) -> Decision | None:
        """Decide on the cached state; prove it current with the write itself (or a read).

        Returns None when the state was not current: it has caught up, decide again. No
        lock is held across a round trip, so a slow or paused client stalls nobody.
        """
        pending: tuple[Decision, list[Event]] | None = None
        state = self._state if self._state is not None else self._load(conn)
        try:
            if self._listening:
                conn.execute(Q["unlisten"])
                self._listening = False
            now, decided_us = self._estimate()
            decision = decide(state, now)
            events = seal(decision.events, state.seq)
            if events:
                pending = (decision, events)
                params = self._append_params(state, events, request)
                params["decided_us"] = decided_us
                added, micros, _ = _one(conn.execute(Q["append_if_current"], params))
                self._sync(micros)
                if added:
                    self._check_appended(added, len(events))
                    for event in events:
                        apply(state, event)
                    self._since_checkpoint += sum(len(b) for b in params["bodies"])
                    self._maybe_checkpoint(conn)
                    return decision
            caught = conn.execute(Q["catch_up"], {"ns": self.namespace, "since": state.seq})
            micros, count, bodies = _one(caught)
            self._sync(micros)
        except psycopg.Error as exc:
            raise self._translate(conn, exc, pending) from exc
        if not events and count == 0:
            # Nothing was written since the state we decided on: the answer stands.
            return decision
        if count:
            self._apply_bodies(state, bodies.split("\n"))
        return None

    def _locked(self, conn: psycopg.Connection[Any], decide: DecideFn, request: str) -> Decision:
        """The pessimistic path: two round trips holding the namespace lock in between."""
        pending: tuple[Decision, list[Event]] | None = None
        try:
            state = self._state if self._state is not None else self._load(conn)
            with conn.pipeline() as pipeline:
                micros, bodies = self._begin(conn, pipeline, state.seq)
                self._sync(micros)
                if bodies:
                    self._apply_bodies(state, bodies.split("\n"))
                now = self._now(micros)
                decision = decide(state, now)
                events = seal(decision.events, state.seq)
                if events:
                    pending = (decision, events)
                    params = self._append_params(state, events, request)
                    params["decided_us"] = None  # decided at the server's own reading
                    added = conn.execute(Q["append_if_current"], params)
                    conn.execute(Q["commit"])
                    self._check_appended(_one(added)[0], len(events))
                else:
                    conn.execute(Q["commit"])
        except psycopg.Error as exc:
            raise self._translate(conn, exc, pending) from exc
        except BaseException:
            self._rollback(conn)
            raise
        for event in events:
            apply(state, event)
        if events:
            self._since_checkpoint += sum(len(body) for body in params["bodies"])
        self._maybe_checkpoint(conn)
        return decision

    def _check_appended(self, added: int, expected: int) -> None:
        if added != expected:
            raise StoreIOError(
                f"namespace {self.namespace!r} moved while this client held its lock; nothing "
                "was recorded",
                hint="run `dibs doctor`; retry the command",
            )

    def _now(self, micros: int) -> Now:
        if self.clock is not None:
            return self.clock()
        return Now(self._boot, micros * 1000 - self._offset, micros / 1e6)

    def _append_params(self, state: State, events: list[Event], request: str) -> dict[str, Any]:
        tokens = [e.get("token") for e in events]
        freeing = any(e["op"] in _FREEING for e in events)
        return {
            "notify": f"{self.namespace}:{events[-1]['seq']}" if freeing else "",
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
            "bodies": [encode(e)[:-1].decode() for e in events],
        }

    def _settle(
        self,
        conn: psycopg.Connection[Any],
        request: str,
        pending: tuple[Decision, list[Event]],
    ) -> Decision | None:
        """After a lost COMMIT: the decision if it was recorded, None if it was not.

        The namespace lock is taken first: the transaction that sent the COMMIT held it, so
        once we have it that transaction has ended, and the answer cannot change later.
        """
        decision, events = pending
        try:
            with conn.pipeline():
                conn.execute(Q["begin"])
                conn.execute(Q["lock_namespace"], {"ns": self.namespace})
                found = conn.execute(Q["find_request"], {"ns": self.namespace, "request": request})
                conn.execute(Q["commit"])
                row = found.fetchone()
        except psycopg.Error as exc:
            raise self._translate(conn, exc, pending) from exc
        if row is None:
            return None
        state = self._state
        if state is not None and state.seq == events[0]["seq"] - 1:
            for event in events:
                apply(state, event)
        else:
            self._state = None  # reload on next use
        return decision

    def _maybe_checkpoint(self, conn: psycopg.Connection[Any]) -> None:
        state = self._state
        if state is None:
            return
        if self._since_checkpoint < max(self.checkpoint_bytes, self._checkpoint_at[1]):
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
                self._apply_bodies(state, bodies.split("\n"))
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
            return bool(self._notes)

        with self._tlock:
            return bool(self._retrying(wait, allow=timeout))

    # Reading ----------------------------------------------------------------------------

    def read(self) -> tuple[State, Now]:
        """Catch up (no lock) and return the state (do not change it) and the server's time."""

        def read(conn: psycopg.Connection[Any]) -> tuple[State, Now]:
            state = self._state if self._state is not None else self._load(conn)
            caught = conn.execute(Q["catch_up"], {"ns": self.namespace, "since": state.seq})
            micros, _count, bodies = _one(caught)
            if bodies:
                self._apply_bodies(state, bodies.split("\n"))
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

    def _decode(self, seq: int, body: str) -> Event:
        from dibs.core.events import decode

        return decode(body, where=f"{self.url} seq {seq}")

    def tail(self, count: int) -> list[Event]:
        """The last *count* events, oldest first."""
        if count <= 0:
            return []

        def tail(conn: psycopg.Connection[Any]) -> list[Any]:
            return conn.execute(Q["tail"], {"ns": self.namespace, "count": count}).fetchall()

        with self._tlock:
            rows: list[Any] = self._retrying(tail)
        return [self._decode(0, body) for (body,) in rows]

    # Checking ---------------------------------------------------------------------------

    def check(self, *, repair: bool = False) -> list[Finding]:
        """Replay the whole log; check its counters, its checkpoints and this client's cache.

        The counters, the checkpoints and every event are read in one snapshot, so that
        writers going on meanwhile can never look like a damaged namespace; repairs only
        ever raise the fencing counter (a single ``greatest`` under the row's lock).
        """
        findings: list[Finding] = []
        with self._tlock:
            counters, wanted, rebuilt, at_seq = self._retrying(self._snapshot)
        if counters is None:
            raise StoreUnavailable(
                f"the namespace {self.namespace!r} does not exist in {self.where}",
                hint="run `dibs init --store URL` in the repository",
            )
        seq, last_token, count, highest = counters
        if not seq == count == (highest or 0) == rebuilt.seq:
            findings.append(
                {
                    "kind": "counter-mismatch",
                    "message": f"the namespace is at seq {seq} but holds {count} events "
                    f"(highest {highest}); a replay reaches {rebuilt.seq}",
                    "repair": "none automatic: restore the events table from a backup",
                    "repaired": False,
                }
            )
        if last_token != rebuilt.last_token:
            findings.append(
                {
                    "kind": "token-counter",
                    "message": f"the namespace's last fencing token is {last_token}; the log's "
                    f"is {rebuilt.last_token}",
                    "repair": "raise the counter to the larger of the two (it never goes down)",
                    "repaired": repair,
                }
            )
            if repair:
                token = max(last_token, rebuilt.last_token)
                with self._tlock:
                    self._retrying(
                        lambda conn: conn.execute(
                            Q["raise_last_token"], {"ns": self.namespace, "token": token}
                        )
                    )
        for cp_seq, text in wanted.items():
            try:
                data = json.dumps(State.from_json(json.loads(text)).to_json(), sort_keys=True)
            except (ValueError, KeyError, TypeError):
                data = ""
            if data != at_seq.get(cp_seq):
                findings.append(
                    {
                        "kind": "checkpoint-differs",
                        "message": f"the checkpoint at seq {cp_seq} differs from a replay of "
                        "the log",
                        "repair": "delete that checkpoint (a new one is written as needed)",
                        "repaired": repair,
                    }
                )
                if repair:
                    with self._tlock:
                        self._retrying(
                            lambda conn, s=cp_seq: conn.execute(
                                Q["drop_checkpoint"], {"ns": self.namespace, "seq": s}
                            )
                        )
        with self._tlock:
            self._state = None  # reload: the cache may have come from a bad checkpoint
        return findings

    def _snapshot(
        self, conn: psycopg.Connection[Any]
    ) -> tuple[Any, dict[int, str], State, dict[int, str]]:
        """The namespace's counters, its checkpoints, a replay of every event, and the replay
        at each checkpoint's seq: all as one committed moment (a repeatable-read snapshot,
        which takes no lock, so writers never wait for a doctor)."""
        conn.execute(Q["begin_snapshot"])
        try:
            counters = conn.execute(Q["counters"], {"ns": self.namespace}).fetchone()
            rows = conn.execute(Q["checkpoints"], {"ns": self.namespace}).fetchall()
            wanted = {int(seq): state for seq, state in rows}
            rebuilt = State()
            at_seq: dict[int, str] = {}
            while True:
                self._arm(conn)  # each page gets op_timeout, however long the log
                page = conn.execute(
                    Q["events_page"], {"ns": self.namespace, "since": rebuilt.seq, "limit": _PAGE}
                ).fetchall()
                for seq, body in page:
                    apply(rebuilt, self._decode(seq, body))
                    if rebuilt.seq in wanted:
                        at_seq[rebuilt.seq] = json.dumps(rebuilt.to_json(), sort_keys=True)
                if len(page) < _PAGE:
                    break
            conn.execute(Q["commit"])
        except BaseException:
            self._rollback(conn)
            raise
        return counters, wanted, rebuilt, at_seq

    # Moving a local store in ------------------------------------------------------------

    def import_log(self, lines: list[bytes], state: State, *, boot: str, mono_offset: int) -> None:
        """Copy a whole log (its lines, as the local store holds them) into this namespace.

        One transaction: the namespace must be empty, and either every event lands or none.
        The namespace takes the log's clock (*boot*, and the *mono_offset* that continues its
        monotonic readings), so the leases in it keep their remaining time.
        """
        params: dict[str, list[Any]] = {
            "seqs": [],
            "ops": [],
            "agents": [],
            "resources": [],
            "tokens": [],
            "bodies": [],
        }
        for line in lines:
            event = json.loads(line)
            params["seqs"].append(event["seq"])
            params["ops"].append(event["op"])
            params["agents"].append(event.get("agent"))
            params["resources"].append(event.get("resource"))
            params["tokens"].append(event.get("token"))
            params["bodies"].append(line.rstrip(b"\n").decode())
        conn = self._connect()
        try:
            with conn.transaction():
                row = conn.execute(Q["lock_namespace"], {"ns": self.namespace}).fetchone()
                if row is None or row[0] != 0:
                    raise UsageError(
                        f"the namespace {self.namespace!r} in {self.where} is not empty"
                        + (f" (it holds {row[0]} events)" if row is not None else ""),
                        hint="migrate into a new namespace: set DIBS_NAMESPACE (or "
                        "store.namespace) to an unused name",
                    )
                for start in range(0, len(lines), _PAGE):
                    conn.execute(
                        Q["import_events"],
                        {"ns": self.namespace}
                        | {key: value[start : start + _PAGE] for key, value in params.items()},
                    )
                conn.execute(
                    Q["import_counters"],
                    {
                        "ns": self.namespace,
                        "seq": state.seq,
                        "token": state.last_token,
                        "boot": boot,
                        "mono_offset": mono_offset,
                    },
                )
        except psycopg.Error as exc:
            raise self._translate(conn, exc, None) from exc
        self._state = None

    def server_clock_ns(self) -> int:
        """The server's ``clock_timestamp()`` in nanoseconds since the epoch."""
        conn = self._connect()
        return int(_one(conn.execute(Q["server_clock"]))[0])

    def close(self) -> None:
        """Close the connection (and stop the watchdog)."""
        self._closing = True
        with self._tlock:
            self._drop()
