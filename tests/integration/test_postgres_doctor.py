"""`dibs doctor` against a real PostgreSQL namespace that other processes keep writing to."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from dibs.service import Coordinator
from tests.conftest import Cli

pytestmark = pytest.mark.postgres

WRITER = textwrap.dedent(
    """
    import os, sys
    from dibs.service import Coordinator
    repo, name, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    dibs = Coordinator.open(repo)
    dibs.register(name, ttl=3600)
    print("ready", flush=True)
    n = 0
    while not os.path.exists(stop):
        dibs.claim([f"issue:{name}-{n % 7}", f"lock:{name}"])
        dibs.release()
        n += 1
    """
)


def _counters(url: str, namespace: str) -> tuple[int, int]:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT last_token, (SELECT coalesce(max(token), 0) FROM dibs.events "
            "WHERE namespace = %s) FROM dibs.namespaces WHERE name = %s",
            (namespace, namespace),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _watch_counter(url: str, namespace: str, stop: threading.Event, seen: list[int]) -> None:
    """Sample the namespace's fencing counter as fast as it can until *stop*."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            row = conn.execute(
                "SELECT last_token FROM dibs.namespaces WHERE name = %s", (namespace,)
            ).fetchone()
            assert row is not None
            seen.append(int(row[0]))


@pytest.mark.timeout(600)
def test_doctor_finds_nothing_and_never_lowers_the_counter_while_others_write(
    cli: Cli, repo: Path, pg_database: str, procs: list[subprocess.Popen[Any]]
) -> None:
    """Writers claim and release in a loop while `dibs doctor` (and `--repair`) run over and
    over: no run reports a finding, and the fencing counter never goes down."""
    assert 0 == cli("init", "--store", pg_database).returncode
    with Coordinator.open(repo) as dibs:
        # History for the replay to chew on, so that writers move the namespace meanwhile.
        dibs.register("history", ttl=3600)
        for n in range(600):
            dibs.claim([f"issue:old-{n % 11}"])
            dibs.release()
        namespace = dibs.store.namespace  # type: ignore[attr-defined]
    stop_file = repo.parent / "stop-writers"
    for k in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(repo), f"w{k}", str(stop_file)],
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert "ready" == proc.stdout.readline().strip()
    stop = threading.Event()
    seen: list[int] = []
    watcher = threading.Thread(target=_watch_counter, args=(pg_database, namespace, stop, seen))
    watcher.start()
    reports = []
    try:
        for run in range(8):
            args = ["doctor", "--json"] + (["--repair"] if run % 2 else [])
            out = cli(*args)
            reports.append((out.returncode, json.loads(out.stdout)["findings"]))
    finally:
        stop_file.touch()
        stop.set()
        watcher.join()
        for proc in procs:
            assert 0 == proc.wait(timeout=60)
    assert [(0, [])] * 8 == reports
    lowered = [(a, b) for a, b in itertools.pairwise(seen) if b < a]
    assert [] == lowered, "the fencing counter went down"
    assert len(set(seen)) > 10  # the writers really wrote while doctor ran
    last_token, highest = _counters(pg_database, namespace)
    assert last_token == highest
