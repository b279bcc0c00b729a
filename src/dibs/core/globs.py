"""Gitignore-style globs anchored at the repository root, and whether two can meet.

Syntax (patterns arrive normalised: relative, ``/``-separated, no empty, ``.`` or ``..``
segments):

* a segment that is exactly ``**`` matches zero or more whole segments;
* ``*`` matches any run of characters except ``/`` (``**`` inside a longer segment is ``*``);
* ``?`` matches one character except ``/``;
* ``[...]`` matches one character from a class: ranges ``a-z``, negation with a leading ``!`` or
  ``^``, ``]`` first is a literal, backslash escapes; it never matches ``/``;
* a backslash makes the next character literal.

**Containment** (gitignore's rule): a pattern *covers* a file when it matches the file or any
folder above it, so ``src/auth`` covers ``src/auth/login.py``. In other words every pattern ends
with an implicit, optional ``/**``.

`intersects` decides whether some file is covered by both patterns. It is exact, not a
heuristic: a memoised search over pairs of positions (segments, then characters) in which a
``**`` or a ``*`` either matches nothing or swallows one unit of the other side. A shortest
common file never needs both stars to swallow the same unit, so the search is finite and
complete; `witness` returns the file it finds.

Pure: no I/O.
"""

from __future__ import annotations

import functools
import re

from dibs.errors import InvalidResource

TYPE_CHECKING = False
if TYPE_CHECKING:
    # Every token is (kind, negated, ranges): "c" a literal (one range of one character),
    # "[" a class, "?" any character (a negated empty class), "*" any run of characters.
    Token = tuple[str, bool, tuple[tuple[str, str], ...]]
    Segment = tuple[Token, ...]
    Part = Segment | None  # None is a whole "**" segment

_STAR: Token = ("*", False, ())
_ANY: Token = ("?", True, ())
_DSTAR = None
# Characters tried first when a witness needs "some character": printable, never "/".
_POOL = "xa0_Z~"


class Glob:
    """A parsed pattern: its text and its segments (``None`` for a ``**`` segment)."""

    __slots__ = ("_regex", "parts", "text")

    def __init__(self, text: str, parts: tuple[Part, ...]):
        self.text = text
        self.parts = parts
        self._regex: re.Pattern[str] | None = None

    def __repr__(self) -> str:
        return f"Glob({self.text!r})"

    @property
    def regex(self) -> re.Pattern[str]:
        """Matches ``"/" + path`` when the pattern covers path (containment included)."""
        if self._regex is None:
            body = "".join(
                "(?:/[^/]+)*" if part is _DSTAR else "/" + _segment_regex(part)
                for part in self.parts
            )
            self._regex = re.compile(body + "(?:/[^/]+)*", re.DOTALL)
        return self._regex


def _error(text: str, problem: str, hint: str) -> InvalidResource:
    return InvalidResource(f"path pattern {text!r}: {problem}", hint=hint)


def _parse_class(segment: str, start: int, text: str) -> tuple[Token, int]:
    """Parse ``[...]`` beginning at *start* (the ``[``); return the token and the next index."""
    i = start + 1
    negated = i < len(segment) and segment[i] in "!^"
    if negated:
        i += 1
    ranges: list[tuple[str, str]] = []
    first = True
    while True:
        if i >= len(segment):
            raise _error(
                text,
                "'[' is never closed",
                "close the character class with ']', or write \\[ for a literal bracket "
                "(a class cannot contain '/')",
            )
        ch = segment[i]
        if ch == "]" and not first:
            return ("[", negated, tuple(ranges)), i + 1
        first = False
        if ch == "\\":
            if i + 1 >= len(segment):
                raise _error(text, "ends with a lone backslash", "escape a character: \\*")
            i += 1
            ch = segment[i]
        lo = ch
        if i + 2 < len(segment) and segment[i + 1] == "-" and segment[i + 2] != "]":
            hi = segment[i + 2]
            if hi == "\\" and i + 3 < len(segment):
                hi = segment[i + 3]
                i += 1
            if hi < lo:
                raise _error(text, f"range {lo}-{hi} is reversed", f"write {hi}-{lo}")
            ranges.append((lo, hi))
            i += 3
        else:
            ranges.append((lo, lo))
            i += 1


