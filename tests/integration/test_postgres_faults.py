"""Faults with the PostgreSQL store: killed backends, a restarted server, a paused client.

Whatever happens: zero double holders, zero acknowledged claims lost, the stale client refused.
The restart test runs its own throw-away cluster (initdb + pg_ctl from the server binaries),
never the machine's service.
"""

from __future__ import annotations

import contextlib
import glob
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from dibs.ground.errors import Conflict, LeaseLost
from dibs.service import Coordinator
from dibs.store.postgres import PostgresStore
from tests.conftest import FakeLiveness, pg_admin
from tests.faults.history import check
from tests.faults.proxy import FaultProxy

pytestmark = pytest.mark.postgres


def setup_namespace(url: str) -> str:
    store = PostgresStore(url, namespace="faults")
    store.create()
    store.close()
    return url


# Workers: claim and release in a loop, reporting what was acknowledged ------------------------


def churn_worker(url: str, index: int, seconds: float, results: Any, ready: Any) -> None:
    """Claim one of three issues, release it, again and again; report every acknowledged act.

    The work starts once every worker is connected and registered (*ready*, a barrier shared
    with the test): on a loaded machine importing and connecting can take seconds, and a fault
    that ends before the workers begin would prove nothing."""
    import faulthandler

    # A hung worker prints where it hangs and exits, instead of stalling the test silently.
    faulthandler.dump_traceback_later(seconds + 60, exit=True)
    acked: list[tuple[str, str, int]] = []
    store = PostgresStore(url, namespace="faults", retry_for=60, lock_hold=2)
    errors: list[str] = []
    with Coordinator(store, liveness=FakeLiveness()) as dibs:
        dibs.register(f"w{index}", ttl=600)
        ready.wait(timeout=120)
        deadline = time.monotonic() + seconds
        n = 0
        while time.monotonic() < deadline:
            n += 1
            text = f"issue:{(n + index) % 3}"
            try:
                [claim] = dibs.claim([text])
            except Conflict:
                continue
            except Exception as exc:  # noqa: BLE001 -- reported to the test, which fails on it
                errors.append(f"claim: {type(exc).__name__}: {exc}")
                continue
            acked.append(("acquire", text, claim["token"]))
            try:
                [released] = dibs.release([text])
            except Exception as exc:  # noqa: BLE001 -- reported to the test, which fails on it
                errors.append(f"release: {type(exc).__name__}: {exc}")
                continue
            acked.append(("release", text, released["token"]))
    results.put((index, acked, errors, len(store.repairs)))


def run_churn(url: str, processes: int, seconds: float, fault: Any) -> list[Any]:
    """Run churn workers while *fault()* runs in this process; return their reports.

    *fault()* starts when every worker is connected and about to work."""
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    ready = ctx.Barrier(processes + 1)
    workers = [
        ctx.Process(target=churn_worker, args=(url, i, seconds, results, ready))
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    try:
        ready.wait(timeout=120)
        fault()
        reports = []
        deadline = time.monotonic() + seconds + 120
        while len(reports) < len(workers) and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                reports.append(results.get(timeout=0.5))
            # A worker that died without reporting fails the test now, not at the deadline.
            assert not any(w.exitcode not in (None, 0) for w in workers)
    finally:
        for w in workers:
            w.join(timeout=30)
            if w.is_alive():
                w.kill()
    assert all(w.exitcode == 0 for w in workers)
    return reports


def check_reports(url: str, reports: list[Any]) -> int:
    """Every acknowledged act is in the log, nobody ever double-held; returns the reconnects."""
    store = PostgresStore(url, namespace="faults")
    try:
        events = list(store.events())
        assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
        logged = {(e["op"], e["resource"], e["token"], e["agent"]) for e in events if "token" in e}
        for index, acked, errors, _ in reports:
            assert [] == errors
            missing = [a for a in acked if (*a, f"w{index}") not in logged]
            assert [] == missing, "an acknowledged act is missing from the log"
        check(events).assert_clean()
        assert [] == store.check()
        assert sum(len(acked) for _, acked, _, _ in reports) > 0
    finally:
        store.close()
    return sum(reconnects for *_, reconnects in reports)


# Killed backends ----------------------------------------------------------------------------


def test_backends_killed_mid_transaction_lose_nothing(pg_database: str) -> None:
    """pg_terminate_backend every few ms under 4 racing processes: no loss, no double holder."""
    url = setup_namespace(pg_database)
    dbname = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    killed: list[int] = []

    def storm() -> None:
        deadline = time.monotonic() + 3.0
        with pg_admin() as conn:
            while time.monotonic() < deadline:
                rows = conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = %s AND application_name = 'dibs' AND pid <> pg_backend_pid()",
                    (dbname,),
                ).fetchall()
                killed.extend(1 for (ok,) in rows if ok)
                time.sleep(0.03)

    reports = run_churn(url, 4, 4.0, storm)
    reconnects = check_reports(url, reports)
    assert len(killed) > 10
    assert reconnects > 0


