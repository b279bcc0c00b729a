"""Backoff between tries: the one retry loop's arithmetic, for every loop that waits.

A claim waiting for a holder, a pool slot waiting for a free one, a rate limit waiting for
tokens, the merge queue waiting for its turn, a store reconnecting: each tries, and between
tries sleeps a little longer each time (doubling up to a cap), spread by a random factor so
that waiters do not all come back at once, and never past its deadline.

Example::

    pause = Backoff(wait or 0.0)
    while True:
        try:
            return attempt()
        except Conflict:
            if pause.expired():
                raise
            pause.sleep()
"""

from __future__ import annotations

import os
import time


def jitter() -> float:
    """A number in [0.5, 1) from os.urandom (``random`` costs 3 ms to import)."""
    return 0.5 + int.from_bytes(os.urandom(2), "big") / 131072


class Backoff:
    """Pauses between tries: *first* seconds, doubling up to *cap*, within *within* seconds.

    Args:
        within: seconds from now to the deadline; None for no deadline (the caller stops the
            loop by its own rule).
        first: the first pause.
        cap: the longest pause.
        spread: multiply each pause by `jitter` (in [0.5, 1)); off where only one waiter
            retries (a store reconnecting, one queue run).
    """

    __slots__ = ("cap", "deadline", "delay", "spread", "started")

    def __init__(
        self,
        within: float | None = None,
        *,
        first: float = 0.05,
        cap: float = 1.0,
        spread: bool = True,
    ):
        self.started = time.monotonic()
        self.deadline = None if within is None else self.started + within
        self.delay = first
        self.cap = cap
        self.spread = spread

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once past it; infinite without one)."""
        if self.deadline is None:
            return float("inf")
        return self.deadline - time.monotonic()

    def expired(self) -> bool:
        """Whether the deadline has come: the loop should give up now."""
        return self.remaining() <= 0

    def waited(self) -> float:
        """Seconds since the first try, to the millisecond (what a result reports)."""
        return round(time.monotonic() - self.started, 3)

    def pause(self) -> float:
        """The next pause in seconds (within the deadline), and the one after grows."""
        delay = self.delay * jitter() if self.spread else self.delay
        self.delay = min(self.delay * 2, self.cap)
        return max(0.0, min(delay, self.remaining()))

    def told(self, seconds: float) -> float:
        """The pause when the other side said when to come back (*seconds*): that long,
        stretched by up to half again so that waiters told the same time spread out, and
        within the deadline."""
        return max(0.0, min(self.remaining(), seconds * (0.5 + jitter())))

    def sleep(self, seconds: float | None = None) -> None:
        """Sleep the next `pause`, or *seconds* (from `told`)."""
        time.sleep(self.pause() if seconds is None else seconds)