def _literal(ch: str) -> Token:
    return ("c", False, ((ch, ch),))


def _parse_segment(segment: str, text: str) -> Segment:
    tokens: list[Token] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch == "*":
            if not tokens or tokens[-1] != _STAR:
                tokens.append(_STAR)
            i += 1
        elif ch == "?":
            tokens.append(_ANY)
            i += 1
        elif ch == "[":
            token, i = _parse_class(segment, i, text)
            tokens.append(token)
        elif ch == "\\":
            if i + 1 >= len(segment):
                raise _error(text, "ends with a lone backslash", "escape a character: \\*")
            tokens.append(_literal(segment[i + 1]))
            i += 2
        else:
            tokens.append(_literal(ch))
            i += 1
    return tuple(tokens)


@functools.lru_cache(maxsize=65536)
def parse_glob(text: str) -> Glob:
    """Parse a normalised pattern.

    Raises:
        InvalidResource: an unclosed ``[``, a reversed range or a lone trailing backslash.
    """
    if not text:
        raise _error(text, "is empty", "to claim the whole repository write **")
    parts: list[Part] = []
    for segment in text.split("/"):
        if segment == "**":
            if parts and parts[-1] is _DSTAR:
                continue  # a/**/**/b is a/**/b
            parts.append(_DSTAR)
        else:
            parts.append(_parse_segment(segment, text))
    return Glob(text, tuple(parts))


def is_literal(text: str) -> bool:
    """Whether *text* has no wildcard at all (escaped characters count as literal)."""
    return all(
        part is not _DSTAR and all(token[0] == "c" for token in part)
        for part in parse_glob(text).parts
    )


def literal_prefix(glob: Glob) -> tuple[str, ...]:
    """The leading segments that are plain names, without wildcards."""
    prefix = []
    for part in glob.parts:
        if part is _DSTAR or any(token[0] != "c" for token in part):
            break
        prefix.append("".join(token[2][0][0] for token in part))
    return tuple(prefix)


def covers(glob: Glob, path: str) -> bool:
    """Whether *glob* matches file *path* or a folder above it."""
    return glob.regex.fullmatch("/" + path) is not None


def _segment_regex(segment: Segment) -> str:
    out = []
    for kind, negated, ranges in segment:
        if kind == "c":
            out.append(re.escape(ranges[0][0]))
        elif kind == "?":
            out.append("[^/]")
        elif kind == "*":
            out.append("[^/]*")
        else:
            body = "".join(
                re.escape(lo) if lo == hi else f"{re.escape(lo)}-{re.escape(hi)}"
                for lo, hi in ranges
            )
            out.append(f"[^/{body}]" if negated else f"(?!/)[{body}]")
    return "".join(out)


# Intersection -----------------------------------------------------------------------------


def _char_ok(token: Token, ch: str) -> bool:
    kind, negated, ranges = token
    if ch == "/":
        return False
    if kind == "*":
        return True
    return any(lo <= ch <= hi for lo, hi in ranges) != negated


def _char_meet(a: Token, b: Token) -> str | None:
    """A character both single-character tokens accept, or None.

    The candidates are enough: a positive class meets another set at one of its range ends,
    or just past the end of a range the other excludes; two negated classes (both infinite)
    meet just past the largest character either excludes.
    """
    candidates = list(_POOL)
    highest = "/"
    for _, _, ranges in (a, b):
        for lo, hi in ranges:
            candidates += [lo, hi, chr(ord(hi) + 1), chr(max(ord(lo) - 1, 0))]
            highest = max(highest, hi)
    candidates.append(chr(ord(highest) + 1))
    for ch in candidates:
        if _char_ok(a, ch) and _char_ok(b, ch):
            return ch
    return None


