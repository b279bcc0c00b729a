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
    from collections.abc import Callable
    from typing import Any

    import psycopg

_TEXT, _TEXT_ARRAY = 25, 1009
_INT8, _INT8_ARRAY = 20, 1016
_HEAD = struct.Struct("!iiiii")  # dimensions, has nulls, item type, length, lower bound
_EMPTY = struct.Struct("!iii")
_INT8_ITEM = struct.Struct("!iq")  # length 8, then the value
_NULL = b"\xff\xff\xff\xff"  # length -1

#: Parameters of dibs.append and dibs.append_commuting that are text[] and bigint[] (and
#: ``harmless``, text[] too, the same in every write: see `_Made`).
TEXT_KEYS = frozenset(
    {"ops", "agents", "resources", "bodies", "secrets", "scopes", "templates", "reads"}
    | {"above", "below"}
)
BIGINT_KEYS = frozenset(("seqs", "tokens", "monos", "ttls"))


class Texts(list["str | None"]):
    """A list of str or None sent as text[]."""


class Bigints(list["int | None"]):
    """A list of int or None sent as bigint[]."""


def _text_item(item: str) -> bytes:
    data = item.encode()
    return len(data).to_bytes(4, "big") + data


def _int8_item(item: int) -> bytes:
    return _INT8_ITEM.pack(8, item)


def _array(obj: Any, oid: int, item: Callable[[Any], bytes]) -> bytes:
    """The binary array of *obj*'s items (None: NULL), each written by *item*."""
    if not obj:
        return _EMPTY.pack(0, 0, oid)
    items = [_NULL if value is None else item(value) for value in obj]
    nulls = 1 if any(value is None for value in obj) else 0
    return _HEAD.pack(1, nulls, oid, len(items), 1) + b"".join(items)


class _TextsDumper(adapt.Dumper):
    format = pq.Format.BINARY
    oid = _TEXT_ARRAY

    def dump(self, obj: Any) -> bytes:
        return _array(obj, _TEXT, _text_item)


class _BigintsDumper(adapt.Dumper):
    format = pq.Format.BINARY
    oid = _INT8_ARRAY

    def dump(self, obj: Any) -> bytes:
        return _array(obj, _INT8, _int8_item)


class _Made(Texts):
    """Texts sent the same in every write (``harmless``), dumped once."""

    def __init__(self, items: list[str]):
        super().__init__(items)
        self.dumped = _array(items, _TEXT, _text_item)


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
