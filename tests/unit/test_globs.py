"""Glob matching and glob intersection: named examples, then properties against brute force."""

from __future__ import annotations

import itertools
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dibs.core.globs import covers, intersects, is_literal, literal_prefix, parse_glob, witness
from dibs.ground.errors import InvalidResource


def meet(a: str, b: str) -> bool:
    """Whether the patterns intersect, checked both ways round."""
    forward = intersects(parse_glob(a), parse_glob(b))
    assert forward == intersects(parse_glob(b), parse_glob(a))
    return forward


def cov(pattern: str, path: str) -> bool:
    return covers(parse_glob(pattern), path)


# Intersection examples ----------------------------------------------------------------------


def test_recursive_glob_intersects_directory_glob() -> None:
    """src/**/test_*.py and src/foo/*.py share src/foo/test_x.py."""
    assert True is meet("src/**/test_*.py", "src/foo/*.py")


def test_globs_in_different_directories_do_not_intersect() -> None:
    """src/*.py and docs/*.md share no file."""
    assert False is meet("src/*.py", "docs/*.md")


def test_directory_intersects_file_inside_it() -> None:
    """A claim on a folder conflicts with a claim on a file inside it."""
    assert True is meet("src/auth", "src/auth/login.py")


def test_root_star_glob_does_not_intersect_nested_file() -> None:
    """*.py cannot match the first segment of src/a.py, so they share nothing."""
    assert False is meet("*.py", "src/a.py")


def test_star_segment_intersects_shorter_path_through_containment() -> None:
    """x/*/y and x/y share x/y/y: x/y is a folder there."""
    assert True is meet("x/*/y", "x/y")


def test_star_segment_does_not_intersect_other_root() -> None:
    """x/*/y and z/y share nothing."""
    assert False is meet("x/*/y", "z/y")


def test_question_mark_does_not_intersect_longer_name() -> None:
    """? is exactly one character."""
    assert False is meet("?", "ab")


def test_class_intersects_glob_containing_member() -> None:
    """a[b-d]? and *c* share acc."""
    assert True is meet("a[b-d]?", "*c*")


def test_negated_classes_always_intersect() -> None:
    """[!a] and [!b] share every other character."""
    assert True is meet("[!a]", "[!b]")


def test_class_does_not_intersect_its_negation() -> None:
    """[a] and [!a] share no character."""
    assert False is meet("[a]", "[!a]")


def test_range_intersects_negated_range_outside_it() -> None:
    """[a-c]x and [!b-z]x share ax."""
    assert True is meet("[a-c]x", "[!b-z]x")


def test_class_spanning_slash_does_not_intersect_through_slash() -> None:
    """[.-0] is '.', '/' and '0'; without '.' and '0' only '/' is left, and it never matches."""
    assert False is meet("[.-0]", "[!.0]")


def test_escaped_star_intersects_class_holding_star() -> None:
    r"""\* is a literal star, as is [*]."""
    assert True is meet("\\*", "[*]")


def test_escaped_star_does_not_intersect_other_name() -> None:
    r"""\* matches only a file named *."""
    assert False is meet("\\*", "x")


def test_double_star_intersects_everything() -> None:
    """** covers every file."""
    assert True is meet("**", "anything/at/all")


def test_trailing_double_star_intersects_directory_itself() -> None:
    """src/** matches src too: ** may match no segment."""
    assert True is meet("src/**", "src")


def test_middle_double_star_intersects_pattern_without_it() -> None:
    """x/**/y and x/y share x/y."""
    assert True is meet("x/**/y", "x/y")


def test_leading_double_star_intersects_star_glob() -> None:
    """**/c and *.py share c.py/c."""
    assert True is meet("**/c", "*.py")


def test_double_star_inside_segment_does_not_cross_slash() -> None:
    """a**b is a*b: it does not meet a/b."""
    assert False is meet("a**b", "a/b")


def test_double_star_inside_segment_intersects_longer_name() -> None:
    """a**b meets axxb."""
    assert True is meet("a**b", "axxb")


def test_long_names_do_not_overflow_the_stack() -> None:
    """Thousand-character names are decided without deep recursion."""
    assert True is meet("a" * 1000, "a" * 999 + "*")
    assert False is meet("a" * 1000, "a" * 999 + "*b")


def test_deep_paths_do_not_overflow_the_stack() -> None:
    """Five hundred segments are decided without deep recursion."""
    assert True is meet("/".join(["a"] * 500), "/".join(["*"] * 499))


# Witness --------------------------------------------------------------------------------------


def test_witness_is_a_file_both_cover() -> None:
    """The witness of src/**/test_*.py and src/foo/*.py is covered by both."""
    a, b = parse_glob("src/**/test_*.py"), parse_glob("src/foo/*.py")
    found = witness(a, b)
    assert found is not None
    assert (True, True) == (covers(a, found), covers(b, found))


