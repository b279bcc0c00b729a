"""Input checks every face runs before touching the store: names, numbers, text, durations.

A bad value raises `UsageError` with what was wrong and how to mend it, and changes nothing.
"""

from __future__ import annotations

from dibs.ground.errors import UsageError, shown
from dibs.ground.names import NAME, is_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

AGENT_NAME = NAME
MAX_NOTE = 1000
MAX_REASON = 1000
MAX_TTL = 7 * 86400.0
#: The longest any face may ask to wait (seconds): a week, as the longest ttl.
MAX_WAIT = 7 * 86400.0
#: Process ids fit in pid_t, a 32-bit signed int.
MAX_PID = (1 << 31) - 1
#: Sequence numbers and counts of events fit in PostgreSQL's bigint.
MAX_SEQ = (1 << 63) - 1
#: ``--wait`` with no number waits this long (seconds).
DEFAULT_WAIT = 600.0


def check_agent_name(name: str) -> str:
    """Validate an agent id: ``[a-z0-9][a-z0-9._-]{0,63}``."""
    if not isinstance(name, str) or not is_name(name):
        raise UsageError(
            f"{name!r} is not a valid agent name",
            hint="use 1-64 characters: lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit",
        )
    return name


def check_number(
    value: Any,
    what: str,
    *,
    low: float,
    high: float,
    above: bool = False,
    whole: bool = False,
    hint: str | None = None,
) -> Any:
    """Validate a number any face passed in; return it unchanged.

    It must be an int or a float (not a bool), from *low* (or strictly above it, with *above*)
    to *high*, and an int with *whole*. NaN and the infinities fail the range comparisons, so
    they are refused with everything else out of range; no face may let one through to the
    log (a bucket that never runs out, a deadline that never comes).
    """
    kinds = int if whole else int | float
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or not (low < value if above else low <= value)
        or not value <= high
    ):
        kind = "a whole number" if whole else "a number"
        raise UsageError(
            f"{what} {shown(value)} is out of range",
            hint=hint or f"give {kind} {'above' if above else 'from'} {low:g} to {high:g}",
        )
    return value


def check_ttl(ttl: float | None, what: str = "ttl") -> float | None:
    """Validate a ttl in seconds (None passes: use the default)."""
    if ttl is None:
        return None
    hint = f"give seconds, more than 0, at most {MAX_TTL:g}"
    return float(check_number(ttl, what, low=0, high=MAX_TTL, above=True, hint=hint))


def check_wait(wait: float | None, what: str = "wait") -> float | None:
    """Validate seconds to wait (None passes: do not wait, or the caller's default)."""
    if wait is None:
        return None
    hint = f"give seconds, 0 or more, at most {MAX_WAIT:g}"
    return float(check_number(wait, what, low=0, high=MAX_WAIT, hint=hint))


def _check_text(value: str | None, what: str, limit: int, *, required: bool = False) -> None:
    """Validate free text (a note, a reason): length, no control characters, valid UTF-8."""
    if value is None:
        if required:
            raise UsageError(f"a {what} is required", hint=f"say why with --{what} TEXT")
        return
    if not isinstance(value, str):
        raise UsageError(f"the {what} must be text, not {type(value).__name__}")
    check_utf8(value, f"the {what}")
    if required and not value.strip():
        raise UsageError(f"the {what} is empty", hint=f"say why with --{what} TEXT")
    if len(value) > limit:
        raise UsageError(f"the {what} is {len(value)} characters; the limit is {limit}")
    if any(ord(ch) < 32 and ch != "\t" for ch in value):
        raise UsageError(f"the {what} contains control characters", hint="use plain text")


def check_utf8(text: str, what: str) -> str:
    """Refuse text that cannot be written as UTF-8: bytes a face could not decode (Python
    keeps undecodable command-line bytes as lone surrogates) must not reach the log."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise UsageError(
            f"{what} holds bytes that are not UTF-8 text",
            hint="pass UTF-8 text (check the terminal's or the caller's encoding)",
        ) from None
    return text
