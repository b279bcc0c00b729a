"""A POSIX system without ``/proc`` and without ``os.fdatasync`` (as on macOS), simulated.

Put this folder first on ``PYTHONPATH``: every Python process started with it (pytest, the
installed ``dibs``, its watcher) then finds no ``os.fdatasync`` and no file under ``/proc``
(opening, listing or stat-ing one raises FileNotFoundError, as when ``/proc`` is not mounted).
Used by tests/integration/test_platforms.py; harmless elsewhere, since it acts only when
``DIBS_TEST_NO_PROC=1``.
"""

from __future__ import annotations

import builtins
import os


def _hidden(path: object) -> bool:
    if isinstance(path, int):
        return False
    try:
        text = os.fsdecode(os.fspath(path))  # type: ignore[arg-type]
    except TypeError:
        return False
    return text == "/proc" or text.startswith("/proc/")


def _hide(function):  # type: ignore[no-untyped-def]
    def hiding(*args, **kwargs):  # type: ignore[no-untyped-def]
        path = args[0] if args else kwargs.get("path", kwargs.get("file"))
        if path is not None and _hidden(path):
            raise FileNotFoundError(2, "No such file or directory (no /proc here)", str(path))
        return function(*args, **kwargs)

    return hiding


if os.environ.get("DIBS_TEST_NO_PROC") == "1":
    if hasattr(os, "fdatasync"):
        del os.fdatasync
    builtins.open = _hide(builtins.open)
    os.open = _hide(os.open)
    os.stat = _hide(os.stat)
    os.lstat = _hide(os.lstat)
    os.listdir = _hide(os.listdir)
    os.scandir = _hide(os.scandir)
