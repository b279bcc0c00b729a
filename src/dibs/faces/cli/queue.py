"""``dibs land | queue | gate | gates | conflicts``: the merge queue."""

from __future__ import annotations

import sys

from dibs.faces.cli.output import (
    common,
    coordinator,
    emit,
    operator_flag,
    print_json,
    subcommands,
    table,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def _batch(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 1 <= value <= 64:
        raise argparse.ArgumentTypeError("give 1 to 64")
    return value


def configure_land(parser: argparse.ArgumentParser) -> None:
    """``dibs land [BRANCH] [--issue I] [--batch N] [--queue-only] [--wait S]``."""
    parser.epilog = (
        "examples:\n"
        "  dibs land                       # this worktree's branch\n"
        "  dibs land agent/ROOSE-158 --issue ROOSE-158\n"
        "  dibs land --batch 8             # test up to 8 entries together\n"
        "  dibs land --parallel 4          # test 4 at once, each on those ahead of it\n"
        "  dibs land --priority high       # ahead of normal entries not yet tested\n\n"
        "The branch's current commit is queued with the fencing token of its issue claim.\n"
        "If nobody is processing the queue, this command does, until the queue is empty;\n"
        "otherwise it waits for its entry. Exit 0 landed, 3 failed or refused (a gate, a\n"
        "conflict, a file another agent holds, uncommitted changes to a landed file in the\n"
        "target's checkout), 4 lease lost (the issue claim was evicted or taken over). Only\n"
        "the agent holding the issue (its token) lands it: exit 1 without a valid token, 3\n"
        "when another agent holds it; a person lands it with --as-operator (logged with the\n"
        "OS user and host)."
    )
    parser.add_argument("branch", nargs="?", metavar="BRANCH", help="default: the current branch")
    parser.add_argument("--issue", metavar="ISSUE", help="default: from the branch name")
    parser.add_argument(
        "--batch", type=_batch, metavar="N", help="entries to test together (merge.batch)"
    )
    parser.add_argument(
        "--parallel",
        type=_batch,
        metavar="N",
        help="entries to test at once, each on those ahead (merge.parallel)",
    )
    parser.add_argument(
        "--priority",
        choices=("normal", "high"),
        default="normal",
        metavar="LEVEL",
        help="high: ahead of every normal entry not yet tested (default: normal)",
    )
    parser.add_argument(
        "--queue-only", action="store_true", help="enqueue and return; do not process or wait"
    )
    parser.add_argument("--wait", type=float, metavar="S", help="give up waiting after S seconds")
    operator_flag(parser, "land the branch of the agent holding the issue")
    common(parser, identity=True)
    parser.set_defaults(handler=run_land)


def run_land(args: argparse.Namespace) -> int:
    from dibs.integrations import queue

    with coordinator(args) as coord:
        if args.queue_only:
            item = queue.enqueue(
                coord,
                args.branch,
                issue=args.issue,
                priority=args.priority,
                as_operator=args.as_operator,
            )
            if args.json:
                print_json(item)
            else:
                sys.stdout.write(f"{item['id']}: {item['branch']} queued (issue {item['issue']})\n")
            return 0

        def progress(item: dict[str, Any]) -> None:
            if not args.json and item["state"] in ("queued", "running"):
                where = f" at position {item['position']}" if item.get("position") else ""
                sys.stderr.write(f"{item['id']}: {item['branch']} {item['state']}{where}\n")

        item = queue.land(
            coord,
            args.branch,
            issue=args.issue,
            batch=args.batch,
            parallel=args.parallel,
            priority=args.priority,
            wait=args.wait,
            on_change=progress,
            as_operator=args.as_operator,
        )
    if args.json:
        print_json(item)
    elif item["state"] == "landed":
        sys.stdout.write(
            f"{item['id']}: {item['branch']} landed on {item['target']} at {item['commit'][:12]}\n"
        )
    else:
        sys.stdout.write(f"{item['id']}: {item['branch']} failed: {item['reason']}\n")
        if item.get("tail"):
            sys.stdout.write("".join(f"  | {line}\n" for line in item["tail"].splitlines()))
        if item.get("hint"):
            sys.stdout.write(f"hint: {item['hint']}\n")
    if item["state"] == "landed":
        if item.get("flaky") and not args.json:
            sys.stdout.write(f"flaky: {', '.join(item['flaky'])} failed, then passed\n")
        return 0
    return 4 if item.get("lease_lost") else 3


def configure_queue(parser: argparse.ArgumentParser) -> None:
    """``dibs queue [list] [--history [--limit N]] | dibs queue cancel ENTRY``."""
    parser.epilog = (
        "With --history: the recent landings, failures and cancellations, newest first, with\n"
        "their reasons (the gate and the tail of its output, the conflicting files and the\n"
        "entries ahead they conflict with), how long each took, and flaky gates."
    )
    _history_flags(parser)
    common(parser)
    parser.set_defaults(handler=run_queue)
    import functools

    sub = parser.add_subparsers(dest="verb", metavar="VERB")  # no verb: list
    verb = functools.partial(sub.add_parser, formatter_class=parser.formatter_class)
    listing = verb("list", help="entries, state, position, timings (the default)")
    _history_flags(listing)
    common(listing)
    listing.set_defaults(handler=run_queue)
    cancelling = verb("cancel", help="take a waiting entry out of the queue")
    cancelling.add_argument("entry", metavar="ENTRY", help="the entry id, e.g. q12")
    operator_flag(cancelling, "cancel another agent's entry")
    common(cancelling, identity=True)
    cancelling.set_defaults(handler=run_cancel)


def _history_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--history", action="store_true", help="recent landings and failures, with reasons"
    )
    parser.add_argument(
        "--limit", type=_batch, default=20, metavar="N", help="history rows (1 to 50; 20)"
    )


def run_queue(args: argparse.Namespace) -> int:
    from dibs.ground.humanize import seconds
    from dibs.integrations import queue

    if getattr(args, "history", False):
        return _run_history(args)
    with coordinator(args) as coord:
        found = queue.entries(coord)
    if args.json:
        print_json(found)
        return 0
    if not found:
        sys.stdout.write("the queue is empty\n")
        return 0
    rows = []
    for item in found:
        took = ""
        if "seconds" in item:
            spent = item["seconds"]
            took = f"{spent:.1f} s" if spent < 60 else seconds(spent)
        said = item.get("reason", "") if item["state"] != "landed" else item["commit"][:12]
        rows.append(
            [
                item["id"],
                item.get("position", ""),
                item["state"],
                item["branch"],
                item["issue"],
                item["agent"],
                item["enqueued"][11:19],
                took,
                said,
            ]
        )
    headers = ("entry", "pos", "state", "branch", "issue", "agent", "queued", "took", "result")
    sys.stdout.write(table(rows, headers))
    return 0


def _run_history(args: argparse.Namespace) -> int:
    from dibs.integrations import queue

    with coordinator(args) as coord:
        rows = queue.history(coord, min(args.limit, queue.KEEP_FINISHED))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        sys.stdout.write("nothing has landed or failed yet\n")
        return 0
    lines = []
    for row in rows:
        took = f"{row['seconds']:.1f} s" if "seconds" in row else ""
        said = row.get("commit", "")[:12] if row["outcome"] == "landed" else row.get("reason", "")
        if row.get("flaky"):
            said += f" (flaky: {', '.join(row['flaky'])})"
        when = str(row.get("finished", ""))[11:19]
        lines.append([row["id"], row["outcome"], row["branch"], row["agent"], when, took, said])
    sys.stdout.write(table(lines, ("entry", "outcome", "branch", "agent", "at", "took", "result")))
    for row in rows:
        if row["outcome"] == "failed" and row.get("tail"):
            sys.stdout.write(f"{row['id']} {row.get('gate', '')}:\n")
            sys.stdout.write("".join(f"  | {line}\n" for line in row["tail"].splitlines()[-5:]))
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    from dibs.integrations import queue

    with coordinator(args) as coord:
        item = queue.cancel(coord, args.entry, as_operator=args.as_operator)
    return emit(args, item, f"{item['id']}: {item['branch']} cancelled")


def configure_gate(parser: argparse.ArgumentParser) -> None:
    """``dibs gate pass|fail ISSUE GATE [--note TEXT] [--commit REF]``."""
    parser.epilog = (
        "example:\n  dibs gate pass ROOSE-158 review --note 'looks good'\n\n"
        "A manual gate holds for one commit: the issue's queued commit, else its branch's\n"
        "head (or --commit). New commits need the gate again. The verdict is given by a\n"
        "verified agent (its token; exit 1 without) or a person with --as-operator (logged\n"
        "with the OS user and host); the agent whose work the gate judges cannot pass it\n"
        "(exit 3)."
    )
    verb = subcommands(parser)
    for name, said in (("pass", "record that a gate passed"), ("fail", "record a failure")):
        sub = verb(name, help=said)
        sub.add_argument("issue", metavar="ISSUE")
        sub.add_argument("gate", metavar="GATE", help="e.g. review")
        sub.add_argument("--note", metavar="TEXT", help="a word on the verdict")
        sub.add_argument("--commit", metavar="REF", help="the commit judged (default: see below)")
        operator_flag(sub, "give the verdict as a person")
        common(sub, identity=True)
        sub.set_defaults(handler=run_gate, passed=name == "pass")


def run_gate(args: argparse.Namespace) -> int:
    from dibs.integrations import queue

    with coordinator(args) as coord:
        result = queue.record_gate(
            coord,
            args.issue,
            args.gate,
            passed=args.passed,
            note=args.note,
            commit=args.commit,
            as_operator=args.as_operator,
        )
    if args.json:
        print_json(result)
    else:
        verdict = "passed" if result["result"] == "pass" else "failed"
        sys.stdout.write(f"{args.gate} {verdict} for {args.issue} at {result['commit'][:12]}\n")
    return 0


def configure_gates(parser: argparse.ArgumentParser) -> None:
    """``dibs gates ISSUE``."""
    parser.add_argument("issue", metavar="ISSUE")
    common(parser)
    parser.set_defaults(handler=run_gates)


def run_gates(args: argparse.Namespace) -> int:
    from dibs.integrations import queue

    with coordinator(args) as coord:
        report = queue.gates(coord, args.issue)
    if args.json:
        print_json(report)
    else:
        rows = [
            [
                g["gate"],
                g["kind"],
                "yes" if g["required"] else "no",
                g["state"],
                g.get("commit", "")[:12],
                g.get("note", "") or g.get("tail", "").split("\n")[-1],
            ]
            for g in report["gates"]
        ]
        if rows:
            sys.stdout.write(table(rows, ("gate", "kind", "required", "state", "commit", "note")))
        else:
            sys.stdout.write("no gates are configured ([gates] in dibs.toml)\n")
        if report["missing"]:
            sys.stdout.write(f"not ready: {', '.join(report['missing'])}\n")
    return 0 if report["ready"] else 3


def configure_conflicts(parser: argparse.ArgumentParser) -> None:
    """``dibs conflicts``."""
    parser.epilog = "Exit 3 when some pair would conflict, so scripts can stop early."
    common(parser)
    parser.set_defaults(handler=run_conflicts)


def run_conflicts(args: argparse.Namespace) -> int:
    from dibs.integrations import queue

    with coordinator(args) as coord:
        report = queue.conflicts(coord)
    if args.json:
        print_json(report)
    elif not report["conflicts"]:
        sys.stdout.write(
            f"no conflicts among {len(report['branches'])} branches and {report['target']}\n"
        )
    else:
        rows = [[c["a"], c["b"], ", ".join(c["files"])] for c in report["conflicts"]]
        sys.stdout.write(table(rows, ("branch", "conflicts with", "files")))
    return 3 if report["conflicts"] else 0
