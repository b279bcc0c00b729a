"""Every benchmark imports cleanly, and none can shadow a standard-library module.

`make bench` runs scripts from a clean clone; a bench named after a stdlib module (the old
`bench/queue.py`) was found first on `sys.path` by `multiprocessing` in another bench and broke
the whole run. Benchmarks are not run here (figures never belong in tests), only imported.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))

_IMPORT = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("bench_under_test", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
"""


def test_bench_folder_has_scripts() -> None:
    """The bench folder is where this test expects it."""
    assert SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_name_does_not_shadow_stdlib(script: Path) -> None:
    """A bench script's name is not the name of a standard-library module."""
    assert script.stem not in sys.stdlib_module_names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_imports_without_running(script: Path) -> None:
    """Importing a bench script succeeds and runs nothing (its work sits behind __main__)."""
    done = subprocess.run(
        [sys.executable, "-P", "-c", _IMPORT, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (0, "") == (done.returncode, done.stderr)
