"""Setting up and checking a namespace: schema and migrations, loading, `dibs doctor`, and
moving a local store in."""

from __future__ import annotations

import json
import os

import psycopg

from dibs.core.due import agent_expiry
from dibs.core.resources import scope
from dibs.core.state import State, apply
from dibs.ground.errors import StoreUnavailable, UsageError
from dibs.store.postgres import live
from dibs.store.postgres.connection import (
    _PAGE,
    SCHEMA,
    Q,
    Session,
    migrations,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.store.base import Finding


class Admin(Session):
    """What `dibs init`, `dibs doctor` and `dibs store migrate` need of a namespace."""

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
        version, boot, offset, _seq, checkpoint_seq, checkpoint, micros = row
        if version != SCHEMA:
            raise self._version_error(int(version))
        self._boot, self._offset = boot, int(offset)
        self._sync(micros)
        self._confirmed = {}
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
            self._apply_bodies(state, "\n".join(body for _, body in rows))
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

    # Checking ---------------------------------------------------------------------------

    def check(self, *, repair: bool = False) -> list[Finding]:
        """Replay the whole log; check its counters, its checkpoints and this client's cache.

        The counters, the checkpoints and every event are read in one snapshot, so that
        writers going on meanwhile can never look like a damaged namespace; repairs only
        ever raise the fencing counter (a single ``greatest`` under the row's lock).
        """
        findings: list[Finding] = []
        with self._tlock:
            counters, wanted, rebuilt, at_seq, rows = self._retrying(self._snapshot)
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
                cached = State.from_json(json.loads(text)).to_json()
                data = json.dumps(live.without_expiry(cached), sort_keys=True)
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
        findings += self._check_live(rebuilt, rows, repair=repair)
        with self._tlock:
            self._state = None  # reload: the cache may have come from a bad checkpoint
        return findings

    def _check_live(self, rebuilt: State, rows: list[Any], *, repair: bool) -> list[Finding]:
        """dibs.live against a replay of the log: each row must belong to a current lease
        (same token) or registration (same secret), and never expire before the log says.

        A missing row is no finding: the log's expiry then holds (a namespace from schema 1
        has none until its next decision). Repairs delete a stale row only if it is still the
        one found, and raise a row that lags the log to the log's expiry.
        """
        stale: list[tuple[str, str, Any, Any]] = []
        behind: list[tuple[str, str, int]] = []
        for agent_name, resource, token, secret, expires in rows:
            if resource == "":
                agent = rebuilt.agents.get(agent_name)
                if agent is None or agent["secret"] != secret:
                    stale.append((agent_name, resource, token, secret))
                elif expires < agent_expiry(agent):
                    behind.append((agent_name, resource, agent_expiry(agent)))
                continue
            lease = rebuilt.claims.get(resource, {}).get(agent_name)
            if lease is None or lease["token"] != token:
                stale.append((agent_name, resource, token, secret))
            elif expires < lease["expires"]:
                behind.append((agent_name, resource, lease["expires"]))
        findings: list[Finding] = []
        if stale:
            findings.append(
                {
                    "kind": "live-row-stale",
                    "message": f"{len(stale)} row(s) of dibs.live belong to no current lease or "
                    f"registration (first: {stale[0][0]} {stale[0][1] or '(agent)'})",
                    "repair": "delete them (each only if it is still the row found)",
                    "repaired": repair,
                }
            )
        if behind:
            findings.append(
                {
                    "kind": "live-row-behind",
                    "message": f"{len(behind)} row(s) of dibs.live expire before the log says "
                    f"(first: {behind[0][0]} {behind[0][1] or '(agent)'})",
                    "repair": "raise them to the log's expiry",
                    "repaired": repair,
                }
            )
        if repair and (stale or behind):

            def mend(conn: psycopg.Connection[Any]) -> None:
                for agent_name, resource, token, secret in stale:
                    conn.execute(
                        Q["drop_live_row"],
                        self._row(agent_name, resource) | {"token": token, "secret": secret},
                    )
                for agent_name, resource, expires in behind:
                    conn.execute(
                        Q["raise_live_row"], self._row(agent_name, resource) | {"expires": expires}
                    )

            with self._tlock:
                self._retrying(mend)
        return findings

    def _row(self, agent: str, resource: str) -> dict[str, Any]:
        return {"ns": self.namespace, "agent": agent, "resource": resource}

    def _snapshot(
        self, conn: psycopg.Connection[Any]
    ) -> tuple[Any, dict[int, str], State, dict[int, str], list[Any]]:
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
                        replayed = live.without_expiry(rebuilt.to_json())
                        at_seq[rebuilt.seq] = json.dumps(replayed, sort_keys=True)
                if len(page) < _PAGE:
                    break
            rows = conn.execute(Q["live_all"], {"ns": self.namespace}).fetchall()
            conn.execute(Q["commit"])
        except BaseException:
            self._rollback(conn)
            raise
        return counters, wanted, rebuilt, at_seq, rows

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
            "scopes": [],
        }
        for line in lines:
            event = json.loads(line)
            params["seqs"].append(event["seq"])
            params["ops"].append(event["op"])
            params["agents"].append(event.get("agent"))
            params["resources"].append(event.get("resource"))
            params["tokens"].append(event.get("token"))
            params["bodies"].append(line.rstrip(b"\n").decode())
            params["scopes"].append(scope(event.get("resource")))
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
        return int(self._fetch_one(conn, Q["server_clock"], None)[0])
