"""``dibs plan add|check|commit|list|drop`` and ``dibs archive``."""

from __future__ import annotations

import sys

from dibs.faces.cli.output import common, coordinator, operator_flag, print_json, subcommands, table

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def configure_plan(parser: argparse.ArgumentParser) -> None:
    """``dibs plan add|check|commit|list|drop``."""
    parser.epilog = (
        "The workflow: each agent (or an orchestrator) adds a plan, `plan check` shows\n"
        "the collisions and how to resolve them, then each agent commits its plan: every\n"
        "path is claimed at once, or none is."
    )
    add = subcommands(parser)
    adding = add(
        "add",
        help="declare the files an agent means to touch (nothing is claimed)",
        description="Declare the files an agent means to touch. Nothing is claimed yet.",
        epilog="example:\n  dibs plan add --agent auth --issue ROOSE-158 'src/auth/**' src/app.py",
    )
    adding.add_argument("paths", nargs="+", metavar="GLOB", help="paths or globs (path: optional)")
    adding.add_argument("--agent", metavar="NAME", help="whose plan (default: $DIBS_AGENT)")
    adding.add_argument("--issue", metavar="ISSUE", help="the issue the plan is for")
    common(adding)
    adding.set_defaults(handler=run_add)
    checking = add(
        "check",
        help="collisions among plans and live claims, and how to resolve them",
        description="Show which plans (and live claims) collide on which paths, with a "
        "suggested resolution for each collision.",
    )
    common(checking)
    checking.set_defaults(handler=run_check)
    committing = add(
        "commit",
        help="claim every path of your plan, all or nothing",
        description="Claim every path of the acting agent's plan (and its issue), all or none.",
    )
    common(committing, identity=True)
    committing.set_defaults(handler=run_commit)
    listing = add("list", help="every plan", description="List the plans.")
    common(listing)
    listing.set_defaults(handler=run_list)
    dropping = add(
        "drop",
        help="forget a plan",
        description="Forget an agent's plan: the agent itself (with its token), or a person "
        "with --as-operator.",
    )
    dropping.add_argument("--plan-of", metavar="NAME", help="whose plan (default: the agent's)")
    operator_flag(dropping, "drop another agent's plan")
    common(dropping, identity=True)
    dropping.set_defaults(handler=run_drop)


def _agent(args: argparse.Namespace) -> str | None:
    import os

    return getattr(args, "agent", None) or os.environ.get("DIBS_AGENT") or None


def run_add(args: argparse.Namespace) -> int:
    from dibs.integrations import plans

    with coordinator(args) as coord:
        plan = plans.add(coord, args.paths, agent=_agent(args), issue=args.issue)
    if args.json:
        print_json(plan)
    else:
        sys.stdout.write(f"plan of {plan['agent']}: {', '.join(plan['globs'])}\n")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from dibs.integrations import plans

    with coordinator(args) as coord:
        report = plans.check(coord)
    if args.json:
        print_json(report)
        return 3 if report["collisions"] else 0
    agents = report["agents"]
    if not agents:
        sys.stdout.write("no plans and no path claims\n")
        return 0
    rows = [
        [a] + [report["matrix"][a].get(b, "-") if a != b else "-" for b in agents] for a in agents
    ]
    matrix = table(rows, ["", *agents], upper=False)
    out = ["collisions (number of colliding path pairs):\n", matrix, "\n"]
    out += [
        f"  {c['agents'][0]} ({c['sources'][0]} {c['paths'][0]}) x {c['agents'][1]} "
        f"({c['sources'][1]} {c['paths'][1]}): e.g. {c['example']}\n"
        for c in report["collisions"]
    ]
    out += ["\nsuggested:\n"] + [f"  - {s}\n" for s in report["suggestions"]]
    sys.stdout.write("".join(out))
    return 3 if report["collisions"] else 0


def run_commit(args: argparse.Namespace) -> int:
    from dibs.integrations import plans

    with coordinator(args) as coord:
        result = plans.commit(coord)
    if args.json:
        print_json(result)
    else:
        names = ", ".join(c["resource"] for c in result["claims"])
        sys.stdout.write(f"{result['agent']} now holds {names}\n")
    return 0


def run_list(args: argparse.Namespace) -> int:
    from dibs.integrations import plans

    with coordinator(args) as coord:
        found = plans.listing(coord)
    if args.json:
        print_json(found)
    elif not found:
        sys.stdout.write("no plans\n")
    else:
        rows = [
            [
                p["agent"],
                p.get("issue") or "",
                "yes" if p.get("committed") else "no",
                " ".join(g.removeprefix("path:") for g in p["globs"]),
            ]
            for p in found
        ]
        sys.stdout.write(table(rows, ["agent", "issue", "claimed", "paths"]))
    return 0


def run_drop(args: argparse.Namespace) -> int:
    from dibs.integrations import plans

    with coordinator(args) as coord:
        plan = plans.drop(coord, agent=args.plan_of, as_operator=args.as_operator)
    if args.json:
        print_json(plan)
    else:
        sys.stdout.write(f"dropped the plan of {plan['agent']}\n")
    return 0


def configure_archive(parser: argparse.ArgumentParser) -> None:
    """``dibs archive``."""
    parser.epilog = (
        "Copies the events since the last archive (the finished swarm's claims and what\n"
        "happened to them) to a dated file under the store's history/ folder, and clears\n"
        "plans whose claims have all been released. The log itself keeps every event."
    )
    common(parser)
    parser.set_defaults(handler=run_archive)


def run_archive(args: argparse.Namespace) -> int:
    from dibs.integrations import plans

    with coordinator(args) as coord:
        result = plans.archive(coord)
    if args.json:
        print_json(result)
    else:
        cleared = (
            f"; cleared the plans of {', '.join(result['cleared_plans'])}"
            if result["cleared_plans"]
            else ""
        )
        sys.stdout.write(f"archived {result['events']} events to {result['path']}{cleared}\n")
    return 0