@functools.lru_cache(maxsize=65536)
def _segment_meet(a: Segment, b: Segment) -> str | None:
    """A non-empty segment name both segment patterns match, or None."""
    memo: dict[tuple[int, int], str | None] = {}

    def meet(i: int, j: int) -> str | None:
        key = (i, j)
        if key in memo:
            return memo[key]
        result: str | None = None
        if i == len(a) and j == len(b):
            result = ""
        elif i < len(a) and a[i] == _STAR:
            result = meet(i + 1, j)
            if result is None and j < len(b):
                if b[j] == _STAR:
                    result = meet(i, j + 1)
                else:
                    ch = _char_meet(_STAR, b[j])
                    rest = meet(i, j + 1) if ch is not None else None
                    result = None if rest is None or ch is None else ch + rest
        elif j < len(b) and b[j] == _STAR:
            result = meet(i, j + 1)
            if result is None and i < len(a):
                ch = _char_meet(a[i], _STAR)
                rest = meet(i + 1, j) if ch is not None else None
                result = None if rest is None or ch is None else ch + rest
        elif i < len(a) and j < len(b):
            ch = _char_meet(a[i], b[j])
            rest = meet(i + 1, j + 1) if ch is not None else None
            result = None if rest is None or ch is None else ch + rest
        memo[key] = result
        return result

    found = meet(0, 0)
    # Both patterns match "" only if both are all stars, and then both match "x" too.
    return "x" if found == "" else found


def _path_meet(a: tuple[Part, ...], b: tuple[Part, ...]) -> list[str] | None:
    """Segment names of a path both part lists match, or None."""
    memo: dict[tuple[int, int], list[str] | None] = {}

    def meet(i: int, j: int) -> list[str] | None:
        key = (i, j)
        if key in memo:
            return memo[key]
        result: list[str] | None = None
        if i == len(a) and j == len(b):
            result = []
        elif i < len(a) and a[i] is _DSTAR:
            result = meet(i + 1, j)
            if result is None and j < len(b):
                part = b[j]
                if part is _DSTAR:
                    result = meet(i, j + 1)
                else:
                    name = _segment_meet(part, (_STAR,))
                    rest = meet(i, j + 1) if name is not None else None
                    result = None if rest is None or name is None else [name, *rest]
        elif j < len(b) and b[j] is _DSTAR:
            result = meet(i, j + 1)
            part = a[i] if i < len(a) else None
            if result is None and part is not None:
                name = _segment_meet(part, (_STAR,))
                rest = meet(i + 1, j) if name is not None else None
                result = None if rest is None or name is None else [name, *rest]
        elif i < len(a) and j < len(b):
            pa, pb = a[i], b[j]
            if pa is not None and pb is not None:
                name = _segment_meet(pa, pb)
                rest = meet(i + 1, j + 1) if name is not None else None
                result = None if rest is None or name is None else [name, *rest]
        memo[key] = result
        return result

    return meet(0, 0)


def _with_containment(parts: tuple[Part, ...]) -> tuple[Part, ...]:
    return parts if parts and parts[-1] is _DSTAR else (*parts, _DSTAR)


@functools.lru_cache(maxsize=65536)
def _witness(a: Glob, b: Glob) -> str | None:
    names = _path_meet(_with_containment(a.parts), _with_containment(b.parts))
    if names is None:
        return None
    # Only two all-"**" patterns meet on the empty path, and they cover "x" as well.
    return "/".join(names) if names else "x"


def witness(a: Glob, b: Glob) -> str | None:
    """A file path covered by both *a* and *b*, or None when there is none."""
    return _witness(a, b)


def intersects(a: Glob, b: Glob) -> bool:
    """Whether some file is covered by both *a* and *b* (containment included)."""
    if a.text == b.text:
        return True
    return _witness(a, b) is not None
