"""The pieces of the task sources that need no repository: frontmatter, write-back, times,
and beads' blocked state on shapes the acceptance fixtures do not reach (cycles)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dibs.integrations.tasks import Problem, Task, priority
from dibs.integrations.tasks.beads import _blocked, _nanos
from dibs.integrations.tasks.markdown import frontmatter, write_status


def test_write_status_changes_two_lines_and_keeps_every_other_byte(tmp_path: Path) -> None:
    """CRLF endings, comments after values, the body and a missing updated line survive."""
    path = tmp_path / "001.md"
    text = "---\r\nname: A: b\r\nstatus: open  # open | in-progress | closed\r\n---\r\nbody\r\n"
    path.write_bytes(text.encode())
    assert write_status(str(path), "in-progress", "2026-12-01T00:00:00Z")
    assert (
        "---\r\nname: A: b\r\nstatus: in-progress  # open | in-progress | closed\r\n"
        "updated: 2026-12-01T00:00:00Z\r\n---\r\nbody\r\n"
    ) == path.read_bytes().decode()
    assert not write_status(str(path), "in-progress", "2026-12-02T00:00:00Z")  # unchanged
    assert [p.name for p in tmp_path.iterdir()] == ["001.md"]  # no temporary file left


def test_frontmatter_reads_ccpm_template_comments_and_decimal_numbers() -> None:
    """`[001, 010]  # e.g.` is [1, 10]; `parallel: false  # ...` is False."""
    text = "---\ndepends_on: [001, 010]  # e.g., [001, 002]\nparallel: false  # alone?\n---\n"
    data, end = frontmatter(text, "t.md")
    assert ({"depends_on": [1, 10], "parallel": False}, 4) == (data, end)  # the closing ---


def test_frontmatter_that_is_not_key_value_names_its_line() -> None:
    """A line that is neither YAML nor `key: value` is reported with its line number."""
    with pytest.raises(Problem) as caught:
        frontmatter("---\nname: x\njust words\n---\n", "t.md")
    assert (3, "cannot read 'just words'") == (caught.value.line, caught.value.message[:24])


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 2), (0, 0), ("P1", 1), (" 3 ", 3), (4.0, 4), (1_000_000, 1_000_000)],
)
def test_priority_accepts_whole_numbers_in_range(value: object, expected: int) -> None:
    """beads' P0..P4, numbers and numeric text."""
    assert expected == priority(value)


@pytest.mark.parametrize("value", ["9" * 5000, 10**4000, -1, 1.5, "high", True, float("nan")])
def test_priority_refuses_anything_else_as_a_problem(value: object) -> None:
    """Huge, negative, fractional, words, booleans, NaN: a Problem, never an internal error."""
    with pytest.raises(Problem):
        priority(value)


def test_go_times_with_nanoseconds_and_offsets_compare_exactly() -> None:
    """bd writes RFC 3339 with up to nine fraction digits and any offset."""
    later = _nanos("2025-12-30T22:02:42.608377959-06:00")
    earlier = _nanos("2025-12-30T22:02:42.608377958-06:00")
    assert 1 == later - earlier
    assert _nanos("2025-12-31T04:02:42.608377959Z") == later
    assert 0 == _nanos("not a time")


def beads_task(task_id: str, *deps: tuple[str, str], status: str = "open") -> Task:
    extra = {"deps": [(t, k, "all-children") for t, k in deps]}
    return Task(task_id, "x", 0, status=status, kind="beads", extra=extra)


def test_a_parent_child_cycle_blocks_nobody_unless_a_member_is_blocked() -> None:
    """The least fixed point beads' mark/unmark passes reach from is_blocked = 0."""
    free = {
        t.id: t
        for t in [beads_task("a", ("b", "parent-child")), beads_task("b", ("a", "parent-child"))]
    }
    assert {} == _blocked(free, set())
    tasks = [
        beads_task("a", ("b", "parent-child"), ("c", "parent-child")),
        beads_task("b", ("a", "parent-child")),
        beads_task("c", ("d", "blocks")),
        beads_task("d"),
    ]
    blocked = _blocked({t.id: t for t in tasks}, set())
    assert ["blocked by d"] == blocked["c"]
    assert {"parent b is blocked", "parent c is blocked"} == set(blocked["a"])
    assert ["parent a is blocked"] == blocked["b"]
    assert {} == _blocked({t.id: t for t in tasks}, {"d"})  # d closed: the cycle is free
