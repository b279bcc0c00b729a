"""Generate ``docs/reference/cli.md`` from the parsers' own ``--help``.

``python -m dibs.faces.cli.docgen > docs/reference/cli.md`` (or ``make docs``). A test fails when
the file differs from what this prints, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import os
import sys

from dibs.faces.cli import COMMANDS, build_parser, top_help


def _help(parser: argparse.ArgumentParser) -> str:
    # A fixed width keeps the reference identical whatever terminal generates it.
    os.environ["COLUMNS"] = "100"
    return parser.format_help()


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public way to list subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def generate() -> str:
    """The whole CLI reference as markdown."""
    out = [
        "# CLI reference",
        "",
        "Generated from `dibs --help` by `make docs` (`python -m dibs.faces.cli.docgen`); a test",
        "fails when this file and the code disagree. Exit codes: see [exit codes](exit-codes.md).",
        "",
        "```",
        top_help().rstrip(),
        "```",
        "",
    ]
    for name in COMMANDS:
        parser = build_parser(name)
        out += [f"## dibs {name}", "", "```", _help(parser).rstrip(), "```", ""]
        for verb, sub in _subparsers(parser).items():
            out += [f"### dibs {name} {verb}", "", "```", _help(sub).rstrip(), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(generate())
