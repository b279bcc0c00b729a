"""Glob matching and glob intersection, proved against brute force."""

from __future__ import annotations

import itertools
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dibs.core.globs import covers, intersects, is_literal, literal_prefix, parse_glob, witness
from dibs.errors import InvalidResource


def meet(a: str, b: str) -> bool:
    return intersects(parse_glob(a), parse_glob(b))


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("src/**/test_*.py", "src/foo/*.py", True),
        ("src/*.py", "docs/*.md", False),
        ("src/auth", "src/auth/login.py", True),
        ("*.py", "src/a.py", False),
        ("src/*.py", "src/a/b.py", False),
        ("**/c", "*.py", True),
        ("a[b-d]?", "*c*", True),
        ("[!a]", "[!b]", True),
        ("[a]", "[!a]", False),
        ("[a-c]x", "[!b-z]x", True),
        ("?", "ab", False),
        ("a**b", "axxb", True),
        ("a**b", "a/b", False),
        ("\\*", "x", False),
        ("\\*", "[*]", True),
        ("**", "anything/at/all", True),
        ("src/**", "src", True),
        ("x/**/y", "x/y", True),
        ("x/**/y", "x/a/b/y/z", True),
        ("x/*/y", "x/y", True),  # x/y/y: containment
        ("x/*/y", "z/y", False),
    ],
)
def test_intersection_examples(a: str, b: str, expected: bool) -> None:
    """Intersection follows the glob rules and containment, both ways round."""
    assert expected == meet(a, b)
    assert expected == meet(b, a)


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("src/**/test_*.py", "src/test_a.py", True),
        ("src/**/test_*.py", "src/x/y/test_a.py", True),
        ("src/**/test_*.py", "src/x/a_test.py", False),
        ("src/auth", "src/auth/deep/file.py", True),
        ("src/auth", "src/authz.py", False),
        ("*.md", "README.md", True),
        ("*.md", "docs/README.md", False),
        ("**/*.md", "docs/README.md", True),
        ("[!._]*", ".hidden", False),
        ("f?o.txt", "f/o.txt", False),
    ],
)
def test_covers_examples(pattern: str, path: str, expected: bool) -> None:
    """A pattern covers a file it matches, or a file beneath a folder it matches."""
    assert expected == covers(parse_glob(pattern), path)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("src/[abc", "'[' is never closed"),
        ("src/[]", "'[' is never closed"),
        ("src/a\\", "lone backslash"),
        ("src/[z-a]", "range z-a is reversed"),
    ],
)
def test_malformed_patterns_are_refused(pattern: str, message: str) -> None:
    """A malformed pattern is an error naming the pattern and the problem."""
    with pytest.raises(InvalidResource) as info:
        parse_glob(pattern)
    assert message in info.value.message
    assert repr(pattern) in info.value.message


def test_literal_helpers() -> None:
    """Literal patterns and literal prefixes are recognised, escapes included."""
    assert is_literal("src/app.py")
    assert is_literal("src/a\\*.py")
    assert not is_literal("src/*.py")
    assert ("src", "auth") == literal_prefix(parse_glob("src/auth/*.py"))
    assert () == literal_prefix(parse_glob("**/x"))


# Brute force -------------------------------------------------------------------------------
# An independent matcher: plain backtracking over segments and characters, no regex.


def _tokens(segment: str) -> list[str]:
    out, i = [], 0
    while i < len(segment):
        if segment[i] == "[":
            j = segment.index("]", i + 2) if segment[i + 1] in "!^" else segment.index("]", i + 1)
            out.append(segment[i : j + 1])
            i = j + 1
        elif segment[i] == "*":
            out.append("*")
            while i < len(segment) and segment[i] == "*":
                i += 1
        else:
            out.append(segment[i])
            i += 1
    return out


def _char(pattern: str, ch: str) -> bool:
    if pattern == "?":
        return True
    if pattern.startswith("["):
        negated = pattern[1] in "!^"
        body = pattern[2:-1] if negated else pattern[1:-1]
        members = set()
        k = 0
        while k < len(body):
            if k + 2 < len(body) and body[k + 1] == "-":
                members |= {chr(c) for c in range(ord(body[k]), ord(body[k + 2]) + 1)}
                k += 3
            else:
                members.add(body[k])
                k += 1
        return (ch in members) != negated
    return pattern == ch


@cache
def _seg(tokens: tuple[str, ...], name: str) -> bool:
    if not tokens:
        return not name
    if tokens[0] == "*":
        return any(_seg(tokens[1:], name[k:]) for k in range(len(name) + 1))
    return bool(name) and _char(tokens[0], name[0]) and _seg(tokens[1:], name[1:])


def _match(parts: tuple[str, ...], names: tuple[str, ...]) -> bool:
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_match(parts[1:], names[k:]) for k in range(len(names) + 1))
    return bool(names) and _seg(tuple(_tokens(parts[0])), names[0]) and _match(parts[1:], names[1:])


def reference_covers(pattern: str, path: str) -> bool:
    """Brute force: the pattern matches the path or one of its leading folders."""
    parts, names = tuple(pattern.split("/")), tuple(path.split("/"))
    return any(_match(parts, names[:k]) for k in range(1, len(names) + 1))


TOKENS = ["a", "b", "*", "?", "[ab]", "[!a]", "[b-c]"]
segments = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=3).map("".join)
patterns = st.lists(st.one_of(segments, st.just("**")), min_size=1, max_size=4).map("/".join)
names = st.text(alphabet="abc", min_size=1, max_size=3)
paths = st.lists(names, min_size=1, max_size=4).map("/".join)
# Every path over {a, b, c} with up to 3 segments of up to 2 characters.
SMALL_NAMES = ["".join(p) for n in (1, 2) for p in itertools.product("abc", repeat=n)]
ALL_SMALL_PATHS = ["/".join(p) for n in (1, 2, 3) for p in itertools.product(SMALL_NAMES, repeat=n)]

FAST = settings(max_examples=400, deadline=None)


@FAST
@given(patterns, paths)
def test_covers_agrees_with_brute_force(pattern: str, path: str) -> None:
    """The compiled matcher and the backtracking reference agree."""
    assert reference_covers(pattern, path) == covers(parse_glob(pattern), path)


@FAST
@given(patterns, patterns, st.lists(paths, min_size=1, max_size=20))
def test_a_common_file_means_intersection(p: str, q: str, candidates: list[str]) -> None:
    """If some generated file is covered by both patterns, they intersect."""
    if any(reference_covers(p, x) and reference_covers(q, x) for x in candidates):
        assert meet(p, q)


@FAST
@given(patterns, patterns)
def test_intersection_comes_with_a_witness(p: str, q: str) -> None:
    """When the patterns intersect, the witness is a file both cover (by brute force)."""
    found = witness(parse_glob(p), parse_glob(q))
    assert (found is not None) == meet(p, q)
    if found is not None:
        assert reference_covers(p, found)
        assert reference_covers(q, found)


@settings(max_examples=150, deadline=None)
@given(patterns, patterns)
def test_no_intersection_means_no_common_small_file(p: str, q: str) -> None:
    """When the patterns do not intersect, no small file over {a,b,c} is covered by both."""
    if not meet(p, q):
        assert not any(reference_covers(p, x) and reference_covers(q, x) for x in ALL_SMALL_PATHS)


@FAST
@given(patterns, patterns)
def test_intersection_is_symmetric(p: str, q: str) -> None:
    """intersects(p, q) == intersects(q, p)."""
    assert meet(p, q) == meet(q, p)
