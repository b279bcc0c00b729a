"""The public API: a sorted __all__ whose every name resolves, and a light import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dibs


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, and every name in it can be imported from dibs."""
    assert sorted(dibs.__all__) == dibs.__all__
    for name in dibs.__all__:
        assert getattr(dibs, name) is not None


def test_importing_the_cli_stays_off_heavy_modules() -> None:
    """The CLI's claim path imports no dataclasses, typing, pathlib, subprocess or hashlib."""
    code = (
        "import sys; from dibs.faces.cli import main; "
        "import dibs.faces.cli.claims, dibs.service, dibs.store.local, dibs.ground.settings; "
        "print(' '.join(sorted(m for m in ('dataclasses', 'typing', 'pathlib', 'subprocess', "
        "'hashlib', 'tomllib', 'inspect', 'psycopg') if m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "" == out.stdout.strip()


def test_the_edit_guard_stays_off_heavy_modules(tmp_path: Path) -> None:
    """Deciding an Edit (every agent edit runs it) imports none of the heavy modules."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.py").write_text("a = 1\n")
    payload = json.dumps(
        {
            "session_id": "s",
            "cwd": str(tmp_path),
            "hook_event_name": "PreToolUse",
            "tool_name": "Edit",
            "tool_input": {"file_path": "a.py", "old_string": "a = 1", "new_string": "b"},
        }
    )
    code = (
        "import io, sys; sys.stdin = io.StringIO(sys.argv[1]); from dibs.faces.cli import main; "
        "code = main(['guard', 'claude']); "
        "print(' '.join(sorted(m for m in ('dataclasses', 'typing', 'pathlib', 'subprocess', "
        "'hashlib', 'tomllib', 'inspect', 'psycopg', 'argparse') if m in sys.modules)), "
        "file=sys.stderr)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, payload],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if not k.startswith("DIBS_")},
    )
    assert "{}" == out.stdout.strip()
    assert "" == out.stderr.strip()


def test_a_claim_and_release_stay_off_heavy_modules(tmp_path: Path) -> None:
    """`dibs claim issue:X` and `dibs release issue:X` (an agent's hooks run them) import no
    argparse, no json or re (dibs.ground.fastjson, tests/unit/test_without_re.py) and what
    they bring, and no task package when nothing listens for their events."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIBS_")}
    register = [sys.executable, "-m", "dibs", "agent", "register", "a1", "--json"]
    out = subprocess.run(
        register, capture_output=True, text=True, check=True, cwd=tmp_path, env=env
    )
    env |= {"DIBS_AGENT": "a1", "DIBS_TOKEN": json.loads(out.stdout)["token"]}
    heavy = (
        "dataclasses typing pathlib subprocess hashlib tomllib inspect psycopg argparse gettext "
        "json re enum functools collections types dibs.integrations.tasks"
    )
    for verb in ("claim", "release"):
        code = (
            f"import sys; from dibs.faces.cli import main; code = main([{verb!r}, 'issue:X']); "
            f"print(code, *sorted(m for m in {heavy.split()!r} if m in sys.modules))"
        )
        run = [sys.executable, "-c", code]
        out = subprocess.run(run, capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
        assert "0" == out.stdout.strip().splitlines()[-1]
