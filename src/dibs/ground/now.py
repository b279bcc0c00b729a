"""A reading of the clock that decides, and wall times for people.

The ground floor holds it because both the rules (`dibs.core`, which is given a `Now` and never
reads a clock) and this machine (`dibs.ground.host.now`, which reads one) speak of it.
"""

from __future__ import annotations


class Now:
    """A reading of the one clock that decides: boot id, monotonic nanoseconds, wall seconds.

    Lease expiry compares ``mono`` readings taken under the same ``boot`` only; ``wall`` is
    for people. With PostgreSQL the database server supplies all three.
    """

    __slots__ = ("boot", "mono", "wall")

    def __init__(self, boot: str, mono: int, wall: float):
        self.boot = boot
        self.mono = mono
        self.wall = wall

    def __repr__(self) -> str:
        return f"Now(boot={self.boot!r}, mono={self.mono}, wall={self.wall})"

    def iso(self) -> str:
        """The wall time as ISO 8601 UTC with milliseconds."""
        return iso_time(self.wall)


_second: list[object] = [None, ""]  # the last whole second formatted, and its text


def iso_time(wall: float) -> str:
    """Format unix seconds as ``2026-11-23T10:00:00.123Z`` (no datetime import: it is slow)."""
    whole = int(wall)
    if _second[0] != whole:
        import time

        _second[0] = whole
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
    return f"{_second[1]}.{int((wall - whole) * 1000):03d}Z"
