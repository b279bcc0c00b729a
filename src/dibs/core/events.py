"""Events: one line of the log each, schema version 1.

Every change dibs makes is an event, appended to the log before it is reported as done. The
log is the truth; the current state is what `dibs.core.leases.apply` makes of it. The schema is
documented in ``docs/reference/events.md``; a test checks the two agree.

Events are plain dicts (JSON objects) typed with `Event`: decoding a line costs one
``json.loads`` and no object building, which keeps replay and the CLI fast.

Several events decided together (an all-or-nothing claim of several resources, evictions made
on the way) form one transaction: each carries ``txn = [first_seq, count]``. Recovery drops an
incomplete transaction at the tail as a whole, so a crash never leaves half a claim.

Pure: no I/O and no clock reads; the time is passed in as a `Now`.
"""

from __future__ import annotations

from dibs.ground import fastjson
from dibs.ground.errors import CorruptLog
from dibs.ground.now import Now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NotRequired, TypedDict

    class Event(TypedDict):
        """One line of the log."""

        schema_version: int
        seq: int
        op: str
        wall: str
        mono: int
        boot: str
        agent: NotRequired[str]
        resource: NotRequired[str]
        mode: NotRequired[str]
        token: NotRequired[int]
        ttl: NotRequired[float]
        reason: NotRequired[str]
        by: NotRequired[str]
        note: NotRequired[str]
        host: NotRequired[str]
        pid: NotRequired[int | None]
        pid_start: NotRequired[int | None]
        host_boot: NotRequired[str]
        secret: NotRequired[str]
        retired: NotRequired[list[str]]
        waited: NotRequired[float]
        tries: NotRequired[int]
        txn: NotRequired[list[int]]
        table: NotRequired[str]
        key: NotRequired[str]
        value: NotRequired[Any]
        details: NotRequired[dict[str, Any]]


SCHEMA_VERSION = 1
OPS = (
    "register",
    "unregister",
    "heartbeat",
    "acquire",
    "renew",
    "release",
    "auto-evict",
    "force-evict",
    "record",
    "refuse",
    "plan-add",
    "plan-drop",
    "plan-commit",
    "archive",
    "limit-set",
    "limit-update",
    "limit-take",
    "doc-write",
    "land-enqueue",
    "land-start",
    "land-done",
    "land-fail",
    "land-cancel",
    "landed",
    "gate",
    "outbox",
    "agent-roles",
    "log-repair",
    "worktree-adopt",
    "wait",
    "wait-end",
    "message",
    "inbox-read",
    "progress",
    "stuck",
)
#: Fields every event has.
REQUIRED = ("schema_version", "seq", "op", "wall", "mono", "boot")


def new_event(op: str, now: Now, **fields: Any) -> Event:
    """An event without its ``seq`` yet (the decision numbers its events in order)."""
    event: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "seq": 0,
        "op": op,
        "wall": now.iso(),
        "mono": now.mono,
        "boot": now.boot,
    }
    event.update({name: value for name, value in fields.items() if value is not None})
    return event  # type: ignore[return-value]


def encode(event: Event) -> bytes:
    """One log line, newline included.

    Raises:
        UsageError: a text in the event is not UTF-8 (undecodable bytes that reached it
            through ``surrogateescape``); the faces check their inputs, this is the last net.
    """
    try:
        return (fastjson.dumps(event, ensure_ascii=False) + "\n").encode()
    except UnicodeEncodeError:
        from dibs.ground.errors import UsageError

        raise UsageError(
            f"the {event['op']} holds text that is not UTF-8; nothing was recorded",
            hint="pass UTF-8 text (check the terminal's or the caller's encoding)",
        ) from None


def decode(line: bytes | str, *, where: str = "the log") -> Event:
    """Parse one log line (without or with its newline) and check its shape.

    Raises:
        CorruptLog: the line is not a schema-1 event; the message names *where*.
    """
    try:
        event = fastjson.loads(line)
    except ValueError as exc:
        raise CorruptLog(
            f"{where}: not a JSON event ({exc.args[0] if exc.args else exc})",
            hint="run `dibs doctor` to see the damage",
        ) from exc
    if not isinstance(event, dict):
        raise CorruptLog(f"{where}: not a JSON object", hint="run `dibs doctor`")
    missing = [name for name in REQUIRED if name not in event]
    if missing:
        raise CorruptLog(
            f"{where}: event lacks {', '.join(missing)}", hint="run `dibs doctor` to see the damage"
        )
    version = event["schema_version"]
    if version != SCHEMA_VERSION:
        raise CorruptLog(
            f"{where}: event has schema version {version!r}; this dibs reads version "
            f"{SCHEMA_VERSION}",
            hint="upgrade dibs to read a log written by a newer version",
        )
    return event  # type: ignore[return-value]
