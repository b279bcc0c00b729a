"""The arrays a write sends (`dibs.store.postgres.arrays`) read back as what was sent."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dibs.store.postgres import arrays
from tests.conftest import pg_admin

pytestmark = pytest.mark.postgres

# PostgreSQL text holds no NUL character; every other one round-trips.
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
INT8 = st.integers(-(2**63), 2**63 - 1)


@pytest.fixture(scope="module")
def conn() -> Iterator[psycopg.Connection[object]]:
    with pg_admin() as made:
        arrays.register(made)
        yield made


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.none() | TEXT, max_size=6), ints=st.lists(st.none() | INT8, max_size=6))
def test_texts_and_bigints_read_back_as_sent(
    conn: psycopg.Connection[object], texts: list[str | None], ints: list[int | None]
) -> None:
    row = conn.execute(
        "SELECT %(ops)b::text[], %(tokens)b::bigint[]",
        arrays.arrays({"ops": texts, "tokens": ints}),
    ).fetchone()
    assert row == (texts, ints)


def test_a_list_sent_the_same_every_time_is_dumped_once_and_reads_back(
    conn: psycopg.Connection[object],
) -> None:
    first = arrays.arrays({"harmless": ["heartbeat", "record"]})["harmless"]
    assert first is arrays.arrays({"harmless": ["heartbeat", "record"]})["harmless"]
    assert first is not arrays.arrays({"harmless": ["heartbeat"]})["harmless"]
    row = conn.execute("SELECT %(harmless)b::text[]", {"harmless": first}).fetchone()
    assert row == (["heartbeat", "record"],)


def test_only_the_known_parameters_are_wrapped() -> None:
    params = {"ops": ["acquire"], "ttls": [None, 5], "ns": "repo", "keys_agent": ["a"]}
    out = arrays.arrays(params)
    assert type(out["ops"]) is arrays.Texts
    assert type(out["ttls"]) is arrays.Bigints
    assert out["ns"] == "repo"
    assert type(out["keys_agent"]) is list
    assert out == params