# A request held up on the network ------------------------------------------------------------


def _backend_alive(pid: int) -> bool:
    with pg_admin() as conn:
        return (
            conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone()
            is not None
        )


def test_a_request_held_up_on_the_network_cannot_land_after_it_was_settled(
    pg_database: str,
) -> None:
    """A claim's statement is held up between client and server; the client gives up on it,
    reconnects, finds it was not recorded and claims again. The held-up statement must never
    run afterwards (it would record the claim twice, or fail the new one on its request key):
    the server process that would run it is ended before the store looks."""
    url = setup_namespace(pg_database)
    parsed = psycopg.conninfo.conninfo_to_dict(url)
    proxy = FaultProxy((str(parsed.get("host", "127.0.0.1")), int(parsed.get("port", 5432))))
    through = url.replace(f":{parsed.get('port', 5432)}/", f":{proxy.port}/")
    store = PostgresStore(through, namespace="faults", op_timeout=1.0, retry_for=20)
    try:
        with Coordinator(store, liveness=FakeLiveness()) as dibs:
            dibs.register("a", ttl=600)
            assert store._conn is not None
            stranded = store._conn.info.backend_pid
            proxy.set("strand")  # this connection's bytes wait in the proxy; new ones flow
            [claim] = dibs.claim(["issue:1"])
            assert store.settled == 1  # the answer was lost and looked for: not recorded
            assert not _backend_alive(stranded)
            proxy.set("pass")  # the held-up statement now reaches... no server process
            time.sleep(0.5)
            acquires = [e for e in store.events() if e["op"] == "acquire"]
            assert [("issue:1", claim["token"])] == [(e["resource"], e["token"]) for e in acquires]
    finally:
        proxy.close()


def test_a_new_connection_never_trusts_what_the_last_one_read(pg_database: str) -> None:
    """A commuting append is readable before it is durable (it is flushed by its writer's next
    statement), so a crash may take back events a client has read; the crash breaks every
    connection. Here the log loses its last event (as a crash before the flush would) and the
    reader's connection is ended: its next read must not show the lost claim."""
    url = setup_namespace(pg_database)
    writer = Coordinator(PostgresStore(url, namespace="faults"), liveness=FakeLiveness())
    reader_store = PostgresStore(url, namespace="faults")
    reader = Coordinator(reader_store, liveness=FakeLiveness())
    try:
        writer.register("w", ttl=600)
        reader.register("r", ttl=600)
        writer.claim(["issue:1"])
        assert ["issue:1"] == [c["resource"] for c in reader.claims()]
        with psycopg.connect(url, autocommit=True) as conn:  # the crash takes the claim back
            conn.execute("ALTER TABLE dibs.events DISABLE TRIGGER events_append_only")
            conn.execute("DELETE FROM dibs.events WHERE namespace = 'faults' AND op = 'acquire'")
            conn.execute(
                "UPDATE dibs.namespaces SET seq = seq - 1, last_token = last_token - 1 "
                "WHERE name = 'faults'"
            )
            conn.execute("DELETE FROM dibs.live WHERE namespace = 'faults' AND resource <> ''")
            conn.execute("ALTER TABLE dibs.events ENABLE TRIGGER events_append_only")
            assert reader_store._conn is not None
            conn.execute("SELECT pg_terminate_backend(%s)", (reader_store._conn.info.backend_pid,))
        assert [] == reader.claims()
        [claim] = reader.claim(["issue:1"])
        assert claim["token"] == 1
    finally:
        writer.close()
        reader.close()


