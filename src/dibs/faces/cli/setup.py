"""``dibs init`` and ``dibs store migrate``."""

from __future__ import annotations

import sys

from dibs.faces.cli.output import common, print_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def configure_init(parser: argparse.ArgumentParser) -> None:
    """``dibs init``."""
    parser.epilog = (
        "Creates the store in $(git rev-parse --git-common-dir)/dibs (shared by every\n"
        "worktree), writes a commented dibs.toml at the repository root when there is none\n"
        "(commit it: it holds the team's settings), and keeps the worktree folder out of\n"
        "git through .git/info/exclude. Safe to run again.\n\n"
        "With --store postgresql://USER@HOST:PORT/DB, agents on several machines share one\n"
        "store: dibs creates (or migrates) its tables in that database, creates this\n"
        "repository's namespace, and records the URL (never its password: use ~/.pgpass\n"
        "or PGPASSWORD) as store.url in dibs.toml. Commit dibs.toml so other clones follow.\n\n"
        "With --union-merge, append-only JSONL files (agents' logs, task lists) get git's\n"
        "union merge in .gitattributes, so two branches that each appended lines merge\n"
        "without a conflict (commit .gitattributes).\n\n"
        "examples:\n"
        "  dibs init\n"
        "  dibs init --union-merge              # *.jsonl merge=union\n"
        "  dibs init --store postgresql://dibs@db.internal:5432/dibs"
    )
    parser.add_argument(
        "--store", metavar="URL", help="a shared PostgreSQL store: postgresql://USER@HOST/DB"
    )
    parser.add_argument(
        "--union-merge",
        nargs="?",
        const="*.jsonl",
        metavar="GLOB",
        help="use git's union merge for these append-only files (bare: *.jsonl)",
    )
    common(parser)
    parser.set_defaults(handler=run_init)


def run_init(args: argparse.Namespace) -> int:
    """Set up and say what was done."""
    from dibs.integrations.setup import init

    result = init(args.directory, store=args.store, union_merge=args.union_merge)
    if args.json:
        print_json(result)
        return 0
    lines = [f"dibs is set up in {result['root']}", f"  store: {result['store']}"]
    if result["created_settings"]:
        lines.append(f"  wrote {result['settings']} (commit it: the team's settings)")
    elif result["recorded_store"]:
        lines.append(f"  recorded the store in {result['settings']} (commit it)")
    else:
        lines.append(f"  kept {result['settings']}")
    if result["password_left_out"]:
        lines.append("  the password was left out of dibs.toml: put it in ~/.pgpass or PGPASSWORD")
    if result["excluded"]:
        lines.append(f"  added {result['excluded']} to .git/info/exclude")
    if result.get("union_merge"):
        lines.append(f"  added `{result['union_merge']}` to .gitattributes (commit it)")
    elif args.union_merge is None:
        lines.append("  tip: `dibs init --union-merge` merges append-only *.jsonl files by union")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def configure_store(parser: argparse.ArgumentParser) -> None:
    """``dibs store migrate --to URL``."""
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    migrate = sub.add_parser(
        "migrate",
        help="copy the local store into PostgreSQL",
        description="Copy this repository's local store into a PostgreSQL database.",
        formatter_class=parser.formatter_class,
        epilog="examples:\n"
        "  dibs store migrate --to postgresql://dibs@db.internal:5432/dibs\n\n"
        "Copies the whole log (and so the live agents and claims, with their tokens and\n"
        "remaining lease time) into an empty namespace in one transaction, reads it back\n"
        "to verify it, then records the URL in dibs.toml. The local store stays in\n"
        ".git/dibs as a read-only backup: agents still writing to it are refused and told\n"
        "where the store went. Nothing is changed when any step fails.",
    )
    migrate.add_argument(
        "--to", required=True, metavar="URL", help="postgresql://USER@HOST:PORT/DATABASE"
    )
    common(migrate)
    migrate.set_defaults(handler=run_store_migrate)


def run_store_migrate(args: argparse.Namespace) -> int:
    """Migrate and say what was copied."""
    from dibs.integrations.setup import migrate_store

    result = migrate_store(args.directory, to=args.to)
    if args.json:
        print_json(result)
        return 0
    lines = [
        (
            f"copied {result['events']} events ({result['agents']} agents, "
            f"{result['claims']} claims) from {result['from']}"
        ),
        f"  to {result['to']} (verified)",
        f"  the local store stays in {result['backup']} as a read-only backup",
    ]
    if result["recorded_store"]:
        lines.append("  recorded the new store in dibs.toml (commit it)")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
