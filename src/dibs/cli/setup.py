"""``dibs init``."""

from __future__ import annotations

import sys

from dibs.cli.output import common, print_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def configure_init(parser: argparse.ArgumentParser) -> None:
    """``dibs init``."""
    parser.epilog = (
        "Creates the store in $(git rev-parse --git-common-dir)/dibs (shared by every\n"
        "worktree), writes a commented dibs.toml at the repository root when there is none\n"
        "(commit it: it holds the team's settings), and keeps the worktree folder out of\n"
        "git through .git/info/exclude. Safe to run again."
    )
    common(parser)
    parser.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    """Set up and say what was done."""
    from dibs.setup import init

    result = init(args.directory)
    if args.json:
        print_json(result)
        return 0
    lines = [f"dibs is set up in {result['root']}", f"  store: {result['store']}"]
    if result["created_settings"]:
        lines.append(f"  wrote {result['settings']} (commit it: the team's settings)")
    else:
        lines.append(f"  kept {result['settings']}")
    if result["excluded"]:
        lines.append(f"  added {result['excluded']} to .git/info/exclude")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
