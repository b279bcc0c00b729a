"""``dibs send`` and ``dibs inbox``: messages between agents and people, and what dibs tells
each agent (evictions, landings, freed resources, plan overlaps, stuck agents)."""

from __future__ import annotations

import sys

from dibs.faces.cli.output import common, coordinator, operator_flag, print_json

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from dibs.service import Coordinator


def configure_send(parser: argparse.ArgumentParser) -> None:
    """``dibs send [AGENT...] TEXT | --all TEXT | --holder RESOURCE TEXT``."""
    parser.description = (
        "Send a message to agents' inboxes: named agents, every registered agent (--all), or "
        "whoever holds a live claim overlapping a resource (--holder; a glob reaches the "
        "holders of every path it meets). The message is logged with its verified sender: the "
        "agent (with its token) when one is set, else you (OS user and host)."
    )
    parser.epilog = (
        "examples:\n"
        "  dibs send bob 'I need src/auth/session.py for ten minutes'\n"
        "  dibs send --holder 'path:src/auth/**' 'auth is being rewritten: please land soon'\n"
        "  dibs send --all 'main is red: hold your landings'\n"
        "TEXT: UTF-8, at most 4000 characters; '-' reads it from standard input."
    )
    parser.add_argument("words", nargs="+", metavar="AGENT... TEXT", help="recipients, then text")
    parser.add_argument("--all", action="store_true", help="every registered agent")
    parser.add_argument(
        "--holder", metavar="RESOURCE", help="whoever holds a claim overlapping RESOURCE"
    )
    common(parser, identity=True)
    parser.set_defaults(handler=run_send)


def run_send(args: argparse.Namespace) -> int:
    from dibs.faces.cli.output import read_stdin_text
    from dibs.integrations import inbox

    *names, text = args.words
    if text == "-":
        text = read_stdin_text()
    with coordinator(args) as coord:
        sent = inbox.send(coord, text, to=names, everyone=args.all, holder=args.holder)
    if args.json:
        print_json(sent)
    else:
        sys.stdout.write(f"sent to {', '.join(sent['to']) or 'nobody'} (seq {sent['seq']})\n")
    return 0


def configure_inbox(parser: argparse.ArgumentParser) -> None:
    """``dibs inbox [--peek] [--follow] [--watch] [--limit N]``."""
    parser.description = (
        "Read the acting agent's inbox: unread messages, oldest first, then marked read "
        "(--peek leaves them unread). A reader killed before marking gets them again. Only "
        "the agent (with its token) reads its inbox, or a person naming it with --agent "
        "and --as-operator. --watch reads the watchers' stream instead: force and stuck "
        "evictions, failed landings and stuck agents, with a cursor of your own."
    )
    parser.epilog = (
        "What arrives: messages (dibs send), evictions of your leases (by whom, why), your\n"
        "landings (landed, or failed: gate, output tail, conflicting files), a resource you\n"
        "gave up waiting for is free, your plan overlaps another, you are stuck.\n"
        "examples:\n"
        "  dibs inbox\n"
        "  dibs inbox --follow --json\n"
        "  dibs inbox --agent worker-3 --as-operator --peek\n"
        "  dibs inbox --watch --follow"
    )
    parser.add_argument("--peek", action="store_true", help="show without marking read")
    parser.add_argument("--follow", action="store_true", help="keep reading as messages arrive")
    parser.add_argument("--watch", action="store_true", help="the watchers' stream, not an inbox")
    parser.add_argument("--limit", type=int, metavar="N", help="at most N messages (max 1000)")
    operator_flag(parser, "read (and mark) another agent's inbox")
    common(parser, identity=True)
    parser.set_defaults(handler=run_inbox)


def run_inbox(args: argparse.Namespace) -> int:
    from dibs.integrations import inbox

    with coordinator(args) as coord:
        if args.follow:
            return _follow(args, coord)
        found = inbox.read(
            coord,
            peek=args.peek,
            limit=args.limit,
            watch=args.watch,
            as_operator=args.as_operator,
        )
    if args.json:
        print_json(found)
    elif not found["messages"]:
        sys.stdout.write(f"no unread messages for {found['reader']}\n")
    else:
        sys.stdout.write(inbox.render_text(found) + "\n")
    return 0


def _follow(args: argparse.Namespace, coord: Coordinator) -> int:
    from dibs.integrations import inbox

    for message in inbox.follow(
        coord,
        peek=args.peek,
        watch=args.watch,
        as_operator=args.as_operator,
    ):
        if args.json:
            import json

            sys.stdout.write(json.dumps(message, ensure_ascii=False) + "\n")
        else:
            text = str(message["text"]).replace("\n", "\n    ")
            sys.stdout.write(f"{message['at']} [{message['kind']}] {message['from']}: {text}\n")
        sys.stdout.flush()
    return 0