# A restarted server -------------------------------------------------------------------------


def _pg_bin() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    override = os.environ.get("DIBS_TEST_PG_BIN")
    if override:
        return override
    return os.path.dirname(found[-1]) if found else None


class Cluster:
    """A throw-away PostgreSQL cluster in a temporary folder, on a free port."""

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="dibs-pg-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "server.log")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:
            # The server refuses to run as root: run it as the postgres user.
            shutil.chown(self.root, "postgres", "postgres")
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
        self.run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync")

    def run(self, tool: str, *args: str) -> None:
        subprocess.run(
            [*self.as_postgres, os.path.join(self.bindir, tool), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self, *settings: str) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        options += "".join(f" -c {setting}" for setting in settings)
        self.run("pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    bindir = _pg_bin()
    if bindir is None:
        message = "no PostgreSQL server binaries (initdb): set DIBS_TEST_PG_BIN to their folder"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    made = Cluster(bindir)
    try:
        made.start()
        with psycopg.connect(made.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE dibs")
        yield made
    finally:
        made.remove()


def test_server_restarted_mid_run_loses_nothing(cluster: Cluster) -> None:
    """The server crashes (immediate stop) and comes back while 4 processes work: the clients
    reconnect, no acknowledged claim or release is lost, nobody ever double-holds."""
    url = setup_namespace(cluster.url("dibs"))
    restarts: list[float] = []

    def crash_and_restart() -> None:
        time.sleep(1.5)
        cluster.stop("immediate")
        time.sleep(1.0)
        cluster.start()
        restarts.append(time.monotonic())

    reports = run_churn(url, 4, 5.0, crash_and_restart)
    reconnects = check_reports(url, reports)
    assert 1 == len(restarts)
    assert reconnects >= 4  # every worker lost its connection and came back


@pytest.mark.parametrize("async_after_us", [-1, 10**12], ids=["flushed-after", "synchronous"])
def test_an_answered_claim_survives_a_crash_right_after(
    cluster: Cluster, async_after_us: int
) -> None:
    """A commuting claim commits without waiting for the disk (or, when told to keep the
    lock for the flush, synchronously); either way it must be durable before the client
    answers. The WAL writer is slowed to one round per 10 s, so nothing but the client's own
    commits write the claim's commit to disk; the server then crashes (immediate stop: WAL
    still in memory is lost) the moment the claim is answered."""
    slow = Cluster(cluster.bindir)  # its own settings; the module's cluster gives the binaries
    try:
        slow.start("wal_writer_delay=10000")
        with psycopg.connect(slow.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE dibs")
        url = setup_namespace(slow.url("dibs"))
        store = PostgresStore(url, namespace="faults", retry_for=30)
        store.async_after_us = async_after_us
        dibs = Coordinator(store, liveness=FakeLiveness())
        dibs.register("a", ttl=600)
        store.profile = {}
        [claim] = dibs.claim(["issue:1"])
        slow.stop("immediate")
        flushed = {"flushed": 1.0} if async_after_us < 0 else {}
        assert store.profile == {"commuting": 1.0, **flushed}
        dibs.close()
        slow.start()
        after = PostgresStore(url, namespace="faults")
        try:
            acquires = [e for e in after.events() if e["op"] == "acquire"]
        finally:
            after.close()
        assert [("issue:1", claim["token"])] == [(e["resource"], e["token"]) for e in acquires]
    finally:
        slow.remove()


# A client paused past its ttl ---------------------------------------------------------------


def sleepy_holder(url: str, where: str, pipe: Any) -> None:
    """Hold issue:X with a 1 s ttl; on "go", renew it (and, *where* = "in-transaction", stop
    itself with SIGSTOP inside the renew's transaction, holding the namespace lock)."""
    store = PostgresStore(url, namespace="faults", lock_hold=1.0)
    dibs = Coordinator(store, liveness=FakeLiveness())
    dibs.register("sleepy", ttl=1.0)
    dibs.claim(["issue:X"])
    pipe.send("held")
    pipe.recv()
    if where == "in-transaction":
        real_now = PostgresStore._now
        paused: list[bool] = []

        def now_then_stop(self: PostgresStore, micros: int) -> Any:
            if not paused:
                paused.append(True)
                os.kill(os.getpid(), signal.SIGSTOP)
            return real_now(self, micros)

        PostgresStore._now = now_then_stop  # type: ignore[method-assign]
    try:
        dibs.renew(["issue:X"])
        pipe.send("renewed")
    except LeaseLost as exc:
        pipe.send(f"lease-lost: {exc.message}")
    store.close()


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", "rb") as f:
        return f.read().rsplit(b")", 1)[1].split()[0] == b"T"


@pytest.mark.parametrize("where", ["idle", "in-transaction"])
def test_client_paused_past_its_ttl_is_refused_on_waking(pg_database: str, where: str) -> None:
    """SIGSTOP past the ttl (idle, or inside a transaction holding the namespace lock): another
    agent gets the claim, and the woken client is told its lease is lost."""
    url = setup_namespace(pg_database)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    child = ctx.Process(target=sleepy_holder, args=(url, where, theirs))
    child.start()
    other_store = PostgresStore(url, namespace="faults")
    try:
        assert ours.poll(60)
        assert "held" == ours.recv()
        assert child.pid is not None
        if where == "idle":
            os.kill(child.pid, signal.SIGSTOP)
        else:
            ours.send("go")
        deadline = time.monotonic() + 30
        while not _stopped(child.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _stopped(child.pid)
        time.sleep(1.5)  # past the 1 s ttl (and the 1 s lock_hold of the stopped client)
        other = Coordinator(other_store, liveness=FakeLiveness())
        other.register("awake")
        assert "awake" == other.claim(["issue:X"])[0]["agent"]
        os.kill(child.pid, signal.SIGCONT)
        if where == "idle":
            ours.send("go")
        assert ours.poll(60)
        answer = ours.recv()
        assert answer.startswith("lease-lost"), answer
        assert "expired" in answer
        events = list(other_store.events())
        check(events).assert_clean()
        assert ["awake"] == [c["agent"] for c in other.claims()]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid or 0, signal.SIGCONT)
        child.join(30)
        if child.is_alive():
            child.kill()
        other_store.close()


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_long_run_with_restarts_and_killed_backends(cluster: Cluster) -> None:
    """Soak: 8 processes for 60 s while backends are killed and the server restarts 3 times."""
    url = setup_namespace(cluster.url("dibs"))
    soak_db = f"soak{os.getpid()}"
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {soak_db}")
    url = setup_namespace(cluster.url(soak_db))
    stop = threading.Event()

    def faults() -> None:
        for _ in range(3):
            time.sleep(12)
            cluster.stop("immediate")
            time.sleep(1.0)
            cluster.start()
            for _ in range(50):
                with (
                    contextlib.suppress(psycopg.Error),
                    psycopg.connect(cluster.url(), autocommit=True) as conn,
                ):
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE application_name = 'dibs'"
                    )
                time.sleep(0.05)
        stop.set()

    reports = run_churn(url, 8, 60.0, faults)
    assert check_reports(url, reports) > 0
