"""The claim path's stand-ins for ``json`` and ``re``: the same answers as the real thing.

`dibs.ground.fastjson` calls ``json``'s C accelerator directly, and names, line numbers and
glob characters are checked with string methods, so that a CLI call imports neither ``json``
nor ``re`` (`tests/unit/test_public_api.py`). Each is compared here with what it replaces.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dibs.core import resources
from dibs.ground import fastjson
from dibs.ground.names import NAME, is_name

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _same(a: Any, b: Any) -> bool:
    """Equal, NaN included (NaN != NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _outcome(function: Any, *args: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return "ok", function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 -- the error itself is what is compared
        return type(exc).__name__, str(exc)


@settings(max_examples=400)
@given(JSON_VALUES, st.booleans())
def test_dumps_is_compact_json(value: Any, ensure_ascii: bool) -> None:
    expected = json.dumps(value, ensure_ascii=ensure_ascii, separators=(",", ":"))
    assert fastjson.dumps(value, ensure_ascii=ensure_ascii) == expected


@pytest.mark.parametrize(
    "value",
    [
        {"a": object()},
        {1: "int key", 2.5: "float key", None: "none key", False: "bool key"},
        {(1, 2): "tuple key"},
        "a bare string\u00e9",
        [float("inf"), float("-inf"), float("nan")],
        {"seq": 1, "note": "\ud800 a lone surrogate"},
    ],
)
def test_dumps_gives_what_json_gives_or_its_error(value: Any) -> None:
    for ensure_ascii in (True, False):
        expected = _outcome(json.dumps, value, ensure_ascii=ensure_ascii, separators=(",", ":"))
        assert _outcome(fastjson.dumps, value, ensure_ascii=ensure_ascii) == expected


def test_dumps_refuses_a_circular_value_as_json_does() -> None:
    circular: list[Any] = []
    circular.append(circular)
    assert _outcome(fastjson.dumps, circular) == _outcome(
        json.dumps, circular, separators=(",", ":")
    )


@settings(max_examples=400)
@given(JSON_VALUES)
def test_loads_reads_what_json_writes(value: Any) -> None:
    for text in (json.dumps(value), json.dumps(value, ensure_ascii=False, indent=1)):
        for data in (text, text.encode("utf-8", "surrogatepass")):
            assert _same(fastjson.loads(data), json.loads(data))


@pytest.mark.parametrize(
    "data",
    [
        '{"a": 1}',
        b'{"a": 1}\n',
        b'[{"a":1},{"b":2}]',
        '{"a": 1}  \t\r\n',
        '{"a": 1} x',
        '{"a": 1}{"b": 2}',
        '{"a": 1',
        b'{"a": "\xff"}',
        b"{\0",
        b'{"a":"\xed\xa0\x80"}',
        "\ufeff{}",
        b"\xef\xbb\xbf{}",
        '{"a": NaN, "b": -Infinity, "c": Infinity}',
        '{"a": 1e400, "b": -0.0, "c": 12345678901234567890}',
        '{"a": "\\ud800"}',
        '{"a": "tab\tinside"}',
        '{"a": 1, "a": 2}',
        "  {}",
        "[" * 100_000,
        "",
        "[]",
        "3",
        b"",
        bytearray(b'{"a": 1}'),
    ],
)
def test_loads_gives_what_json_gives_or_its_error(data: Any) -> None:
    ours, theirs = _outcome(fastjson.loads, data), _outcome(json.loads, data)
    assert ours[0] == theirs[0]
    if ours[0] == "ok":
        assert _same(ours[1], theirs[1])
    else:
        assert ours[1] == theirs[1]


@settings(max_examples=1000)
@given(st.text(alphabet="abcxyz019._-AZ \n/é", max_size=70) | st.from_regex(NAME, fullmatch=True))
def test_is_name_is_the_name_pattern(text: str) -> None:
    assert is_name(text) == (re.fullmatch(NAME, text) is not None)


@settings(max_examples=1000)
@given(st.text(alphabet="0123456789-x²٣\n ", max_size=12))
def test_line_numbers_are_one_to_nine_ascii_digits(text: str) -> None:
    expected = re.fullmatch(rf"[0-9]{{1,{resources.LINE_DIGITS}}}", text) is not None
    assert resources._is_line_number(text) == expected


@settings(max_examples=1000)
@given(st.text(alphabet="ab/*?[]\\.", max_size=20))
def test_the_first_glob_character_is_found(text: str) -> None:
    found = re.search(r"[*?\[\\]", text)
    assert resources._first_glob_char(text) == (found.start() if found else -1)
