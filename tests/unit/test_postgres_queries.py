"""Every statement in the PostgreSQL store's queries.sql is one the store sends: a query no
code names is dead text that reviews would still have to keep right."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "dibs" / "store" / "postgres"


def test_every_named_query_is_used_by_the_store() -> None:
    text = (PACKAGE / "sql" / "queries.sql").read_text()
    names = re.findall(r"^-- name: (\S+)", text, flags=re.MULTILINE)
    assert names
    code = "\n".join(p.read_text() for p in PACKAGE.glob("*.py"))
    used = set(re.findall(r"""Q\[["']([a-z_0-9]+)["']\]""", code))
    assert [] == sorted(set(names) - used)
    assert [] == sorted(used - set(names))
