"""Exactly one winner across processes and connections, with the PostgreSQL store.

`make test` runs a small but real race (8 processes); `make soak` runs the full one: 32
connections from 32 processes x 500 rounds, for one issue and for overlapping globs.
"""

from __future__ import annotations

import pytest

from dibs.store.postgres import PostgresStore
from tests.integration.test_races import check_history, run_race

pytestmark = pytest.mark.postgres


def race_url(pg_database: str) -> str:
    store = PostgresStore(pg_database, namespace="race")
    store.create()
    store.close()
    return pg_database


@pytest.mark.parametrize("kind", ["exact", "glob"])
def test_processes_race_with_one_winner_per_round(pg_database: str, kind: str) -> None:
    """8 processes x 50 rounds through PostgreSQL: one winner, increasing tokens, no lost event."""
    url = race_url(pg_database)
    check_history(url, run_race(url, kind, 8, 50), 50)


@pytest.mark.soak
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("kind", ["exact", "glob"])
def test_thirty_two_connections_race_for_five_hundred_rounds(pg_database: str, kind: str) -> None:
    """32 connections from 32 processes x 500 rounds, one issue or overlapping globs."""
    url = race_url(pg_database)
    check_history(url, run_race(url, kind, 32, 500), 500)
