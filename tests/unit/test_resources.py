"""Parsing, validation and overlap of resources."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dibs.core.globs import covers, intersects, parse_glob
from dibs.core.resources import covers_file, overlaps, parse_resource, parse_resources
from dibs.ground.errors import InvalidResource


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("issue:ROOSE-158", "issue:ROOSE-158"),
        ("Issue:ROOSE-158", "issue:ROOSE-158"),
        ("path:./src//app.py", "path:src/app.py"),
        ("path:src/auth/", "path:src/auth"),
        ("path:src/app.py#L10-80", "path:src/app.py#L10-80"),
        ("path:src/app.py#L7", "path:src/app.py#L7"),
        ("path:src/app.py#L7-7", "path:src/app.py#L7"),
        ("worktree:3", "worktree:3"),
        ("lock:github-api", "lock:github-api"),
        ("stream:database-layer", "stream:database-layer"),
        ("path:notes#draft.md", "path:notes#draft.md"),
    ],
)
def test_parse_normalises(text: str, canonical: str) -> None:
    """Resources come out in one canonical form."""
    assert canonical == parse_resource(text).text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty resource"),
        ("ROOSE-158", "has no kind"),
        ("ticket:1", "unknown kind 'ticket'"),
        ("issue:", "empty name"),
        ("issue:" + "x" * 201, "the limit is 200"),
        ("issue:a\x07b", "control character"),
        ("lock:two words", "white space"),
        ("path:/etc/passwd", "absolute path"),
        ("path:~/notes", "absolute path"),
        ("path:src/../../etc", "contains '..'"),
        ("path:..", "contains '..'"),
        ("path:", "empty path"),
        ("path:./", "empty path"),
        ("path:.git/config", "inside .git"),
        ("path:src/app.py#Lx", "malformed line range"),
        ("path:src/app.py#L0-3", "empty line range"),
        ("path:src/app.py#L9-3", "empty line range"),
        ("path:src/*.py#L1-3", "line range on a pattern"),
        ("path:" + "a/" * 600, "the limit is 1024"),
    ],
)
def test_parse_refuses_with_a_clear_message(text: str, message: str) -> None:
    """Each refusal says what is wrong and how to write it instead."""
    with pytest.raises(InvalidResource) as info:
        parse_resource(text)
    assert message in info.value.message
    assert info.value.hint
    assert 2 == info.value.exit_code


def test_parse_resources_drops_exact_repeats_in_order() -> None:
    """The same resource twice is one claim."""
    texts = [r.text for r in parse_resources(["issue:B", "path:./a", "issue:B", "path:a"])]
    assert ["issue:B", "path:a"] == texts


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("issue:X", "issue:X", True),
        ("issue:X", "issue:Y", False),
        ("issue:X", "lock:X", False),
        ("path:src/**/test_*.py", "path:src/foo/*.py", True),
        ("path:src/*.py", "path:docs/*.md", False),
        ("path:src/auth", "path:src/auth/login.py", True),
        ("path:src/app.py#L10-80", "path:src/app.py#L80-90", True),
        ("path:src/app.py#L10-80", "path:src/app.py#L81-90", False),
        ("path:src/app.py#L10-80", "path:src/*.py", True),
        ("path:src/app.py#L10-80", "path:src/other.py", False),
        ("path:src/app.py", "path:src/app.py#L1", True),
        ("path:src/a\\*.py#L1-5", "path:src/*.py", True),
        ("path:src/a\\*.py#L1-5", "path:src/ab.py", False),
        ("path:src/a\\*.py#L1-5", "path:src/a[*].py#L5", True),
    ],
)
def test_overlap(a: str, b: str, expected: bool) -> None:
    """Overlap is symmetric and follows the glob, containment and range rules."""
    ra, rb = parse_resource(a), parse_resource(b)
    assert expected == overlaps(ra, rb)
    assert expected == overlaps(rb, ra)


def test_covers_file_with_lines() -> None:
    """A range claim covers its file only on overlapping lines; a glob covers the whole file."""
    ranged = parse_resource("path:src/app.py#L10-20")
    assert covers_file(ranged, "src/app.py", (15, 30))
    assert not covers_file(ranged, "src/app.py", (21, 30))
    assert covers_file(parse_resource("path:src/**"), "src/a/b.py", (1, 1))
    assert not covers_file(parse_resource("issue:src/a.py"), "src/a.py")
    assert covers_file(parse_resource("path:src/a\\*.py#L1-5"), "src/a*.py", (5, 9))


names = st.text(alphabet="ab", min_size=1, max_size=2)
literal_paths = st.lists(names, min_size=1, max_size=3).map("/".join)


@settings(max_examples=300, deadline=None)
@given(literal_paths, literal_paths)
def test_literal_fast_paths_agree_with_the_glob_engine(a: str, b: str) -> None:
    """Plain names skip glob parsing; the answers are those of the general engine."""
    ra, rb = parse_resource(f"path:{a}"), parse_resource(f"path:{b}")
    assert ra.literal
    assert intersects(parse_glob(a), parse_glob(b)) == overlaps(ra, rb)
    assert covers(parse_glob(a), b) == covers_file(ra, b)
