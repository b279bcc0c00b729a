"""``dibs claim | renew | release | heartbeat | claims``."""

from __future__ import annotations

import sys

from dibs.faces.cli.output import (
    CLAIM_HEADERS,
    claim_rows,
    common,
    coordinator,
    print_json,
    table,
)
from dibs.ground.humanize import seconds
from dibs.service.checks import DEFAULT_WAIT

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

#: What `quick_args` reads by hand, per command: whether it takes resources (``+`` one or
#: more, ``*`` any), its flags without a value, and its flags with one (name -> attribute).
_QUICK: dict[str, tuple[str, dict[str, str], dict[str, str]]] = {
    "claim": ("+", {"--shared": "shared"}, {"--ttl": "ttl", "--note": "note"}),
    "renew": ("+", {}, {"--ttl": "ttl"}),
    "release": ("*", {"--all": "all"}, {}),
    "heartbeat": ("", {}, {}),
}
_QUICK_FLAGS = {"--json": "json", "-v": "verbose", "--verbose": "verbose"}
_QUICK_VALUED = {"-C": "directory", "--agent": "agent", "--token": "token"}
_QUICK_DEFAULTS: dict[str, dict[str, Any]] = {
    "claim": {"shared": False, "ttl": None, "wait": None, "note": None},
    "renew": {"ttl": None},
    "release": {"all": False},
}

RESOURCES_HELP = (
    "resources as kind:name; kinds: issue, path (gitignore-style glob, or file#L10-80), "
    "worktree, lock, stream"
)


def quick_args(name: str, args: list[str]) -> Any:
    """Parse the plain forms of ``dibs claim | renew | release | heartbeat`` by hand, or None
    to let argparse do it.

    An agent claims and releases from its hooks, and argparse (with the gettext and warnings
    it imports, and the parser it builds) is a fifth of such a call. Only the plain form is
    read here: the resources first, then exact flags, no value that starts with ``-``. Anything
    else (``--wait``, ``--ttl=5``, ``--help``, a typo, an option before the resources) goes to
    argparse, which reads it or explains it; the result is the namespace argparse would give
    (`tests/unit/test_cli_quick_args.py` compares the two).
    """
    if name not in _QUICK:
        return None
    takes, flags, valued = _QUICK[name]
    found: dict[str, Any] = {
        "json": False,
        "directory": None,
        "verbose": False,
        "agent": None,
        "token": None,
        **_QUICK_DEFAULTS.get(name, {}),
    }
    rest = list(args)
    resources = []
    while takes and rest and not rest[0].startswith("-"):
        resources.append(rest.pop(0))
    if takes == "+" and not resources:
        return None
    if takes:
        found["resources"] = resources
    while rest:
        flag = rest.pop(0)
        if flag in _QUICK_FLAGS or flag in flags:
            found[_QUICK_FLAGS.get(flag) or flags[flag]] = True
        elif (flag in _QUICK_VALUED or flag in valued) and rest and not rest[0].startswith("-"):
            attribute = _QUICK_VALUED.get(flag) or valued[flag]
            value = rest.pop(0)
            if attribute == "ttl":
                try:
                    found[attribute] = float(value)
                except ValueError:
                    return None
            else:
                found[attribute] = value
        else:
            return None
    return _Namespace(**found, handler=globals()["run_" + name])


class _Namespace:
    """What `quick_args` returns: argparse's namespace without argparse (nor ``types``)."""

    def __init__(self, **values: Any):
        self.__dict__.update(values)


