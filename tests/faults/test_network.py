"""Network faults between agents and PostgreSQL: a proxy that blackholes, resets and delays.

Clients claim through `FaultProxy`, whose mode is switched every ~1.5 s (pass, latency,
blackhole, reset). Each client holds a lease only as long as it can be sure of it: it acts
(writes the fenced register) only before the time it *sent* its claim plus the ttl, and the
register checks the token against the store directly, not through the proxy. The checker then
proves: no two holders, no acknowledged grant lost, every accepted write inside a live hold;
lost answers are settled by their idempotency key or reported as "may or may not".

`make test`: 6 clients for 12 s; `make soak`: 16 clients for 60 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from dibs.store.postgres import PostgresStore
from tests.faults.history import FencedRegister, History, check
from tests.faults.proxy import FaultProxy

CLIENT = textwrap.dedent(
    """
    import json, os, random, sys, time
    from pathlib import Path
    from dibs.core.leases import eviction_reason
    from dibs.ground.errors import Conflict, DibsError, LeaseLost, StoreUnavailable
    from dibs.service import Coordinator
    from dibs.store.postgres import PostgresStore
    from tests.faults.history import FencedRegister, History

    via, direct, folder, index, seconds = sys.argv[1:6]
    index, seconds, ttl = int(index), float(seconds), 3.0
    rng = random.Random(index)
    me = f"c{index}"
    store = PostgresStore(via, namespace="net", op_timeout=1.0, retry_for=4.0, connect_timeout=1.0)
    dibs = Coordinator(store)
    truth = PostgresStore(direct, namespace="net")  # the register's own view of the store
    register = FencedRegister(Path(folder))
    history = History()
    late, unknown = 0, 0
    while True:
        try:
            dibs.register(me, ttl=ttl)
            break
        except DibsError:
            time.sleep(0.2)

    def current(resource, token):
        def ask():
            state, now = truth.read()
            lease = state.claims.get(resource, {}).get(me)
            ctx = dibs.context(now)
            live = lease is not None and lease["token"] == token
            live = live and eviction_reason(state, lease, ctx) is None
            return live, state.seq
        return ask

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        resource = f"issue:{rng.randrange(5)}"
        op = history.record(me, "acquire", resource)
        sent = time.monotonic()
        try:
            [grant] = dibs.claim([resource], ttl=ttl)
        except Conflict:
            history.done(op, "refused")
            time.sleep(0.05)
            continue
        except StoreUnavailable as exc:
            ambiguous = "may or may not" in exc.message
            unknown += ambiguous
            history.done(op, "unknown" if ambiguous else "failed")
            continue
        except LeaseLost:
            history.done(op, "failed")
            continue
        history.done(op, "ok", grant["token"])
        for _ in range(3):
            # Act only while the lease is surely held: counted from when the claim was sent.
            if time.monotonic() >= sent + ttl - 0.5:
                late += 1
                break
            write = history.record(me, "write", resource)
            accepted = register.write(resource, grant["token"], current(resource, grant["token"]))
            history.done(write, "ok" if accepted else "refused", grant["token"])
            time.sleep(0.05)
        try:
            dibs.release([resource])
        except DibsError:
            pass
    out = {"history": history.dump(), "late": late, "unknown": unknown,
           "timeouts": store.timeouts, "settled": store.settled}
    Path(folder, f"{me}.json").write_text(json.dumps(out))
    """
)

MODES = ["pass", "latency", "pass", "blackhole", "pass", "reset", "pass", "latency", "blackhole"]


def run(pg_database: str, tmp_path: Path, clients: int, seconds: float) -> dict[str, Any]:
    setup = PostgresStore(pg_database, namespace="net")
    setup.create()
    setup.close()
    parsed = urlparse(pg_database)
    proxy = FaultProxy((parsed.hostname or "127.0.0.1", parsed.port or 5432))
    via = parsed._replace(netloc=f"{parsed.username}@127.0.0.1:{proxy.port}").geturl()
    FencedRegister(tmp_path)
    stop = threading.Event()

    def faults() -> None:
        k = 0
        while not stop.wait(1.5):
            proxy.set(MODES[k % len(MODES)])
            k += 1
        proxy.set("pass")

    switcher = threading.Thread(target=faults, daemon=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT, via, pg_database, str(tmp_path), str(i), str(seconds)],
            cwd=Path(__file__).resolve().parents[2],
        )
        for i in range(clients)
    ]
    switcher.start()
    try:
        for p in procs:
            assert 0 == p.wait(timeout=seconds + 120)
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
        proxy.close()
    history, totals = History(), {"late": 0, "unknown": 0, "timeouts": 0, "settled": 0}
    for i in range(clients):
        data = json.loads((tmp_path / f"c{i}.json").read_text())
        history.ops += History.load(data["history"]).ops
        for key in totals:
            totals[key] += data[key]
    reader = PostgresStore(pg_database, namespace="net")
    verdict = check(reader.events(), history, FencedRegister(tmp_path))
    reader.close()
    ops = len(history.ops)
    print(
        f"network: {clients} clients x {seconds:g} s, {ops} operations, {proxy.switches} mode "
        f"switches, {totals['timeouts']} silent requests timed out, {totals['settled']} lost "
        f"answers settled by idempotency key, {totals['unknown']} reported as unknown, "
        f"{verdict.violations} violations"
    )
    return {"verdict": verdict, "switches": proxy.switches, **totals}


@pytest.mark.postgres
def test_claims_through_a_faulty_network_stay_correct(pg_database: str, tmp_path: Path) -> None:
    """Blackholes, resets and latency: no double holder, nothing acknowledged lost."""
    result = run(pg_database, tmp_path, clients=6, seconds=12)
    result["verdict"].assert_clean()
    assert result["switches"] >= 6
    assert result["timeouts"] > 0  # a blackhole really swallowed requests


@pytest.mark.postgres
@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_sixteen_clients_for_a_minute_of_network_faults(pg_database: str, tmp_path: Path) -> None:
    """The issue's size: 16 clients, faults switched every 1.5 s for a minute."""
    result = run(pg_database, tmp_path, clients=16, seconds=60)
    result["verdict"].assert_clean()