def test_witness_of_star_segment_goes_through_containment() -> None:
    """x/*/y and x/y meet at x/y/y."""
    assert "x/y/y" == witness(parse_glob("x/*/y"), parse_glob("x/y"))


def test_witness_of_double_stars_is_a_plain_name() -> None:
    """Two ** patterns share the empty path, but a witness is a real file."""
    assert "x" == witness(parse_glob("**"), parse_glob("**"))


def test_witness_avoids_excluded_characters() -> None:
    """The witness of [!x] and [!y] is neither x nor y."""
    found = witness(parse_glob("[!x]"), parse_glob("[!y]"))
    assert found is not None
    assert found not in ("x", "y", "/")
    assert 1 == len(found)


def test_witness_is_none_without_intersection() -> None:
    """Disjoint patterns have no witness."""
    assert None is witness(parse_glob("src/*.py"), parse_glob("docs/*.md"))


# Covers -----------------------------------------------------------------------------------------


def test_directory_covers_every_file_beneath_it() -> None:
    """src/auth covers src/auth/deep/file.py."""
    assert True is cov("src/auth", "src/auth/deep/file.py")


def test_directory_does_not_cover_sibling_with_longer_name() -> None:
    """src/auth does not cover src/authz.py."""
    assert False is cov("src/auth", "src/authz.py")


def test_root_star_glob_covers_files_inside_matching_directory() -> None:
    """*.py covers x.py/inner: x.py is a folder it matches."""
    assert True is cov("*.py", "x.py/inner")


def test_star_does_not_cross_slash() -> None:
    """src/*.py does not cover src/a/b.py."""
    assert False is cov("src/*.py", "src/a/b.py")


def test_star_matches_empty_run() -> None:
    """test_*.py covers test_.py."""
    assert True is cov("test_*.py", "test_.py")


def test_question_mark_matches_one_character() -> None:
    """f?o.txt covers fxo.txt."""
    assert True is cov("f?o.txt", "fxo.txt")


def test_question_mark_does_not_match_slash() -> None:
    """f?o.txt does not cover f/o.txt."""
    assert False is cov("f?o.txt", "f/o.txt")


def test_class_matches_character_in_range() -> None:
    """v[0-9] covers v7."""
    assert True is cov("v[0-9]", "v7")


def test_class_does_not_match_character_outside_range() -> None:
    """v[0-9] does not cover vx."""
    assert False is cov("v[0-9]", "vx")


def test_class_negated_with_bang() -> None:
    """[!._]* does not cover .hidden."""
    assert False is cov("[!._]*", ".hidden")


def test_class_negated_with_caret() -> None:
    """[^._]* covers visible."""
    assert True is cov("[^._]*", "visible")


def test_class_spanning_slash_never_matches_slash() -> None:
    """a[.-0]b covers a.b but not a/b."""
    assert (True, False) == (cov("a[.-0]b", "a.b"), cov("a[.-0]b", "a/b"))


def test_closing_bracket_first_in_class_is_a_member() -> None:
    """[]a] covers ] and a."""
    assert (True, True, False) == (cov("[]a]", "]"), cov("[]a]", "a"), cov("[]a]", "b"))


def test_closing_bracket_after_negation_is_a_member() -> None:
    """[!]] covers a but not ]."""
    assert (True, False) == (cov("[!]]", "a"), cov("[!]]", "]"))


def test_dash_last_in_class_is_a_member() -> None:
    """[a-] covers - and a but not b."""
    assert (True, True, False) == (cov("[a-]", "-"), cov("[a-]", "a"), cov("[a-]", "b"))


def test_backslash_escapes_inside_class() -> None:
    r"""[a\-z] holds a, - and z, not the range a-z."""
    assert (True, False) == (cov("[a\\-z]", "-"), cov("[a\\-z]", "m"))


def test_escaped_star_matches_only_a_star() -> None:
    r"""\*.py covers *.py and not a.py."""
    assert (True, False) == (cov("\\*.py", "*.py"), cov("\\*.py", "a.py"))


def test_regex_characters_are_literal() -> None:
    """a.b(c)+ covers itself but not axb(c)."""
    assert (True, False) == (cov("a.b(c)+", "a.b(c)+"), cov("a.b(c)+", "axb(c)"))


def test_leading_double_star_matches_any_depth() -> None:
    """**/c covers c and a/b/c."""
    assert (True, True) == (cov("**/c", "c"), cov("**/c", "a/b/c"))


def test_middle_double_star_matches_zero_or_more_segments() -> None:
    """x/**/y covers x/y and x/a/b/y."""
    assert (True, True) == (cov("x/**/y", "x/y"), cov("x/**/y", "x/a/b/y"))


