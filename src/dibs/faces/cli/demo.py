"""``dibs demo``."""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def configure_demo(parser: argparse.ArgumentParser) -> None:
    """``dibs demo [--agents N] [--issues M] [--keep]``."""
    parser.epilog = (
        "Makes a throw-away git repository, starts several agent processes that race for\n"
        "the same issues, kills one with SIGKILL while it holds an issue, and shows that its\n"
        "claim is evicted at once and every issue is done exactly once. Then three agents\n"
        "each `dibs start` an issue in a worktree of their own; one is killed mid-work, the\n"
        "others land on main through the merge queue and `dibs finish`."
    )
    parser.add_argument("--agents", type=int, default=4, metavar="N", help="agents (4)")
    parser.add_argument("--issues", type=int, default=8, metavar="M", help="issues (8)")
    parser.add_argument("--keep", action="store_true", help="keep the repository afterwards")
    parser.add_argument("--json", action="store_true", help="print the outcome as JSON at the end")
    parser.add_argument("-C", dest="directory", help=argparse_suppress())
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    parser.set_defaults(handler=run_demo)


def argparse_suppress() -> str:
    import argparse

    return argparse.SUPPRESS


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    from dibs.ground.errors import UsageError

    if not 3 <= args.agents <= 16 or not 1 <= args.issues <= 100:
        raise UsageError("use 3 to 16 agents and 1 to 100 issues")
    from dibs.faces import demo

    outcome = demo.run(agents=args.agents, issues=args.issues, keep=args.keep)
    if args.json:
        from dibs.faces.cli.output import print_json

        print_json(outcome)
    return 0 if len(outcome["done"]) == args.issues else 1
