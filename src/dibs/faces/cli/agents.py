"""``dibs agent register | list | show | unregister``."""

from __future__ import annotations

import shlex
import sys

from dibs.faces.cli.output import (
    CLAIM_HEADERS,
    claim_rows,
    common,
    coordinator,
    print_json,
    subcommands,
    table,
)
from dibs.ground.humanize import seconds
from dibs.ground.names import NAME

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping, Sequence
    from typing import Any


def configure_agent(parser: argparse.ArgumentParser) -> None:
    """``dibs agent register|list|show|unregister``."""
    add = subcommands(parser)

    register = add(
        "register",
        help="register an agent and print its session token",
        description="Register an agent and print its secret session token.",
        epilog="examples:\n"
        '  eval "$(dibs agent register agent-1 --eval)"   # sets DIBS_AGENT and DIBS_TOKEN\n'
        "  dibs agent register agent-2 --pid $$ --ttl 120\n\n"
        "Without --pid the agent's leases expire by ttl alone. With --pid, when that\n"
        "process dies its claims are evicted at once. Exit 3 when a live agent has the name,\n"
        "or a quiet one still holds live leases: only its token (--token, or DIBS_AGENT and\n"
        "DIBS_TOKEN of that agent) registers the name again before they expire.",
    )
    register.add_argument("name", metavar="NAME", help=f"agent id: {NAME}")
    register.add_argument("--ttl", type=float, metavar="S", help="lease seconds (default 90)")
    register.add_argument("--pid", type=int, help="a long-lived process to watch for liveness")
    register.add_argument(
        "--role",
        action="append",
        default=[],
        metavar="ROLE",
        help="take only tasks labelled ROLE from `dibs next` (repeatable)",
    )
    register.add_argument(
        "--eval", action="store_true", help="print `export DIBS_AGENT=... DIBS_TOKEN=...`"
    )
    register.add_argument(
        "--token", metavar="TOKEN", help="the token of the registration this one replaces"
    )
    common(register)
    register.set_defaults(handler=run_register)

    listing = add("list", help="list agents", description="List registered agents.")
    common(listing)
    listing.set_defaults(handler=run_list)

    show = add("show", help="one agent and its claims", description="Show an agent.")
    show.add_argument("name", metavar="NAME")
    common(show)
    show.set_defaults(handler=run_show)

    unregister = add(
        "unregister",
        help="release everything and forget the agent",
        description="Release everything the agent holds and forget it (needs its token).",
    )
    common(unregister, identity=True)
    unregister.set_defaults(handler=run_unregister)


def run_register(args: argparse.Namespace) -> int:
    """Register and print the token (or the export line with --eval)."""
    with coordinator(args) as coord:
        # The old session's token proves the name is ours: --token, or DIBS_AGENT/DIBS_TOKEN
        # naming that same agent.
        proof = args.token or (coord.token if coord.agent == args.name else None)
        reg = coord.register(args.name, ttl=args.ttl, pid=args.pid, token=proof)

        from dibs.integrations.tasks import set_roles

        reg["roles"] = set_roles(coord, args.name, args.role)
    if args.json:
        print_json(reg)
    elif args.eval:
        agent, token = shlex.quote(reg["agent"]), shlex.quote(reg["token"])
        sys.stdout.write(f"export DIBS_AGENT={agent} DIBS_TOKEN={token}\n")
    else:
        replaced = " (replacing a stale registration)" if reg["replaced"] else ""
        sys.stdout.write(
            f"registered {reg['agent']}{replaced}\n"
            f"token: {reg['token']}\n"
            f"use it: export DIBS_AGENT={reg['agent']} DIBS_TOKEN={reg['token']}\n"
        )
    return 0


def _agent_rows(agents: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    return [
        [
            a["name"],
            a["status"],
            a["claims"],
            "" if a["seen_ago"] is None else seconds(a["seen_ago"]) + " ago",
            a["pid"] or "",
            a["host"],
            a.get("issue", ""),
            a.get("worktree", ""),
        ]
        for a in agents
    ]


AGENT_HEADERS = ("agent", "status", "claims", "last seen", "pid", "host", "issue", "worktree")


def run_list(args: argparse.Namespace) -> int:
    """List agents."""
    with coordinator(args) as coord:
        agents = coord.agents()
    if args.json:
        print_json(agents)
    elif not agents:
        sys.stdout.write("no agents registered\n")
    else:
        sys.stdout.write(table(_agent_rows(agents), AGENT_HEADERS))
    return 0


def run_show(args: argparse.Namespace) -> int:
    """Show one agent."""
    with coordinator(args) as coord:
        agent = coord.agent_info(args.name)
    if args.json:
        print_json(agent)
        return 0
    sys.stdout.write(table(_agent_rows([agent]), AGENT_HEADERS))
    if agent["holding"]:
        sys.stdout.write("\n" + table(claim_rows(agent["holding"]), CLAIM_HEADERS))
    return 0


def run_unregister(args: argparse.Namespace) -> int:
    """Unregister the acting agent."""
    with coordinator(args) as coord:
        result = coord.unregister()
    if args.json:
        print_json(result)
    else:
        sys.stdout.write(
            f"unregistered {result['agent']} (released {len(result['released'])} claims)\n"
        )
    return 0
