"""``dibs start | finish | run | pool | worktrees``: an agent's worktree, from start to finish."""

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
from dibs.service.checks import DEFAULT_WAIT

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def configure_start(parser: argparse.ArgumentParser) -> None:
    """``dibs start ISSUE [--agent A] [--files GLOB...] [--base REF]``."""
    parser.epilog = (
        "examples:\n"
        "  dibs start ROOSE-158 --agent alice\n"
        "  cd \"$(dibs start ROOSE-158 --files 'src/auth/**')\"\n\n"
        "Claims the issue (and the files, all or nothing), makes the worktree\n"
        ".worktrees/<agent>/<issue> on a new branch (worktrees.branch, default agent/<issue>)\n"
        "from the target's tip, and prints its path. Inside it, dibs commands act as the\n"
        "agent without flags. Run again, it resumes. Without --agent (or DIBS_AGENT) the\n"
        "agent is named after the issue and registered now; --json shows its token.\n"
        "The worktree of an agent that lost the issue (dead, stale, gone) is taken over:\n"
        "moved here with its branch and changes."
    )
    parser.add_argument("issue", metavar="ISSUE", help="the issue to work on, e.g. ROOSE-158")
    parser.add_argument("--files", nargs="+", default=[], metavar="GLOB", help="paths to claim")
    parser.add_argument("--base", metavar="REF", help="start from REF instead of the target's tip")
    parser.add_argument("--ttl", type=float, metavar="S", help="lease seconds of the claims")
    common(parser, identity=True)
    parser.set_defaults(handler=run_start)


def run_start(args: argparse.Namespace) -> int:
    from dibs.integrations import worktrees

    with coordinator(args) as coord:
        result = worktrees.start(
            coord, args.issue, agent=args.agent, files=args.files, base=args.base, ttl=args.ttl
        )
    if args.json:
        print_json(result)
    else:
        said = "resumed" if result["resumed"] else "started"
        if result.get("adopted"):
            said = f"took over {result['adopted']['agent']}'s worktree of"
        sys.stderr.write(
            f"{said} {result['issue']} as {result['agent']} on branch {result['branch']}\n"
        )
        sys.stdout.write(result["path"] + "\n")
    return 0


def configure_finish(parser: argparse.ArgumentParser) -> None:
    """``dibs finish [ISSUE] [--keep-worktree] [--force]``."""
    parser.epilog = (
        "Never destroys work: refuses (exit 3, listing what would be lost) when the\n"
        "worktree has uncommitted changes or the branch has commits not on the target\n"
        "(landed commits count, even rebased), unless --force; even then an unlanded\n"
        "branch is kept. Otherwise releases the agent's claims, removes the worktree and\n"
        "deletes the branch. Only the worktree's agent (its token) finishes it: exit 1\n"
        "without a valid token, 3 for another agent's worktree. A person overrides with\n"
        "--as-operator (its claims are evicted, logged with the OS user and host)."
    )
    parser.add_argument("issue", nargs="?", metavar="ISSUE", help="default: this worktree's")
    parser.add_argument("--keep-worktree", action="store_true", help="release, keep the folder")
    parser.add_argument("--force", action="store_true", help="drop uncommitted changes")
    operator_flag(parser, "finish another agent's worktree")
    common(parser, identity=True)
    parser.set_defaults(handler=run_finish)


def run_finish(args: argparse.Namespace) -> int:
    from dibs.integrations import worktrees

    with coordinator(args) as coord:
        result = worktrees.finish(
            coord,
            args.issue,
            keep_worktree=args.keep_worktree,
            force=args.force,
            as_operator=args.as_operator,
        )
    if args.json:
        print_json(result)
        return 0
    lines = [f"finished {result['issue']} ({result['agent']})"]
    if result["released"]:
        lines.append(f"  released {', '.join(result['released'])}")
    if result["removed_worktree"]:
        lines.append(f"  removed {result['path']}")
    if result["deleted_branch"]:
        lines.append(f"  deleted branch {result['branch']} (landed)")
    elif result["kept_branch"]:
        lines.append(f"  kept branch {result['branch']}: it has commits not on the target")
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


def configure_run(parser: argparse.ArgumentParser) -> None:
    """``dibs run [--agent A] [--issue ISSUE] [--files GLOB...] -- CMD [ARGS...]``."""
    parser.epilog = (
        "examples:\n"
        "  dibs run --agent alice --issue ROOSE-158 -- claude -p 'fix ROOSE-158'\n"
        "  dibs run --files 'docs/**' -- make docs\n\n"
        "Registers the agent (watching this process), starts the issue's worktree when\n"
        "--issue is given, runs CMD there with DIBS_AGENT, DIBS_TOKEN and DIBS_WORKTREE set,\n"
        "heartbeats every leases.heartbeat seconds, passes SIGINT/SIGTERM on, and releases\n"
        "everything when CMD ends. Exits with CMD's exit code. Killed with SIGKILL, its\n"
        "claims are evicted by the next operation anyone makes, and CMD (with its process\n"
        "group) is stopped too: it never runs on with the agent's token."
    )
    parser.add_argument("--agent", metavar="NAME", help="the agent's name (default: run-PID)")
    parser.add_argument("--issue", metavar="ISSUE", help="start this issue's worktree first")
    parser.add_argument("--files", nargs="+", default=[], metavar="GLOB", help="paths to claim")
    parser.add_argument("command", nargs="+", metavar="CMD", help="the command (after --)")
    common(parser)
    parser.set_defaults(handler=run_run)