def test_trailing_double_star_covers_directory_itself() -> None:
    """src/** covers src and src/a/b."""
    assert (True, True) == (cov("src/**", "src"), cov("src/**", "src/a/b"))


def test_double_star_inside_segment_is_a_single_star() -> None:
    """a**b covers axxb but not a/b."""
    assert (True, False) == (cov("a**b", "axxb"), cov("a**b", "a/b"))


def test_star_before_repeated_chunk_takes_leftmost_fit() -> None:
    """*a*ab covers aab: the first a is the one the middle chunk must take."""
    assert True is cov("*a*ab", "aab")


def test_many_stars_do_not_backtrack_exponentially() -> None:
    """A pattern with many stars answers at once on a long name it almost matches."""
    assert False is cov("*a*a*a*a*a*a*a*a*a*a*b", "a" * 400)
    assert False is cov("**/a/**/a/**/a/**/a/**/b", "/".join(["a"] * 400))


# Literals -------------------------------------------------------------------------------------


def test_plain_path_is_literal() -> None:
    """src/app.py has no wildcard."""
    assert True is is_literal("src/app.py")


def test_escaped_wildcard_is_literal() -> None:
    r"""src/a\*.py names one file."""
    assert True is is_literal("src/a\\*.py")


@pytest.mark.parametrize("pattern", ["src/*.py", "a?", "[ab]", "x/**"])
def test_wildcard_is_not_literal(pattern: str) -> None:
    """Any of *, ?, [ or ** makes a pattern a glob."""
    assert False is is_literal(pattern)


def test_literal_prefix_stops_at_first_wildcard() -> None:
    """src/auth/*.py is bucketed under src/auth."""
    assert ("src", "auth") == literal_prefix(parse_glob("src/auth/*.py"))


def test_literal_prefix_resolves_escapes() -> None:
    r"""a\*b/c names the folder a*b."""
    assert ("a*b", "c") == literal_prefix(parse_glob("a\\*b/c"))


def test_literal_prefix_of_leading_double_star_is_empty() -> None:
    """**/x has no literal prefix."""
    assert () == literal_prefix(parse_glob("**/x"))


def test_parse_glob_is_cached() -> None:
    """The same text gives the same Glob."""
    assert parse_glob("src/*.py") is parse_glob("src/*.py")


def test_glob_keeps_its_text() -> None:
    """A Glob remembers the pattern it was parsed from."""
    assert "src/*.py" == parse_glob("src/*.py").text


# Malformed patterns -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("src/[abc", "segment '[abc' has a '[' that is never closed"),
        ("src/[]", "segment '[]' has a '[' that is never closed"),
        ("[!]", "segment '[!]' has a '[' that is never closed"),
        ("a[\\]", "segment 'a[\\\\]' has a '[' that is never closed"),
        ("src/a\\", "segment 'a\\\\' ends with a backslash that escapes nothing"),
        ("a\\/b", "segment 'a\\\\' ends with a backslash that escapes nothing"),
        ("[a\\", "segment '[a\\\\' ends with a backslash that escapes nothing"),
        ("src/[z-a]", "range z-a in segment '[z-a]' is reversed and matches nothing"),
    ],
)
def test_malformed_pattern_is_refused(pattern: str, message: str) -> None:
    """A malformed pattern is refused with the pattern, the problem and a hint."""
    with pytest.raises(InvalidResource) as info:
        parse_glob(pattern)
    assert f"path pattern {pattern!r}: {message}" == info.value.message
    assert info.value.hint


def test_empty_pattern_is_refused() -> None:
    """An empty pattern names nothing and is refused."""
    with pytest.raises(InvalidResource, match="is empty"):
        parse_glob("")


# Brute force ------------------------------------------------------------------------------------
# An independent reference: plain backtracking over segments and characters, no regex, no
# product search. It reads the generated syntax only (no escapes).


def _tokens(segment: str) -> tuple[str, ...]:
    out, i = [], 0
    while i < len(segment):
        if segment[i] == "[":
            body = i + 2 if segment[i + 1] in "!^" else i + 1
            end = segment.index("]", body + 1)
            out.append(segment[i : end + 1])
            i = end + 1
        else:
            out.append(segment[i])
            i += 1
    return tuple(out)


def _char(piece: str, ch: str) -> bool:
    if ch == "/":
        return False
    if piece == "?":
        return True
    if not piece.startswith("["):
        return piece == ch
    negated = piece[1] in "!^"
    body = piece[2:-1] if negated else piece[1:-1]
    members, k = set(), 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            members |= {chr(c) for c in range(ord(body[k]), ord(body[k + 2]) + 1)}
            k += 3
        else:
            members.add(body[k])
            k += 1
    return (ch in members) != negated


