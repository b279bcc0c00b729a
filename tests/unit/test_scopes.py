"""Scopes (`dibs.core.resources.scope`): what the PostgreSQL store compares, without parsing
globs, to tell whether a write made meanwhile may touch a claim or release. A scope may
claim too much (the write is then decided under the lock), never too little."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from dibs.core.resources import overlaps, parse_resource, scope, scopes_may_overlap
from dibs.ground.errors import InvalidResource

SEGMENTS = ["src", "docs", "sub", "a.py", "b.md", "*", "**", "*.py", "x?", "[ab].py", "a\\*.py"]


@st.composite
def resources(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["path", "path", "path", "issue", "lock", "worktree"]))
    if kind != "path":
        return f"{kind}:{draw(st.sampled_from(['1', '2', 'src', 'a.py']))}"
    name = "/".join(draw(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=4)))
    if draw(st.booleans()):
        first = draw(st.integers(1, 20))
        name += f"#L{first}-{first + draw(st.integers(0, 20))}"
    return f"path:{name}"


def parsed(text: str):  # type: ignore[no-untyped-def]
    try:
        return parse_resource(text)
    except InvalidResource:
        assume(False)


@settings(max_examples=800, deadline=None)
@given(resources(), resources())
def test_overlapping_resources_always_have_overlapping_scopes(a: str, b: str) -> None:
    """Whenever the rules say two claims could stand in each other's way, so do their scopes."""
    ra, rb = parsed(a), parsed(b)
    if overlaps(ra, rb):
        assert scopes_may_overlap(scope(ra.text) or "", scope(rb.text) or "")


def test_scopes_tell_apart_what_cannot_overlap() -> None:
    """The check is worth having: unrelated resources and folders do not clash."""
    pairs = [
        ("issue:1", "issue:2"),
        ("path:src/a.py", "path:docs/b.md"),
        ("path:src/**", "path:docs/*.md"),
        ("path:src/a.py#L1-5", "path:src/b.py"),
        ("path:src", "path:srcx/a.py"),
        ("issue:src", "path:src"),
    ]
    for a, b in pairs:
        assert not scopes_may_overlap(scope(a) or "", scope(b) or ""), (a, b)
    assert scopes_may_overlap(scope("path:**/*.md") or "", scope("path:src/a.py") or "")
    assert scopes_may_overlap(scope("path:src/*.py") or "", scope("path:src/sub/a.py") or "")
