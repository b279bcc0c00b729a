"""The history checker finds each kind of violation it is meant to find."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.faults.history import FencedRegister, History, check


def ev(seq: int, op: str, **fields: Any) -> dict[str, Any]:
    return {"seq": seq, "op": op, "mode": "exclusive", **fields}


def test_clean_log_passes() -> None:
    """Acquire, release, acquire again by another: no violation."""
    events = [
        ev(1, "acquire", resource="issue:X", agent="a", token=1),
        ev(2, "release", resource="issue:X", agent="a", token=1),
        ev(3, "acquire", resource="issue:X", agent="b", token=2),
    ]
    check(events).assert_clean()


def test_two_holders_are_found_even_through_globs() -> None:
    """An acquire over a live incompatible hold is a violation, for overlapping globs too."""
    events = [
        ev(1, "acquire", resource="path:src/**", agent="a", token=1),
        ev(2, "acquire", resource="path:src/app.py", agent="b", token=2),
    ]
    assert 1 == len(check(events).overlapping_holders)


def test_shared_holders_are_fine_and_eviction_ends_a_hold() -> None:
    """Shared with shared coexists; an auto-evict frees the resource."""
    events = [
        ev(1, "acquire", resource="lock:x", agent="a", token=1, mode="shared"),
        ev(2, "acquire", resource="lock:x", agent="b", token=2, mode="shared"),
        ev(3, "auto-evict", resource="lock:x", agent="a", token=1),
        ev(4, "auto-evict", resource="lock:x", agent="b", token=2),
        ev(5, "acquire", resource="lock:x", agent="c", token=3),
    ]
    check(events).assert_clean()


def test_tokens_that_do_not_grow_are_found() -> None:
    """A repeated or smaller token is a violation."""
    events = [
        ev(1, "acquire", resource="issue:X", agent="a", token=5),
        ev(2, "release", resource="issue:X", agent="a", token=5),
        ev(3, "acquire", resource="issue:Y", agent="a", token=5),
    ]
    assert 1 == len(check(events).token_order)


def test_an_acknowledged_grant_missing_from_the_log_is_found() -> None:
    """A client told 'granted' whose grant is not in the log: lost."""
    history = History()
    op = history.record("c1", "acquire", "issue:X")
    history.done(op, "ok", token=7)
    assert 1 == len(check([], history).lost_grants)


def test_register_writes_outside_a_live_hold_are_found(tmp_path: Path) -> None:
    """A write counted while its token's hold had ended, or a miscount, is a violation."""
    register = FencedRegister(tmp_path)
    assert register.write("issue:X", 1, lambda: (True, 3))
    assert not register.write("issue:X", 1, lambda: (False, 4))
    events = [
        ev(1, "acquire", resource="issue:X", agent="a", token=1),
        ev(2, "release", resource="issue:X", agent="a", token=1),
    ]
    history = History()
    history.done(history.record("a", "write", "issue:X"), "ok", token=1)
    verdict = check(events, history, register)
    assert ["write with issue:X token 1 at seq 3: not a live hold"] == verdict.register
    assert 1 == register.read()["refused"]
