"""The public API: a sorted __all__ whose every name resolves, and a light import."""

from __future__ import annotations

import subprocess
import sys

import dibs


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, and every name in it can be imported from dibs."""
    assert sorted(dibs.__all__) == dibs.__all__
    for name in dibs.__all__:
        assert getattr(dibs, name) is not None


def test_importing_the_cli_stays_off_heavy_modules() -> None:
    """The CLI's claim path imports no dataclasses, typing, pathlib, subprocess or hashlib."""
    code = (
        "import sys; from dibs.cli import main; "
        "import dibs.cli.claims, dibs.service, dibs.store.local, dibs.config; "
        "print(' '.join(sorted(m for m in ('dataclasses', 'typing', 'pathlib', 'subprocess', "
        "'hashlib', 'tomllib', 'inspect', 'psycopg') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "" == out.stdout.strip()
