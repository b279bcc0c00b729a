"""Every error dibs raises, with its stable exit code.

Each class's docstring is its default message; ``hint`` says how to mend it. The CLI prints
``dibs: <message>`` and ``hint: <hint>``, never a traceback unless ``-v``.

::

    DibsError (1)
    ├── UsageError (2, ValueError)          bad input: nothing was changed
    │   ├── InvalidResource                 a `kind:name` that cannot be claimed
    │   └── InvalidSetting                  a bad value in dibs.toml, a flag or the environment
    ├── AuthError (1, PermissionError)      missing or wrong session token
    ├── NotFound (1, LookupError)           no such agent, claim or store
    ├── Refused (3)                         the act would collide with someone or lose work
    │   ├── Conflict                        held by another agent (names the holder and expiry)
    │   └── LockTimeout (TimeoutError)      waited with --wait and it is still held
    ├── LeaseLost (4)                       the lease was evicted or its fencing token is stale
    └── StoreError (1)
        ├── StoreUnavailable (OSError)      cannot reach or open the store
        ├── StoreIOError (OSError)          a write or fsync failed: nothing was acknowledged
        └── CorruptLog                      a damaged line inside the log (not a torn tail)
            └── LogBehind                   the log ends before where it is known to have reached
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_LEASE_LOST = 4


def shown(value: object, limit: int = 40) -> str:
    """*value* as an error message quotes it: its repr, cut to *limit* characters.

    A number too long to print (Python refuses to format ints of over 4,300 digits) is
    described by its size instead, so quoting bad input can never fail in turn.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 100:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


class DibsError(Exception):
    """dibs could not do that."""

    exit_code: int = EXIT_ERROR
    #: A stable, machine-readable name for the error (``--json`` output carries it).
    code: str = "error"

    def __init__(self, message: str | None = None, *, hint: str | None = None, **details: Any):
        self.message = message or (type(self).__doc__ or "").strip().splitlines()[0]
        self.hint = hint
        self.details = details
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        """The error as the ``--json`` faces report it."""
        out: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.hint:
            out["hint"] = self.hint
        out["exit_code"] = self.exit_code
        out.update(self.details)
        return out


class UsageError(DibsError, ValueError):
    """That input is not valid; nothing was changed."""

    exit_code = EXIT_USAGE
    code = "usage"


class InvalidResource(UsageError):
    """That is not a resource dibs can claim."""

    code = "invalid-resource"


class InvalidSetting(UsageError):
    """A setting has a bad value."""

    code = "invalid-setting"


class AuthError(DibsError, PermissionError):
    """The session token is missing or wrong for that agent."""

    code = "auth"


class NotFound(DibsError, LookupError):
    """No such thing."""

    code = "not-found"


class Refused(DibsError):
    """Refused: the act would collide with another agent or lose work."""

    exit_code = EXIT_REFUSED
    code = "refused"


class Conflict(Refused):
    """Held by another agent."""

    code = "conflict"


class LockTimeout(Refused, TimeoutError):
    """Still held by another agent when the wait ran out."""

    code = "timeout"


class Deadlock(Refused):
    """Refused: waiting would close a cycle of waiting agents, so no wait could ever end."""

    code = "deadlock"


class LeaseLost(DibsError):
    """The lease is lost: it was evicted or its fencing token is no longer current."""

    exit_code = EXIT_LEASE_LOST
    code = "lease-lost"


class StoreError(DibsError):
    """The store could not do that."""

    code = "store"


class StoreUnavailable(StoreError, OSError):
    """The store cannot be opened or reached."""

    code = "store-unavailable"


class StoreIOError(StoreError, OSError):
    """A write to the store failed; the operation was not done."""

    code = "store-io"


class CorruptLog(StoreError):
    """The event log is damaged."""

    code = "corrupt-log"


class LogBehind(CorruptLog):
    """The log ends before a point it is known to have reached: events are missing from its end."""

    code = "log-behind"
