"""Which releases wake which waiters (`dibs.store.postgres.wake`): the payload a release's
notification carries, and a waiter's reading of it. A release that could let a waiter in must
always wake it; one that could not should not."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dibs.core.events import new_event
from dibs.core.resources import overlaps, scope
from dibs.ground.now import Now
from dibs.store.postgres import wake
from tests.unit.test_scopes import parsed, resources

NOW = Now("boot", 5_000_000_000, 1_700_000_000.0)


def _event(op: str, **fields: object) -> dict[str, object]:
    return dict(new_event(op, NOW, **fields))


def _release(resource: str) -> dict[str, object]:
    return _event("release", agent="a", resource=resource, token=1)


def _payload(events: list[dict[str, object]], namespace: str = "repo") -> str:
    return f"{namespace}:42{wake.suffix(events)}"  # type: ignore[arg-type]


@settings(max_examples=500, deadline=None)
@given(resources(), resources(), resources())
def test_a_release_that_could_let_a_waiter_in_always_wakes_it(
    freed: str, other: str, waited: str
) -> None:
    """Whenever the rules say a freed resource overlaps one waited for, the payload wakes."""
    r_freed, r_waited = parsed(freed), parsed(waited)
    parsed(other)
    payload = _payload([_release(other), _release(freed)])
    wanted = [scope(r_waited.text) or ""]
    if overlaps(r_freed, r_waited):
        assert wake.wakes(payload, "repo", wanted)
        assert wake.frees_for([_release(freed)], wanted)  # type: ignore[list-item]


def test_a_release_of_something_else_wakes_nobody_waiting_for_it() -> None:
    """The point of it: unrelated releases in a busy namespace leave a waiter asleep."""
    payload = _payload([_release("issue:7"), _release("path:docs/**")])
    assert not wake.wakes(payload, "repo", [scope("issue:1") or ""])
    assert not wake.wakes(payload, "repo", [scope("path:src/a.py") or ""])
    assert wake.wakes(payload, "repo", [scope("issue:7") or ""])
    assert wake.wakes(payload, "repo", [scope("path:docs/x/y.md") or ""])
    assert wake.wakes(payload, "repo", None)  # a wait for anything
    assert not wake.frees_for([_release("issue:7")], ["issue:1"])  # type: ignore[list-item]
    grant = _event("acquire", agent="a", resource="issue:1", mode="exclusive", token=1, ttl=9)
    assert not wake.frees_for([grant], None)  # type: ignore[list-item]


def test_what_a_payload_cannot_tell_wakes_every_waiter() -> None:
    """An unregistration frees leases it does not name; a payload too long for PostgreSQL's
    8,000 bytes goes without scopes; a payload from before schema 6 names none; one that is
    not readable is taken as naming none. Each wakes every waiter of its namespace."""
    gone = _event("unregister", agent="a")
    assert "" == wake.suffix([_release("issue:1"), gone])  # type: ignore[list-item]
    assert wake.frees_for([gone], ["issue:1"])  # type: ignore[list-item]
    many = [_release(f"issue:{'x' * 90}-{i}") for i in range(100)]
    assert "" == wake.suffix(many)  # type: ignore[arg-type]
    assert "" == wake.suffix([])
    for payload in ("repo:42", "repo:42:[1,2]", "repo:42:{", "repo:42:not json"):
        assert wake.wakes(payload, "repo", ["issue:1"]), payload
    assert not wake.wakes(_payload([_release("issue:1")], "other"), "repo", ["issue:1"])
    assert not wake.wakes(_payload([_release("issue:1")], "other"), "repo", None)


def test_the_payload_carries_what_was_freed_and_nothing_else() -> None:
    """Scopes, deduplicated and sorted: a path glob's is the folder of its plain prefix."""
    events = [
        _release("path:src/app/**/*.py"),
        _release("path:src/app/*.md"),
        _event("acquire", agent="a", resource="issue:2", mode="exclusive", token=3, ttl=9),
        _release("issue:1"),
    ]
    assert ':["issue:1","path:src/app"]' == wake.suffix(events)  # type: ignore[arg-type]


@given(st.text(min_size=1, max_size=40))
def test_any_text_as_a_name_survives_the_round_trip(name: str) -> None:
    """Resource names are JSON-encoded: quotes, colons or newlines in them change nothing."""
    text = f"issue:{name}"
    payload = _payload([_release(text)])
    assert wake.wakes(payload, "repo", [text])
