"""The pure half of commuting appends (`dibs.store.postgres.commuting`): which decisions may
commute, which ops written meanwhile are harmless, and the body templates."""

from __future__ import annotations

import json

from dibs.core.events import OPS, encode, new_event
from dibs.core.rules import Decision
from dibs.core.state import seal
from dibs.ground.errors import Conflict, NotFound
from dibs.ground.now import Now
from dibs.store.postgres import commuting

NOW = Now("boot", 5_000_000_000, 1_700_000_000.0)


def _event(op: str, **fields: object) -> dict[str, object]:
    return dict(new_event(op, NOW, **fields))


def test_every_op_is_either_harmless_or_clashing() -> None:
    """A new op must be placed: the server lets unknown ones clash, the list must say why."""
    assert set(OPS) == commuting.HARMLESS | commuting.CLASHING
    assert not commuting.HARMLESS & commuting.CLASHING


def test_only_plain_grants_releases_and_refusals_of_one_agent_may_commute() -> None:
    grant = _event("acquire", agent="a", resource="issue:1", mode="exclusive", token=1, ttl=60)
    release = _event("release", agent="a", resource="issue:2", mode="exclusive", token=2)
    refuse = _event("refuse", agent="a", resource="issue:3", mode="exclusive", by="b")
    assert "a" == commuting.mover(Decision([grant, release]))  # type: ignore[list-item]
    assert "a" == commuting.mover(Decision([refuse], Conflict("held")))  # type: ignore[list-item]
    evict = _event("auto-evict", agent="b", resource="issue:1", token=0, reason="expired")
    assert commuting.mover(Decision([evict, grant])) is None  # type: ignore[list-item]
    assert commuting.mover(Decision([grant], NotFound("x"))) is None  # type: ignore[list-item]
    assert commuting.mover(Decision([refuse])) is None  # type: ignore[list-item]
    assert commuting.mover(Decision()) is None
    other = _event("release", agent="b", resource="issue:2", token=2)
    assert commuting.mover(Decision([grant, other])) is None  # type: ignore[list-item]


def test_a_template_filled_in_is_the_line_the_encoder_writes() -> None:
    """The server writes the numbers where the placeholders are: the body is byte for byte
    what the client's encoder writes for the moved event, notes with quotes included."""
    events = seal(
        [
            _event("release", agent="a", resource="path:src/a.py", token=7, reason="mode-change"),
            _event(
                "acquire",
                agent="a",
                resource="path:src/a.py",
                mode="shared",
                token=9,
                ttl=60.0,
                note='a "quoted" note \\ \u00e9',
            ),
        ],
        41,
    )
    [first, second] = commuting.templates(events)  # type: ignore[arg-type,misc]
    moved = json.loads(json.dumps(events))
    commuting.moved_up(moved, 10, 3)
    for template, event in zip((first, second), moved, strict=True):
        text = template.replace(commuting.SEQ, str(event["seq"]))
        text = text.replace(commuting.TOKEN, str(event["token"]))
        text = text.replace(commuting.TXN, str(event["txn"][0]))
        assert encode(event)[:-1].decode() == text
    assert [52, 53] == [event["seq"] for event in moved]
    assert 7 == moved[0]["token"]  # a release keeps its lease's token
    assert 12 == moved[1]["token"]  # a new token moves up


def test_a_note_that_spells_a_placeholder_does_not_commute() -> None:
    event = _event("acquire", agent="a", resource="issue:1", token=1, ttl=60, note="\x01")
    assert commuting.templates(seal([event], 0)) is None  # type: ignore[list-item]