def _wait(text: str) -> float:
    """``--wait`` takes optional seconds; a bare ``--wait`` waits up to 10 minutes."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("seconds cannot be negative")
    return value


def configure_claim(parser: argparse.ArgumentParser) -> None:
    """``dibs claim RES... [--shared] [--ttl S] [--wait [S]] [--note TEXT]``."""
    parser.epilog = (
        "examples:\n"
        "  dibs claim issue:ROOSE-158\n"
        "  dibs claim 'path:src/auth/**' path:src/app.py#L10-80 --wait 30\n"
        "  dibs claim lock:github-api --shared --ttl 300 --note 'syncing issues'\n\n"
        "All or nothing: either every resource is claimed or none is. Exit 3 when held by\n"
        "another agent (the message names it and when its lease expires)."
    )
    parser.add_argument("resources", nargs="+", metavar="RES", help=RESOURCES_HELP)
    parser.add_argument("--shared", action="store_true", help="a shared claim (readers)")
    parser.add_argument("--ttl", type=float, metavar="S", help="lease seconds without heartbeat")
    parser.add_argument(
        "--wait",
        nargs="?",
        type=_wait,
        const=DEFAULT_WAIT,
        metavar="S",
        help="retry with backoff while held, up to S seconds (bare --wait: 600); "
        "refused at once (exit 3) when the wait would close a cycle of waiting agents",
    )
    parser.add_argument("--note", metavar="TEXT", help="why, for people")
    common(parser, identity=True)
    parser.set_defaults(handler=run_claim)


def run_claim(args: argparse.Namespace) -> int:
    """Claim and print the leases with their fencing tokens."""
    with coordinator(args) as coord:
        claims = coord.claim(
            args.resources, shared=args.shared, ttl=args.ttl, wait=args.wait, note=args.note
        )
    if args.json:
        print_json(claims)
        return 0
    for claim in claims:
        verb = "claimed" if claim.get("new", True) else "still holding (extended)"
        sys.stdout.write(
            f"{verb} {claim['resource']} (token {claim['token']}, {claim.get('mode', '')}, "
            f"expires in {seconds(claim.get('expires_in'))})\n"
        )
    return 0


def configure_renew(parser: argparse.ArgumentParser) -> None:
    """``dibs renew RES... [--ttl S]``."""
    parser.epilog = "Exit 4 (lease lost) when a lease was evicted or expired meanwhile."
    parser.add_argument("resources", nargs="+", metavar="RES", help=RESOURCES_HELP)
    parser.add_argument("--ttl", type=float, metavar="S", help="new lease seconds")
    common(parser, identity=True)
    parser.set_defaults(handler=run_renew)


def run_renew(args: argparse.Namespace) -> int:
    """Renew and print what was renewed."""
    with coordinator(args) as coord:
        renewed = coord.renew(args.resources, ttl=args.ttl)
    if args.json:
        print_json(renewed)
    else:
        for item in renewed:
            sys.stdout.write(f"renewed {item['resource']} (token {item['token']})\n")
    return 0


def configure_release(parser: argparse.ArgumentParser) -> None:
    """``dibs release RES... | dibs release --all``."""
    parser.epilog = "Exit 4 (lease lost) when a lease had already been evicted."
    parser.add_argument("resources", nargs="*", metavar="RES", help=RESOURCES_HELP)
    parser.add_argument("--all", action="store_true", help="release everything the agent holds")
    common(parser, identity=True)
    parser.set_defaults(handler=run_release)


def run_release(args: argparse.Namespace) -> int:
    """Release and print what was released."""
    from dibs.ground.errors import UsageError

    if args.all == bool(args.resources):
        raise UsageError(
            "name the resources to release, or --all (not both)",
            hint="dibs release issue:X  or  dibs release --all",
        )
    with coordinator(args) as coord:
        released = coord.release(None if args.all else args.resources)
    if args.json:
        print_json(released)
    elif not released:
        sys.stdout.write("nothing to release\n")
    else:
        for item in released:
            sys.stdout.write(f"released {item['resource']} (token {item['token']})\n")
    return 0


def configure_heartbeat(parser: argparse.ArgumentParser) -> None:
    """``dibs heartbeat``."""
    parser.epilog = (
        "Renews every lease the agent holds. Exit 4 when some were already lost\n"
        "(the rest are renewed). `dibs run` sends heartbeats for you."
    )
    common(parser, identity=True)
    parser.set_defaults(handler=run_heartbeat)


def run_heartbeat(args: argparse.Namespace) -> int:
    """Heartbeat and say how many leases were renewed."""
    with coordinator(args) as coord:
        result = coord.heartbeat()
    if args.json:
        print_json(result)
    else:
        sys.stdout.write(f"{result['agent']}: renewed {len(result['renewed'])} leases\n")
    return 0


def configure_claims(parser: argparse.ArgumentParser) -> None:
    """``dibs claims [--agent A] [--kind K]``."""
    parser.add_argument("--agent", metavar="NAME", help="only this agent's claims")
    parser.add_argument(
        "--kind", choices=("issue", "path", "worktree", "lock", "stream"), help="only this kind"
    )
    common(parser)
    parser.set_defaults(handler=run_claims)


def run_claims(args: argparse.Namespace) -> int:
    """List live claims."""
    with coordinator(args) as coord:
        claims = coord.claims(agent=args.agent, kind=args.kind)
    if args.json:
        print_json(claims)
    elif not claims:
        sys.stdout.write("no live claims\n")
    else:
        sys.stdout.write(table(claim_rows(claims), CLAIM_HEADERS))
    return 0
