"""Numbers for people: durations as ``74 s``, ``3 min``, ``2 h``."""

from __future__ import annotations


def seconds(value: float | None) -> str:
    """A duration for people: ``74 s``, ``3 min``, ``2 h``, ``5 d``."""
    if value is None:
        return "?"
    if value < 100:
        return f"{value:.0f} s"
    if value < 6000:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.0f} h"
    return f"{value / 86400:.0f} d"
