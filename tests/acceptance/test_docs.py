"""Docs that cannot drift: the CLI reference is generated, and every command is in it."""

from __future__ import annotations

import re
from pathlib import Path

from dibs.core.events import OPS
from dibs.faces.cli import COMMANDS
from dibs.faces.cli.docgen import generate

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_cli_reference_is_generated_from_the_code() -> None:
    """docs/reference/cli.md is exactly what `make docs` prints (run it after changing flags)."""
    assert generate() == (DOCS / "reference" / "cli.md").read_text()


def test_every_command_is_documented() -> None:
    """Every command has its section in the CLI reference."""
    text = (DOCS / "reference" / "cli.md").read_text()
    missing = [name for name in COMMANDS if f"## dibs {name}\n" not in text]
    assert [] == missing


def test_every_event_op_is_in_the_schema_doc() -> None:
    """The event schema page lists every op the log can hold."""
    text = (DOCS / "reference" / "events.md").read_text()
    missing = [op for op in OPS if f"`{op}`" not in text]
    assert [] == missing


def test_readme_quick_start_has_exactly_two_setup_commands() -> None:
    """The quick start is `make demo` and `make test`, nothing else to install by hand."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:sh|console|bash)?\n(.*?)```", section, re.DOTALL)
    assert block is not None
    commands = [line for line in block.group(1).splitlines() if line and not line.startswith("#")]
    assert ["make demo", "make test"] == commands


def test_docs_links_resolve() -> None:
    """Relative links between docs pages point at files that exist."""
    broken = [
        f"{page.relative_to(ROOT)} -> {target}"
        for page in [ROOT / "README.md", *DOCS.rglob("*.md")]
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text())
        if not (page.parent / target).exists()
    ]
    assert [] == broken