def run_run(args: argparse.Namespace) -> int:
    from dibs.integrations import worktrees

    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    args.agent = args.agent or None
    with coordinator(args) as coord:
        coord.agent = coord.token = None  # `run` registers its own session
        return worktrees.run(coord, command, agent=args.agent, issue=args.issue, files=args.files)


def configure_pool(parser: argparse.ArgumentParser) -> None:
    """``dibs pool init N | take [--agent A] [--wait [S]] | give [SLOT] | status``."""
    parser.epilog = (
        "A pool of reusable worktrees (.worktrees/pool/N): `take` claims a free slot\n"
        "(worktree:N) and checks out a fresh branch pool/N/<agent> there; `give` resets it\n"
        "and releases. Two agents never get one slot."
    )
    verb = subcommands(parser)
    init = verb("init", help="make sure the pool has N worktrees")
    init.add_argument("slots", type=int, metavar="N")
    common(init)
    init.set_defaults(handler=run_pool_init)
    take = verb("take", help="claim a free slot; prints its path")
    take.add_argument(
        "--wait",
        nargs="?",
        type=float,
        const=DEFAULT_WAIT,
        metavar="S",
        help="wait while all are busy",
    )
    common(take, identity=True)
    take.set_defaults(handler=run_pool_take)
    give = verb("give", help="reset your slot and release it")
    give.add_argument("slot", nargs="?", metavar="SLOT", help="default: the agent's slot")
    give.add_argument("--force", action="store_true", help="drop uncommitted changes")
    operator_flag(give, "give back another agent's slot")
    common(give, identity=True)
    give.set_defaults(handler=run_pool_give)
    status = verb("status", help="every slot and who holds it")
    common(status)
    status.set_defaults(handler=run_pool_status)


def run_pool_init(args: argparse.Namespace) -> int:
    from dibs.integrations import worktrees

    with coordinator(args) as coord:
        made = worktrees.pool_init(coord, args.slots)
    return emit(args, made, f"the pool has {args.slots} slots ({len(made)} new)")


def run_pool_take(args: argparse.Namespace) -> int:
    from dibs.integrations import worktrees

    with coordinator(args) as coord:
        slot = worktrees.pool_take(coord, agent=args.agent, wait=args.wait)
        slot["token"] = coord.token
    if args.json:
        print_json(slot)
    else:
        sys.stderr.write(f"took slot {slot['slot']} as {slot['agent']} ({slot['branch']})\n")
        sys.stdout.write(slot["path"] + "\n")
    return 0


def run_pool_give(args: argparse.Namespace) -> int:
    from dibs.integrations import worktrees

    with coordinator(args) as coord:
        result = worktrees.pool_give(
            coord, args.slot, force=args.force, as_operator=args.as_operator
        )
    return emit(args, result, f"gave slot {result['slot']} back")


def run_pool_status(args: argparse.Namespace) -> int:
    from dibs.integrations import worktrees

    with coordinator(args) as coord:
        rows = worktrees.pool_status(coord)
    if args.json:
        print_json(rows)
    elif not rows:
        sys.stdout.write("the pool is empty (dibs pool init N)\n")
    else:
        busy = sum(1 for r in rows if r["agent"])
        sys.stdout.write(f"{busy} of {len(rows)} slots taken\n")
        cells = [[r["slot"], r["agent"] or "free", r["branch"] or "", r["path"]] for r in rows]
        sys.stdout.write(table(cells, ("slot", "agent", "branch", "path")))
    return 0


def configure_worktrees(parser: argparse.ArgumentParser) -> None:
    """``dibs worktrees``."""
    parser.epilog = (
        "Every worktree git knows and every one dibs remembers, with its health: ok, agent\n"
        "stale or dead, missing (gone from disk), prunable, unknown to dibs."
    )
    common(parser)
    parser.set_defaults(handler=run_worktrees)


def run_worktrees(args: argparse.Namespace) -> int:
    from dibs.integrations import worktrees

    with coordinator(args) as coord:
        rows = worktrees.listing(coord)
    if args.json:
        print_json(rows)
    else:
        cells = [
            [
                r["path"],
                r["branch"],
                r["agent"] or "",
                r["issue"] or r.get("slot") or "",
                r["health"],
            ]
            for r in rows
        ]
        sys.stdout.write(table(cells, ("path", "branch", "agent", "issue", "health")))
    return 0
