"""The arrays a write sends, in PostgreSQL's binary array format, made in one pass.

psycopg adapts a Python list by looking at its items to choose a type, for every list of
every statement: about a fifth of a client's time per write in the 16-client claim loop of
``bench/postgres.py``. The arrays dibs sends always hold text or bigint (or NULL), so they
travel as `Texts` and `Bigints`, whose dumpers write the binary format (one dimension, lower
bound 1) straight away. `arrays` wraps the known parameters of a write; `register` tells a
connection about the two types.
"""

from __future__ import annotations

import struct

from psycopg import adapt, pq

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    import psycopg

_TEXT, _TEXT_ARRAY = 25, 1009
_INT8, _INT8_ARRAY = 20, 1016
_HEAD = struct.Struct("!iiiii")  # dimensions, has nulls, item type, length, lower bound
_EMPTY = struct.Struct("!iii")
_INT8_ITEM = struct.Struct("!iq")  # length 8, then the value
_NULL = b"\xff\xff\xff\xff"  # length -1

#: Parameters of dibs.append and dibs.append_commuting that are text[] and bigint[].
TEXT_KEYS = frozenset(
    (
        *("ops", "agents", "resources", "bodies", "secrets", "scopes", "templates"),
        *("reads", "above", "below", "harmless"),
    )
)
BIGINT_KEYS = frozenset(("seqs", "tokens", "monos", "ttls"))


class Texts(list["str | None"]):
    """A list of str or None sent as text[]."""


class Bigints(list["int | None"]):
    """A list of int or None sent as bigint[]."""


def _array(items: list[bytes], nulls: int, oid: int) -> bytes:
    if not items:
        return _EMPTY.pack(0, 0, oid)
    return _HEAD.pack(1, nulls, oid, len(items), 1) + b"".join(items)


class _TextsDumper(adapt.Dumper):
    format = pq.Format.BINARY
    oid = _TEXT_ARRAY

    def dump(self, obj: Any) -> bytes:
        items = []
        nulls = 0
        for item in obj:
            if item is None:
                items.append(_NULL)
                nulls = 1
            else:
                data = item.encode()
                items.append(len(data).to_bytes(4, "big") + data)
        return _array(items, nulls, _TEXT)


class _BigintsDumper(adapt.Dumper):
    format = pq.Format.BINARY
    oid = _INT8_ARRAY

    def dump(self, obj: Any) -> bytes:
        items = []
        nulls = 0
        for item in obj:
            if item is None:
                items.append(_NULL)
                nulls = 1
            else:
                items.append(_INT8_ITEM.pack(8, item))
        return _array(items, nulls, _INT8)


class _Made(Texts):
    """Texts sent the same in every write (``harmless``), dumped once."""

    def __init__(self, items: list[str]):
        super().__init__(items)
        self.dumped = _TextsDumper(_Made).dump(items)


class _MadeDumper(adapt.Dumper):
    format = pq.Format.BINARY
    oid = _TEXT_ARRAY

    def dump(self, obj: Any) -> bytes:
        dumped: bytes = obj.dumped
        return dumped


#: Lists sent the same in every write, by their items (see `_Made`).
_MADE: dict[tuple[str, ...], _Made] = {}
_CONSTANT_KEYS = frozenset(("harmless",))


def register(conn: psycopg.Connection[Any]) -> None:
    """Let *conn* send `Texts` and `Bigints`."""
    conn.adapters.register_dumper(Texts, _TextsDumper)
    conn.adapters.register_dumper(Bigints, _BigintsDumper)
    conn.adapters.register_dumper(_Made, _MadeDumper)


def arrays(params: dict[str, Any]) -> dict[str, Any]:
    """*params* with its known array parameters as `Texts` and `Bigints` (a new dict)."""
    out = dict(params)
    for key, value in params.items():
        if key in _CONSTANT_KEYS:
            items = tuple(value)
            made = _MADE.get(items)
            if made is None:
                made = _MADE[items] = _Made(list(items))
            out[key] = made
        elif key in TEXT_KEYS:
            out[key] = Texts(value)
        elif key in BIGINT_KEYS:
            out[key] = Bigints(value)
    return out
