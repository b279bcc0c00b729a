"""``dibs ready | next | limit | doc | mcp``: what agents call without shell glue."""

from __future__ import annotations

import sys

from dibs.faces.cli.output import (
    common,
    coordinator,
    emit,
    operator_flag,
    print_json,
    read_stdin_text,
    subcommands,
    table,
)
from dibs.service.checks import DEFAULT_WAIT

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def configure_ready(parser: argparse.ArgumentParser) -> None:
    """``dibs ready [--all]``."""
    parser.epilog = (
        "Tasks come from tasks.sources in dibs.toml (default: tasks.toml, beads' .beads/ and\n"
        "CCPM's .claude/epics/*/). Ready: its tool would hand it out (beads: as `bd ready`),\n"
        "dependencies done, nobody holds issue:<id>, no conflicting task in progress."
    )
    parser.add_argument("--all", action="store_true", help="also list tasks that are not ready")
    parser.add_argument(
        "--role", metavar="ROLE", help="only tasks labelled ROLE (labels: or role =)"
    )
    common(parser)
    parser.set_defaults(handler=run_ready)


def run_ready(args: argparse.Namespace) -> int:
    from dibs.integrations import tasks

    with coordinator(args) as coord:
        report = tasks.ready(coord, role=args.role)
    for problem in report["problems"]:
        sys.stderr.write(f"dibs: skipped {problem}\n")
    if args.json:
        print_json(report)
        return 0
    rows = report["tasks"] if args.all else report["ready"]
    if not rows:
        sys.stdout.write("nothing is ready\n" if report["tasks"] else "no tasks found\n")
        return 0
    cells = [
        [r["id"], r["priority"], r["status"], r["title"][:50], "; ".join(r["why"]) or "ready"]
        for r in rows
    ]
    sys.stdout.write(table(cells, ("task", "pri", "status", "title", "ready?")))
    return 0


def configure_next(parser: argparse.ArgumentParser) -> None:
    """``dibs next [--start] [--steal]``."""
    parser.epilog = (
        "Takes the best ready task (priority, then age) for the acting agent and claims\n"
        "issue:<id>, in one transaction: under any number of concurrent callers no task\n"
        "goes to two agents. Exit 1 (not found) when nothing is ready (with --wait: when\n"
        "nothing became ready in time). The task's source hears of it (beads: bd update\n"
        "--status in_progress; CCPM: status: in-progress).\n\n"
        "  dibs next --start --wait 300   # a swarm agent between tasks: one call, no polling"
    )
    parser.add_argument("--start", action="store_true", help="also make its worktree")
    parser.add_argument(
        "--steal", action="store_true", help="take over a task whose holder is stale or dead"
    )
    parser.add_argument("--ttl", type=float, metavar="S", help="lease seconds")
    parser.add_argument(
        "--role",
        metavar="ROLE",
        help="only tasks labelled ROLE (default: the roles the agent registered with)",
    )
    parser.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=DEFAULT_WAIT,
        metavar="S",
        help="while nothing is ready, wait up to S seconds for a task (bare --wait: 600)",
    )
    common(parser, identity=True)
    parser.set_defaults(handler=run_next)


def run_next(args: argparse.Namespace) -> int:
    from dibs.integrations import tasks

    with coordinator(args) as coord:
        task = tasks.next_task(
            coord, steal=args.steal, start=args.start, ttl=args.ttl, role=args.role, wait=args.wait
        )
    for problem in task["problems"]:
        sys.stderr.write(f"dibs: skipped {problem}\n")
    if args.json:
        print_json(task)
        return 0
    stolen = " (taken over from a dead holder)" if task.get("stolen") else ""
    sys.stdout.write(f"{task['id']}: {task['title']}{stolen}\n")
    if task.get("started"):
        adopted = task["started"].get("adopted")
        if adopted:
            sys.stderr.write(f"took over {adopted['agent']}'s worktree ({adopted['path']})\n")
        sys.stdout.write(f"{task['started']['path']}\n")
    return 0


def configure_limit(parser: argparse.ArgumentParser) -> None:
    """``dibs limit set|update|take|status``."""
    parser.epilog = (
        "examples:\n"
        "  dibs limit set github --capacity 5000 --per 3600\n"
        "  dibs limit update github --remaining 812 --reset-at 1795000000\n"
        "  dibs limit take github --cost 1 --wait 60\n\n"
        "set and update change every agent's bucket: they need a verified agent (its\n"
        "token; exit 1 without) or a person with --as-operator (logged as user@host)."
    )
    verb = subcommands(parser)
    setting = verb("set", help="make a token bucket: CAPACITY tokens per SECONDS")
    setting.add_argument("name", metavar="NAME")
    setting.add_argument("--capacity", type=float, required=True, metavar="N")
    setting.add_argument("--per", type=float, required=True, metavar="SECONDS")
    operator_flag(setting, "set it as a person")
    common(setting, identity=True)
    setting.set_defaults(handler=run_limit_set)
    updating = verb("update", help="correct from the API's headers: R left until TIME")
    updating.add_argument("name", metavar="NAME")
    updating.add_argument("--remaining", type=float, required=True, metavar="R")
    updating.add_argument(
        "--reset-at", required=True, metavar="TIME", help="unix seconds or ISO 8601 (UTC)"
    )
    operator_flag(updating, "update it as a person")
    common(updating, identity=True)
    updating.set_defaults(handler=run_limit_update)
    taking = verb("take", help="take tokens, atomically across agents (exit 3 when short)")
    taking.add_argument("name", metavar="NAME")
    taking.add_argument("--cost", type=float, default=1.0, metavar="C")
    taking.add_argument("--wait", nargs="?", type=float, const=DEFAULT_WAIT, metavar="S")
    common(taking, identity=True)
    taking.set_defaults(handler=run_limit_take)
    showing = verb("status", help="every bucket and its tokens now")
    common(showing)
    showing.set_defaults(handler=run_limit_status)


