"""The systems dibs does not run on natively, and the error that says so.

Its own module so that the implementations (`posix`) can raise it without importing the
package that selects them (which imports them: an import loop).
"""

from __future__ import annotations

import sys

from dibs.ground.errors import DibsError


class UnsupportedPlatform(DibsError):
    """dibs does not run natively on this system."""

    code = "unsupported-platform"


def unsupported(system: str = sys.platform) -> UnsupportedPlatform | None:
    """The error to stop with on *system*, or None where dibs runs."""
    if system in ("win32", "cygwin"):
        return UnsupportedPlatform(
            "native Windows is not supported yet: use WSL",
            hint="install WSL (`wsl --install` in an administrator PowerShell), then install "
            "and run dibs inside it, with the repository on the Linux file system (~/...)",
        )
    return None
