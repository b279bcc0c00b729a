"""Gitignore-style globs anchored at the repository root, and whether two of them can meet.

Patterns and paths arrive normalised: relative, ``/``-separated, with no empty, ``.`` or ``..``
segment. A pattern is a run of segments:

* a segment that is exactly ``**`` matches zero or more whole path segments (so ``src/**``
  also matches ``src`` itself);
* in any other segment ``*`` matches any run of characters, ``?`` exactly one character, and
  ``[...]`` one character of a class: ranges ``a-z``, negation by a leading ``!`` or ``^``, a
  ``]`` first (after the negation mark, if any) is a literal, a backslash escapes. ``**`` or
  ``***`` inside a segment is just ``*``. None of them ever matches ``/``;
* a backslash makes the next character literal (``\\*`` is a star).

Characters compare by code point: no case folding, no Unicode normalisation.

An unclosed ``[`` (``[]`` and ``[!]`` are unclosed, by the ``]``-first rule), a reversed range
such as ``[z-a]`` (it matches nothing) and a backslash at the end of a segment (``/`` cannot be
escaped) are refused with `InvalidResource`.

**Containment** (gitignore's rule): a pattern *covers* a file when it matches the file or any
folder above it, so ``src/auth`` covers ``src/auth/login.py`` and ``*.py`` covers
``x.py/inner`` but not ``src/a.py``. Every pattern ends with an implicit, optional ``/**``.

`intersects` decides exactly whether some file is covered by both patterns: a search over
pairs of positions, first in the two lists of segments, then in the two token lists of a pair
of segments, where a star (``**`` or ``*``) either ends or swallows one unit (a segment, a
character) that the other side's token accepts. `witness` returns the file found on the way.

Pure: no I/O.
"""

from __future__ import annotations

from dibs.ground.errors import InvalidResource

TYPE_CHECKING = False
if TYPE_CHECKING:
    import re
    from collections.abc import Callable
    from typing import Any, TypeVar

    T = TypeVar("T")
    R = TypeVar("R")
    # A set of characters: (negated, inclusive code-point ranges). A literal is one positive
    # one-character range; "?" is the negated empty set.
    CharSet = tuple[bool, tuple[tuple[int, int], ...]]
    Token = CharSet | None  # None is "*"
    Segment = tuple[Token, ...]
    Part = Segment | None  # None is a whole "**" segment

_ANY: CharSet = (True, ())
_STAR_SEGMENT: Segment = (None,)
_SLASH = ord("/")
_MAX_CODE_POINT = 0x10FFFF
# Tried first when a witness needs some character, so witnesses read as plain names.
_PREFERRED = tuple(map(ord, "xyzab_0"))


#: Results each of the cached functions keeps (it forgets them all when full).
_CACHE_SIZE = 16384


def _cached(function: Callable[..., R]) -> Callable[..., R]:
    """``functools.lru_cache`` without functools: importing it (with collections) costs a CLI
    call about 2 ms, and this module is on every claim's path. A full cache is emptied at once
    instead of one entry at a time; the functions are pure, so only the time differs."""
    memo: dict[tuple[Any, ...], R] = {}

    def cached(*args: Any) -> R:
        try:
            return memo[args]
        except KeyError:
            pass
        if len(memo) >= _CACHE_SIZE:
            memo.clear()
        value = memo[args] = function(*args)
        return value

    cached.__doc__ = function.__doc__
    cached.__name__ = function.__name__
    cached.__wrapped__ = function  # type: ignore[attr-defined]
    return cached


class Glob:
    """A parsed pattern: its ``text`` and its ``segments`` (``None`` for a ``**`` segment).

    Each other segment is a tuple of tokens: ``None`` for ``*``, else a character set
    ``(negated, ((first, last), ...))`` over code points. Immutable by convention.
    """

    __slots__ = ("_match", "segments", "text")

    def __init__(self, text: str, segments: tuple[Part, ...]):
        self.text = text
        self.segments = segments
        self._match: Callable[[str], re.Match[str] | None] | None = None

    def __repr__(self) -> str:
        return f"Glob({self.text!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Glob) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


# Parsing ------------------------------------------------------------------------------------


def _refuse(text: str, problem: str, hint: str) -> InvalidResource:
    return InvalidResource(f"path pattern {text!r}: {problem}", hint=hint)


def _lone_backslash(text: str, segment: str) -> InvalidResource:
    return _refuse(
        text,
        f"segment {segment!r} ends with a backslash that escapes nothing",
        "write \\\\ for a literal backslash; '/' always separates segments and cannot be escaped",
    )


def _class_char(text: str, segment: str, i: int) -> tuple[int, int]:
    """The code point at *i* inside a class (a backslash escapes) and the index after it."""
    if segment[i] != "\\":
        return ord(segment[i]), i + 1
    if i + 1 == len(segment):
        raise _lone_backslash(text, segment)
    return ord(segment[i + 1]), i + 2


