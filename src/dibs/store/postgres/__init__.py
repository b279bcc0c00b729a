"""The PostgreSQL store: the same rules, one database, agents on many machines.

`PostgresStore` is the store; the modules of this package split it by concern:
``connection`` (connecting, retrying, the watchdog, errors), ``admin`` (schema, migrations,
`dibs doctor`, moving a local store in), ``live`` (expiry outside the log: pure helpers) and
``store`` (transact, read, wait). SQL lives in ``sql/``.
"""

from __future__ import annotations

from dibs.store.postgres.connection import (
    SCHEMA,
    check_namespace,
    describe,
    migrations,
    parse_url,
    without_password,
)
from dibs.store.postgres.store import PostgresStore

__all__ = [
    "SCHEMA",
    "PostgresStore",
    "check_namespace",
    "describe",
    "migrations",
    "parse_url",
    "without_password",
]
