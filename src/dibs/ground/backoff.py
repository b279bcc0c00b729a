"""Backoff between tries: the jitter every retry loop multiplies its delay by."""

from __future__ import annotations

import os


def jitter() -> float:
    """A number in [0.5, 1) from os.urandom (``random`` costs 3 ms to import)."""
    return 0.5 + int.from_bytes(os.urandom(2), "big") / 131072