def _parse_class(text: str, segment: str, i: int) -> tuple[CharSet, int]:
    """The class whose body starts at *i* (just after ``[``) and the index after its ``]``."""
    negated = i < len(segment) and segment[i] in "!^"
    if negated:
        i += 1
    body_start = i
    ranges: list[tuple[int, int]] = []
    while True:
        if i == len(segment):
            raise _refuse(
                text,
                f"segment {segment!r} has a '[' that is never closed",
                "close the class with ']' or write \\[ for a literal bracket; a ']' right "
                "after '[' or '[!' is a member, so '[]' and '[!]' are not closed",
            )
        if segment[i] == "]" and i > body_start:
            return (negated, tuple(ranges)), i + 1
        first, i = _class_char(text, segment, i)
        last = first
        if i + 1 < len(segment) and segment[i] == "-" and segment[i + 1] != "]":
            last, i = _class_char(text, segment, i + 1)
            if last < first:
                raise _refuse(
                    text,
                    f"range {chr(first)}-{chr(last)} in segment {segment!r} is reversed and "
                    "matches nothing",
                    f"write {chr(last)}-{chr(first)}",
                )
        ranges.append((first, last))


def _parse_segment(text: str, segment: str) -> Segment:
    tokens: list[Token] = []
    i = 0
    while i < len(segment):
        ch = segment[i]
        if ch == "*":
            if not tokens or tokens[-1] is not None:  # "a**b" is "a*b"
                tokens.append(None)
            i += 1
        elif ch == "?":
            tokens.append(_ANY)
            i += 1
        elif ch == "[":
            charset, i = _parse_class(text, segment, i + 1)
            tokens.append(charset)
        else:
            if ch == "\\":
                i += 1
                if i == len(segment):
                    raise _lone_backslash(text, segment)
            code = ord(segment[i])
            tokens.append((False, ((code, code),)))
            i += 1
    return tuple(tokens)


@_cached
def parse_glob(text: str) -> Glob:
    """Parse a normalised pattern; the same text returns the same `Glob` while it is cached.

    Raises:
        InvalidResource: an empty pattern, an unclosed ``[``, a reversed range or a backslash
            at the end of a segment.
    """
    if not text:
        raise _refuse(text, "is empty", "to claim the whole repository write **")
    segments: list[Part] = []
    for segment in text.split("/"):
        if segment != "**":
            segments.append(_parse_segment(text, segment))
        elif not segments or segments[-1] is not None:  # "a/**/**/b" is "a/**/b"
            segments.append(None)
    return Glob(text, tuple(segments))


def _is_literal_segment(part: Part) -> bool:
    return part is not None and all(
        token is not None
        and not token[0]
        and len(token[1]) == 1
        and token[1][0][0] == token[1][0][1]
        for token in part
    )


def is_literal(text: str) -> bool:
    """Whether *text* names one path, with no wildcard (escaped characters are literal).

    Raises:
        InvalidResource: *text* is not a valid pattern.
    """
    return all(_is_literal_segment(part) for part in parse_glob(text).segments)


def literal_prefix(glob: Glob) -> tuple[str, ...]:
    """The leading segments that are plain names (escapes resolved), for bucketing."""
    prefix: list[str] = []
    for part in glob.segments:
        if part is None or not _is_literal_segment(part):
            break
        prefix.append("".join(chr(token[1][0][0]) for token in part if token is not None))
    return tuple(prefix)


# Matching -----------------------------------------------------------------------------------


def _charset_regex(charset: CharSet) -> str:
    import re

    negated, ranges = charset
    if not negated and len(ranges) == 1 and ranges[0][0] == ranges[0][1]:
        return re.escape(chr(ranges[0][0]))
    body = []
    for first, last in ranges:
        # A range such as ".-0" spans "/", which must stay a segment separator.
        pieces = (
            [(first, last)]
            if negated
            else [(first, min(last, _SLASH - 1)), (max(first, _SLASH + 1), last)]
        )
        body += [
            re.escape(chr(a)) + ("" if a == b else "-" + re.escape(chr(b)))
            for a, b in pieces
            if a <= b
        ]
    return "[^/" + "".join(body) + "]" if negated else "[" + "".join(body) + "]"


def _segment_regex(segment: Segment) -> str:
    chunks: list[str] = [""]
    for token in segment:
        if token is None:
            chunks.append("")
        else:
            chunks[-1] += _charset_regex(token)
    out = chunks[0]
    if len(chunks) > 1:
        # Hazard: plain backtracking over "*a*a*a*b" is polynomial in the name's length with the
        # number of stars as the degree. A fixed-length chunk between stars may always take its
        # leftmost fit (any match with it further right still matches with it there), so each
        # such chunk is found lazily and committed to with an atomic group.
        out += "".join(f"(?>[^/]*?{chunk})" for chunk in chunks[1:-1])
        out += "[^/]*" + chunks[-1]
    return "/" + out + "(?![^/])"