@cache
def _segment_matches(tokens: tuple[str, ...], name: str) -> bool:
    if not tokens:
        return not name
    if tokens[0] == "*":
        return any(_segment_matches(tokens[1:], name[k:]) for k in range(len(name) + 1))
    return bool(name) and _char(tokens[0], name[0]) and _segment_matches(tokens[1:], name[1:])


def _matches(parts: tuple[str, ...], names: tuple[str, ...]) -> bool:
    if not parts:
        return not names
    if parts[0] == "**":
        return any(_matches(parts[1:], names[k:]) for k in range(len(names) + 1))
    return (
        bool(names)
        and _segment_matches(_tokens(parts[0]), names[0])
        and _matches(parts[1:], names[1:])
    )


@cache
def reference_covers(pattern: str, path: str) -> bool:
    """The pattern matches the path or one of the folders above it."""
    parts, names = tuple(pattern.split("/")), tuple(path.split("/"))
    return any(_matches(parts, names[:k]) for k in range(1, len(names) + 1))


TOKENS = ["a", "b", "*", "?", "[ab]", "[!a]", "[b-c]"]
segments = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4).map("".join)
patterns = st.lists(st.one_of(segments, st.just("**")), min_size=1, max_size=4).map("/".join)
names = st.text(alphabet="abc", min_size=1, max_size=3)
paths = st.lists(names, min_size=1, max_size=4).map("/".join)
# Every path over {a, b, c} with up to 3 segments of up to 2 characters (1,884 of them).
SMALL_NAMES = ["".join(p) for n in (1, 2) for p in itertools.product("abc", repeat=n)]
SMALL_PATHS = ["/".join(p) for n in (1, 2, 3) for p in itertools.product(SMALL_NAMES, repeat=n)]

PROPERTY = settings(max_examples=500, deadline=None)


@PROPERTY
@given(patterns, paths)
def test_covers_agrees_with_reference(pattern: str, path: str) -> None:
    """The compiled matcher and the backtracking reference agree."""
    assert reference_covers(pattern, path) == cov(pattern, path)


@PROPERTY
@given(patterns, patterns, st.lists(paths, min_size=1, max_size=20))
def test_common_file_means_intersection(p: str, q: str, candidates: list[str]) -> None:
    """If some generated file is covered by both patterns, they intersect."""
    if any(reference_covers(p, x) and reference_covers(q, x) for x in candidates):
        assert True is meet(p, q)


@PROPERTY
@given(patterns, patterns)
def test_intersection_comes_with_witness_both_cover(p: str, q: str) -> None:
    """When the patterns intersect, the witness is a file both cover, by the reference."""
    found = witness(parse_glob(p), parse_glob(q))
    assert (found is not None) == meet(p, q)
    if found is not None:
        assert (True, True) == (reference_covers(p, found), reference_covers(q, found))


@settings(max_examples=500, deadline=None)
@given(patterns, patterns)
def test_no_intersection_means_no_common_small_file(p: str, q: str) -> None:
    """When the patterns do not intersect, no small file over {a, b, c} is covered by both."""
    if not meet(p, q):
        common = [x for x in SMALL_PATHS if reference_covers(p, x) and reference_covers(q, x)]
        assert [] == common


@PROPERTY
@given(patterns, patterns)
def test_intersection_is_symmetric(p: str, q: str) -> None:
    """intersects(p, q) == intersects(q, p)."""
    assert intersects(parse_glob(p), parse_glob(q)) == intersects(parse_glob(q), parse_glob(p))


def _valid(pattern: str) -> bool:
    try:
        parse_glob(pattern)
    except InvalidResource:
        return False
    return True


# Around "/": classes whose ranges start, end or span the separator (never at an end: a "/"
# always splits the pattern). Joined members can form reversed ranges; those are left out.
WINDOW = [chr(c) for c in range(ord("+"), ord("3")) if chr(c) != "/"]
class_members = st.tuples(st.sampled_from(WINDOW), st.sampled_from(WINDOW)).map(
    lambda r: r[0] if r[0] >= r[1] else f"{r[0]}-{r[1]}"
)
char_classes = st.builds(
    lambda negated, members: ("[!" if negated else "[") + "".join(members) + "]",
    st.booleans(),
    st.lists(class_members, min_size=1, max_size=3),
).filter(_valid)


@settings(max_examples=300, deadline=None)
@given(char_classes, char_classes)
def test_class_intersection_agrees_with_every_character(p: str, q: str) -> None:
    """Two one-character classes meet exactly when some ASCII character other than / is in both."""
    shared = [chr(c) for c in range(128) if _char(p, chr(c)) and _char(q, chr(c))]
    assert bool(shared) == meet(p, q)
