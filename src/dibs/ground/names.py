"""The one pattern for names people and agents type: agent names and store namespaces.

1-64 characters of ``a-z``, ``0-9``, ``.``, ``_`` and ``-``, starting with a letter or digit:
safe in a file name, a branch name, a URL and a log line. The service checks agent names with
it, the settings check ``store.namespace``, the MCP schema offers it to clients.
"""

from __future__ import annotations

#: A name: ``[a-z0-9][a-z0-9._-]{0,63}`` (match it whole, with ``re.fullmatch``).
NAME = r"[a-z0-9][a-z0-9._-]{0,63}"

_FIRST = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_NEXT = _FIRST | frozenset("._-")


def is_name(text: str) -> bool:
    """Whether the whole of *text* is a `NAME`; decided without ``re``, whose import costs a CLI
    call milliseconds (the service checks the agent's name on every call)."""
    return 0 < len(text) <= 64 and text[0] in _FIRST and _NEXT.issuperset(text)