def _compile(glob: Glob) -> Callable[[str], re.Match[str] | None]:
    """A matcher of ``"/" + path`` that succeeds exactly when *glob* covers the path.

    It is a prefix match ending at a segment boundary, which is containment. Each run of
    segments after a ``**`` is followed by another ``**`` (the implicit one at least), so it
    too may take its leftmost fit and commit, as stars do inside a segment.
    """
    chunks: list[str] = [""]
    for part in glob.segments:
        if part is None:
            chunks.append("")
        else:
            chunks[-1] += _segment_regex(part)
    out = chunks[0] + "".join(f"(?>(?:/[^/]++)*?{chunk})" for chunk in chunks[1:] if chunk)
    import re  # here: a claim that matches no file against a pattern never pays for it

    return re.compile(out).match


def covers(pattern: Glob, path: str) -> bool:
    """Whether *pattern* matches file *path* or a folder above it."""
    match = pattern._match
    if match is None:
        match = pattern._match = _compile(pattern)
    return match("/" + path) is not None


# Intersection -------------------------------------------------------------------------------


def _contains(charset: CharSet, code: int) -> bool:
    negated, ranges = charset
    return any(first <= code <= last for first, last in ranges) != negated


def _char_meet(a: Token, b: Token) -> str | None:
    """A character other than ``/`` that both tokens accept (``*`` as any one), or None.

    The shared characters form a union of intervals; its least member is 0, "0" (just past
    "/"), the first of a range of a positive set, or just past a range a negated set excludes,
    so those candidates decide it.
    """
    sa = _ANY if a is None else a
    sb = _ANY if b is None else b
    candidates = [*_PREFERRED, 0]
    for _, ranges in (sa, sb):
        for first, last in ranges:
            candidates += (first, last + 1)
    for code in candidates:
        if (
            code not in (_SLASH, _MAX_CODE_POINT + 1)
            and _contains(sa, code)
            and _contains(sb, code)
        ):
            return chr(code)
    return None


def _search(
    a: tuple[T | None, ...],
    b: tuple[T | None, ...],
    meet: Callable[[T | None, T | None], str | None],
) -> list[str] | None:
    """The units of one word both *a* and *b* accept, or None when they share no word.

    *a* and *b* are lists of items where ``None`` is a star, taking any number of units, and
    ``meet(x, y)`` names one unit both items accept (at most one of them a star). A state is a
    pair of positions. A star may end, or swallow one unit the other side accepts. Both stars
    swallowing the same unit is never needed: without that unit both still accept the word.
    Iterative on purpose: a 1,000-character name would overflow a recursive search.
    """
    goal = (len(a), len(b))
    came_from: dict[tuple[int, int], tuple[tuple[int, int], str]] = {(0, 0): ((0, 0), "")}
    queue = [(0, 0)]
    k = 0
    while k < len(queue):
        state = queue[k]
        k += 1
        if state == goal:
            units: list[str] = []
            while state != (0, 0):
                state, unit = came_from[state]
                if unit:
                    units.append(unit)
            units.reverse()
            return units
        i, j = state
        a_star = i < goal[0] and a[i] is None
        b_star = j < goal[1] and b[j] is None
        moves: list[tuple[tuple[int, int], str]] = []
        if a_star:
            moves.append(((i + 1, j), ""))
        if b_star:
            moves.append(((i, j + 1), ""))
        if i < goal[0] and j < goal[1] and not (a_star and b_star):
            shared = meet(a[i], b[j])
            if shared is not None:
                moves.append(((i if a_star else i + 1, j if b_star else j + 1), shared))
        for nxt, label in moves:
            if nxt not in came_from:
                came_from[nxt] = (state, label)
                queue.append(nxt)
    return None


@_cached
def _segment_meet(a: Part, b: Part) -> str | None:
    """A segment name both segment patterns match (``None`` stands for ``*``), or None."""
    chars = _search(
        _STAR_SEGMENT if a is None else a, _STAR_SEGMENT if b is None else b, _char_meet
    )
    if chars is None:
        return None
    # Only two "*" patterns share the empty word, and they share "x" as well.
    return "".join(chars) or "x"


def _with_containment(segments: tuple[Part, ...]) -> tuple[Part, ...]:
    return segments if segments[-1] is None else (*segments, None)


@_cached
def witness(a: Glob, b: Glob) -> str | None:
    """A file path covered by both *a* and *b*, or None when there is none."""
    names = _search(_with_containment(a.segments), _with_containment(b.segments), _segment_meet)
    if names is None:
        return None
    # Only two "**" patterns share the empty path, and they cover "x" as well.
    return "/".join(names) or "x"


def intersects(a: Glob, b: Glob) -> bool:
    """Whether some file is covered by both *a* and *b* (containment included)."""
    # Every valid pattern covers some file, so a pattern always meets itself.
    return a == b or witness(a, b) is not None
