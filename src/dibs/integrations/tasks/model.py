"""A task, whichever source it came from, and a malformed one (`Problem`)."""

from __future__ import annotations

from dibs.ground.errors import DibsError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

DONE = frozenset(("done", "closed", "completed", "complete", "resolved", "merged"))
WORKING = frozenset(("in_progress", "in-progress", "doing", "active", "started", "hooked"))
#: Priorities are small whole numbers (beads: 0-4); a bound keeps a 5,000-digit one out.
MAX_PRIORITY = 1_000_000


class Task:
    """One task, from whichever source.

    ``kind`` names the source's rules (``toml``, ``markdown``, ``ccpm``, ``beads``); ``group``
    is the set a ``parallel: false`` task runs alone in (a CCPM epic); ``order`` sorts tasks of
    equal priority the way their tool does; ``ref`` is what the tool calls it (a beads id, a
    CCPM file); ``extra`` holds what only the source's rules read.
    """

    __slots__ = (
        "conflicts_with",
        "depends_on",
        "extra",
        "group",
        "id",
        "kind",
        "labels",
        "order",
        "parallel",
        "priority",
        "ref",
        "source",
        "status",
        "title",
    )

    def __init__(self, task_id: str, source: str, order: Any, **fields: Any):
        self.id = task_id
        self.source = source
        self.order = order if isinstance(order, tuple) else (order,)
        self.title = str(fields.get("title") or task_id)
        self.status = str(fields.get("status") or "open").strip().lower()
        self.priority = priority(fields.get("priority"), source)
        self.depends_on = [str(d) for d in as_list(fields.get("depends_on"))]
        self.conflicts_with = [str(c) for c in as_list(fields.get("conflicts_with"))]
        self.parallel = fields.get("parallel", True) is not False
        labels = [str(x).strip() for x in as_list(fields.get("labels")) if str(x).strip()]
        if fields.get("role"):
            labels.append(str(fields["role"]).strip())
        self.labels = sorted(set(labels))
        self.kind = str(fields.get("kind") or "toml")
        self.group = str(fields.get("group") or source)
        self.ref = str(fields.get("ref") or task_id)
        self.extra: dict[str, Any] = dict(fields.get("extra") or {})

    def view(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "extra"}


def priority(value: Any, where: str = "") -> int:
    """A task's priority (lower first; 2 when unset).

    Raises:
        Problem: not a whole number from 0 to `MAX_PRIORITY` (the task is skipped).
    """
    if value is None or value == "":
        return 2
    number: int | None = None
    if isinstance(value, bool):
        number = None
    elif isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer() and abs(value) <= MAX_PRIORITY:
        number = int(value)
    elif isinstance(value, str):
        text = value.strip().upper().removeprefix("P")  # beads writes P0..P4 too
        if text.isascii() and text.isdigit() and len(text) <= 7:
            number = int(text)
    if number is None or not 0 <= number <= MAX_PRIORITY:
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
        raise Problem(where, 0, f"priority {shown} is not a whole number from 0 to {MAX_PRIORITY}")
    return number


def as_list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return list(value)
    return [v.strip() for v in str(value).strip("[]").split(",") if v.strip()]


class Problem(Exception):
    """A malformed task: where it is and what is wrong."""

    def __init__(self, where: str, line: int, message: str):
        super().__init__(f"{where}:{line}: {message}" if line else f"{where}: {message}")
        self.where, self.line, self.message = where, line, message


def issue_resource(task_id: str) -> Any:
    from dibs.core.resources import parse_resource

    try:
        return parse_resource(f"issue:{task_id}")
    except DibsError as exc:
        raise UsageError(f"task id {task_id!r} cannot be an issue name: {exc.message}") from None
