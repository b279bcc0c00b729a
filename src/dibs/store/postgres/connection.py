"""Connecting to PostgreSQL: the session a store keeps, its retries, its watchdog, its errors.

A `Session` holds one connection (autocommit; transactions are explicit), reconnects after
a lost one for up to ``retry_for`` seconds, shuts down a request that outlives
``op_timeout`` (a network that swallows packets gives no error at all), and maps psycopg's
errors to dibs errors that say how to mend them. It also keeps the client's cached `State`
and its estimate of the server's clock, which every other part of the store uses.

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
import time

import psycopg
from psycopg import conninfo as _conninfo

from dibs.core.events import SCHEMA_VERSION
from dibs.core.state import State, apply
from dibs.ground.errors import CorruptLog, StoreIOError, StoreUnavailable, UsageError
from dibs.ground.now import Now
from dibs.store.postgres import arrays, wake

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.events import Event
    from dibs.core.leases import Decision
    from dibs.store.base import Clock

#: The schema version this dibs reads and writes (``sql/migrate_NNN.sql`` up to it).
SCHEMA = 6
NAMESPACE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
CHECKPOINT_BYTES = 64 * 1024
#: About how long an event's line is, to turn a checkpoint's weight into a stride of events.
_EVENT_BYTES = 256
# An optimistic decision that meets a namespace moved by someone else catches up and tries
# again this many times before taking the namespace lock (which always makes progress).
_OPTIMISTIC_TRIES = 2
_PESSIMISTIC_AFTER_MISS = 16
_CLOCK_MARGIN_US = 1000
#: See `Session.async_after_us`. 0, always: measured on 2 shared cores, 16 clients in a claim
#: loop made 0.55-0.59x the raw update with 0, 0.49x with 1000 (only after a queue) and 0.40x
#: with every append synchronous, and the 10,000-agent fleet did no worse (bench/fleet.py).
_ASYNC_AFTER_US = 0
_PAGE = 5000
#: Seconds between pings while waiting for a notification (see `wait_for_change`).
_PING_EVERY = 1.0
_SQL_DIR = os.path.join(os.path.dirname(__file__), "sql")
#: Rows expiring this long after the estimated server time are read with the namespace lock
#: (nanoseconds): the estimate may lag, and a row found live needs no second look.
_EXPIRY_MARGIN_NS = 2 * 10**9
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
    if not url.startswith(("postgres://", "postgresql://")):  # a key=value string
        return _conninfo.make_conninfo(**{k: v for k, v in params.items() if k != "password"})
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


class Session:
    """A namespace in a PostgreSQL database (see `dibs.store.postgres.store`).

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
        self._cursor: psycopg.Cursor[Any] | None = None  # made by `_fetch_one`, reused
        self._connected_once = False
        self._listening = False
        #: Releases notified in this namespace since the last wait began (see `_noted`).
        self._notes = 0
        #: The scopes the current wait is for (None: any release wakes it; `wake.wakes`).
        self._wanted: list[str] | None = None
        self._state: State | None = None
        #: Rows of dibs.live read under their lock and found expired (see `live.expiring`).
        self._confirmed: dict[tuple[str, str], int] = {}
        self._answered = 0.0  # when the first round trip of a locked write was answered
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
        #: When a dict, where the time of locked writes goes (`profile_locked`; bench only).
        self.profile: dict[str, float] | None = None
        #: A commuting append that waited longer than this (microseconds) for the namespace
        #: lock frees the lock before the disk flush and is made durable by a second
        #: transaction in the same call (docs/explanation/postgres.md, "Durable before
        #: answered"); 0 (the default): always; a larger value keeps one synchronous
        #: transaction when nobody queues.
        self.async_after_us = _ASYNC_AFTER_US
        #: Decide again after every commuting append and fail loudly if the answer differs
        #: (`dibs.store.postgres.commuting`; the test suite sets DIBS_VERIFY_COMMUTING=1).
        self.verify_commuting = os.environ.get("DIBS_VERIFY_COMMUTING") == "1"
        self._armed: tuple[float, Any] | None = None  # (deadline, connection) of a request
        #: The server process of the last connection given up (see `_end_orphan`).
        self._orphan: int | None = None
        self._backend: int | None = None
        self._watchdog: Any = None
        self._closing = False

    # Connections ------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        conn = self._conn
        if conn is not None and not conn.closed:
            return conn
        self._listening = False
        # The cache may hold events that were committed but not yet durable (a commuting
        # append commits asynchronously, and its writer's second transaction flushes it an
        # instant later): a crash loses them, and breaks every connection. So a new
        # connection reads the state afresh, never trusting what the one before it read.
        self._state = None
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
        arrays.register(conn)
        self._backend = conn.info.backend_pid  # known while the connection works, not after
        self._conn = conn
        self._connected_once = True
        return conn

    def _fetch_one(self, conn: psycopg.Connection[Any], query: str, params: Any) -> Any:
        """The one row *query* returns (outside a pipeline), through one cursor per connection,
        made on first use and reused: the statements of every claim, release, heartbeat and
        read skip making a cursor, which cost a third of psycopg's client CPU for a small
        statement (about 30 us of 110)."""
        cursor = self._cursor
        if cursor is None or cursor.connection is not conn:
            cursor = self._cursor = conn.cursor()
        return _one(cursor.execute(query, params))

    def _noted(self, note: psycopg.Notify) -> None:
        """Count a release notification, whenever psycopg receives it.

        psycopg hands notifications that arrive while a query runs (the LISTEN and catch-up
        of `wait_for_change` itself) only to handlers, never to ``notifies()``, so dibs waits
        with a handler alone: a release landing in that moment is counted, not missed.
        """
        if wake.wakes(note.payload, self.namespace, self._wanted):
            self._notes += 1

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._cursor = None
        self._listening = False
        if conn is not None:
            self._orphan = self._backend
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

    def _end_orphan(self, conn: psycopg.Connection[Any]) -> None:
        """End the server process of the connection given up, if it is still there, and wait
        until it has gone (at most op_timeout).

        A request whose answer was lost may not even have reached the server: held up on the
        network, it could still run after the store looked for it, found nothing and decided
        again. Once its process has gone it has either committed or never will. Only a
        process of this user and database that started before this session is touched (a
        process id may be reused)."""
        pid = self._orphan
        if pid is None:
            return
        deadline = time.monotonic() + self.op_timeout
        while conn.execute(Q["end_backend"], {"pid": pid}).fetchone() is not None:
            if time.monotonic() >= deadline:
                raise _Lost(
                    TimeoutError(f"the server process {pid} of a lost connection lingers"), None
                )
            time.sleep(0.01)
        self._orphan = None

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

    # The cache and the clock -----------------------------------------------------------

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

    def _now(self, micros: int) -> Now:
        if self.clock is not None:
            return self.clock()
        return Now(self._boot, micros * 1000 - self._offset, micros / 1e6)

    def _keys(self, keys: tuple[list[str], list[str]]) -> dict[str, Any]:
        return {"ns": self.namespace, "keys_agent": keys[0], "keys_resource": keys[1]}

    def _count(self, key: str) -> None:
        if self.profile is not None:
            self.profile[key] = self.profile.get(key, 0.0) + 1

    def _decode(self, seq: int, body: str) -> Event:
        from dibs.core.events import decode

        return decode(body, where=f"{self.url} seq {seq}")

    def _apply_bodies(self, state: State, text: str) -> list[Event]:
        """Apply the events whose bodies *text* holds, one per line, as the server sends them;
        returns them."""
        if not text:
            return []
        try:
            events: list[Event] = json.loads("[" + text.replace("\n", ",") + "]")
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
        return events
