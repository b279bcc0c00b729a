"""Whether anything may hear of a command's events, answered without the task readers.

A claim or release of an ``issue:`` asks after every call whether a tracker or an ``[events]``
command listens (`dibs.integrations.tasks.sync`). Usually nothing does, and importing the task
package (its readers and model) to say so cost more than the claim itself. This module answers
from the settings and the default sources' existence alone: "no" is final; "maybe" goes to
`dibs.integrations.tasks.sync.enabled`, which reads the sources to decide.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from dibs.service import Coordinator

#: Read when ``tasks.sources`` names none: dibs's own file, beads, CCPM's epics.
DEFAULT_SOURCES = ("tasks.toml", ".beads/", ".claude/epics/*/")


def may_listen(coord: Coordinator) -> bool:
    """False when nothing can hear of events: no ``[events]`` command, and no task source to
    write back to (write-back off, or no source configured or found)."""
    if coord.settings["events"]:
        return True
    if not coord.settings["tasks.writeback"] or coord.repo is None:
        return False
    names, _ = sources(coord.repo.main_root, coord.settings["tasks.sources"])
    return bool(names)


def sources(top: str, configured: Sequence[str]) -> tuple[list[str], bool]:
    """The task sources under *top* (the main checkout): the *configured* ones, else the
    default ones that exist; and whether they were configured."""
    if configured:
        return list(configured), True
    found = []
    for source in DEFAULT_SOURCES:
        if source.endswith("*/"):
            parent = os.path.join(top, os.path.dirname(source.rstrip("/")))
            if os.path.isdir(parent) and _glob(os.path.join(top, source)):  # glob only then
                found.append(source)
        elif os.path.exists(os.path.join(top, source)):
            found.append(source)
    return found, False


def _glob(pattern: str) -> list[str]:
    """`glob.glob`, imported when a pattern is to be matched (it compiles regexes on import)."""
    import glob

    return glob.glob(pattern)
