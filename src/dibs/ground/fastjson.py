"""JSON on the hot path without the ``json`` package: its C accelerator, called directly.

Importing ``json`` imports ``re`` and compiles seven regular expressions (and with ``re`` come
``enum``, ``functools`` and ``collections``): more than a third of what a `dibs claim` costs
beyond Python's own start. The accelerator ``_json``, which ``json`` itself calls, does the
same work without them.

Only the plain cases take this way: encoding compactly (``separators=(",", ":")``) and decoding
text that starts with ``{`` or ``[``. Everything else, and every failure (a value JSON cannot
hold, malformed text, a Python without ``_json``), is handed to ``json`` itself, which gives
the result or raises the error it always did. `tests/unit/test_without_re.py` compares the two.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

try:
    import _json
except ImportError:  # pragma: no cover -- CPython always has it
    _json = None  # type: ignore[assignment]

_SPACE = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Decoder:
    """What the C scanner reads from a ``json.JSONDecoder``: the defaults of ``json.loads``."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


#: The scanner ``json.loads`` uses (``_json.make_scanner`` reads a decoder's attributes only).
_scan: Callable[[str, int], tuple[Any, int]] | None = (
    _json.make_scanner(_Decoder()) if _json is not None else None  # type: ignore[arg-type]
)


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``."""
    text = _plain_text(data)
    if text is not None:
        try:
            value, end = _scan(text, 0)  # type: ignore[misc]
        except Exception:  # noqa: BLE001, S110 -- json below says what was wrong
            pass
        else:
            if end == len(text) or not text[end:].strip(_SPACE):
                return value
    import json

    return json.loads(data)


def _plain_text(data: bytes | str) -> str | None:
    """*data* as the text ``json.loads`` would read, when it starts with ``{`` or ``[`` (bytes:
    UTF-8, as json detects it when there is no BOM and no NUL in the second byte); else None."""
    if _scan is None:
        return None
    if isinstance(data, str):
        return data if data[:1] in ("{", "[") else None
    if isinstance(data, bytes) and data[:1] in (b"{", b"[") and data[1:2] != b"\0":
        try:
            return data.decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return None
    return None


def _unencodable(_value: Any) -> Any:
    raise TypeError


def dumps(value: Any, *, ensure_ascii: bool = True) -> str:
    """``json.dumps(value, ensure_ascii=ensure_ascii, separators=(",", ":"))``."""
    if _json is not None and not isinstance(value, str):
        quote = _json.encode_basestring_ascii if ensure_ascii else _json.encode_basestring
        try:
            encode = _json.make_encoder({}, _unencodable, quote, None, ":", ",", False, False, True)
            return "".join(encode(value, 0))
        except Exception:  # noqa: BLE001, S110 -- json below raises its own error
            pass
    import json

    return json.dumps(value, ensure_ascii=ensure_ascii, separators=(",", ":"))