def _when(text: str) -> float:
    from dibs.ground.errors import UsageError, shown

    try:
        return float(text)
    except ValueError:
        pass
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    except (ValueError, OverflowError):
        raise UsageError(f"{shown(text)} is not a time", hint="unix seconds or ISO 8601") from None


def run_limit_set(args: argparse.Namespace) -> int:
    from dibs.integrations import limits

    with coordinator(args) as coord:
        result = limits.set_limit(
            coord, args.name, capacity=args.capacity, per=args.per, as_operator=args.as_operator
        )
    return emit(args, result, f"{args.name}: {result['capacity']:g} per {result['per']:g} s")


def run_limit_update(args: argparse.Namespace) -> int:
    from dibs.integrations import limits

    reset_at = _when(args.reset_at)
    with coordinator(args) as coord:
        result = limits.update(
            coord,
            args.name,
            remaining=args.remaining,
            reset_at=reset_at,
            as_operator=args.as_operator,
        )
    return emit(args, result, f"{args.name}: {result['tokens']:g} left until the reset")


def run_limit_take(args: argparse.Namespace) -> int:
    from dibs.integrations import limits

    with coordinator(args) as coord:
        result = limits.take(coord, args.name, cost=args.cost, wait=args.wait)
    said = f"took {args.cost:g} from {args.name}; {result['remaining']:.2f} left"
    return emit(args, result, said)


def run_limit_status(args: argparse.Namespace) -> int:
    from dibs.integrations import limits

    with coordinator(args) as coord:
        rows = limits.status(coord)
    if args.json:
        print_json(rows)
    elif not rows:
        sys.stdout.write("no limits (dibs limit set NAME --capacity N --per S)\n")
    else:
        cells = [
            [r["name"], f"{r['tokens']:.2f}", f"{r['capacity']:g}", f"{r['per']:g} s"] for r in rows
        ]
        sys.stdout.write(table(cells, ("limit", "tokens", "capacity", "per")))
    return 0


def configure_doc(parser: argparse.ArgumentParser) -> None:
    """``dibs doc read FILE | dibs doc write FILE --if-version N < content``."""
    parser.epilog = (
        "Optimistic locking for shared documents: read the version, edit, write with\n"
        "--if-version; a writer that lost the race gets exit 3 and the current version.\n"
        "Markdown keeps `version: N` in its frontmatter; other files, in the store.\n"
        "write needs a verified agent (its token; exit 1 without) or --as-operator; it\n"
        "writes only UTF-8 text to regular files of the work tree (never under .git, never\n"
        "through a symlink out of it: exit 2), and exits 4 when its lock lapsed first."
    )
    verb = subcommands(parser)
    reading = verb("read", help="print the document's version (--json: and its content)")
    reading.add_argument("file", metavar="FILE")
    common(reading)
    reading.set_defaults(handler=run_doc_read)
    writing = verb("write", help="replace it from stdin if the version still matches")
    writing.add_argument("file", metavar="FILE")
    writing.add_argument("--if-version", type=int, required=True, metavar="N")
    operator_flag(writing, "write as a person")
    common(writing, identity=True)
    writing.set_defaults(handler=run_doc_write)


def run_doc_read(args: argparse.Namespace) -> int:
    from dibs.integrations import documents

    with coordinator(args) as coord:
        doc = documents.read(coord, args.file)
    return emit(args, doc, str(doc["version"]))


def run_doc_write(args: argparse.Namespace) -> int:
    from dibs.integrations import documents

    content = read_stdin_text()
    with coordinator(args) as coord:
        result = documents.write(
            coord, args.file, content, if_version=args.if_version, as_operator=args.as_operator
        )
    return emit(args, result, f"{result['path']}: version {result['version']}")


def configure_mcp(parser: argparse.ArgumentParser) -> None:
    """``dibs mcp [--print-config]``."""
    parser.epilog = (
        "Serves the dibs verbs as MCP tools over stdio (register, unregister, claim, renew,\n"
        "release, heartbeat, status, ready, next, start, finish, check, land, limit_take).\n"
        "An agent the server registers lives as long as its client (the server's parent).\n"
        "Errors are tool errors with the CLI's message, code and exit code.\n"
        "Needs the mcp extra: pip install 'dibs[mcp]'."
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the snippet for an agent's MCP settings (dibs by its absolute path)",
    )
    common(parser, identity=True)
    parser.set_defaults(handler=run_mcp)


def run_mcp(args: argparse.Namespace) -> int:
    with coordinator(args) as coord:
        if args.print_config:
            from dibs.faces.mcp.server import config_snippet

            root = coord.repo.root if coord.repo is not None else "."
            print_json(config_snippet(root))
            return 0
        from dibs.faces.mcp.server import serve

        serve(coord)
    return 0
