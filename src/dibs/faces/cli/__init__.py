"""The dibs command line: parse, make one service call, render.

The CLI starts on every editor hook, so it imports only the invoked command's module and
builds only that command's parser. ``dibs --help`` is written from the table below without
building any parser.

Exit codes (stable, documented in docs/reference/exit-codes.md): 0 ok, 1 error, 2 usage,
3 refused (held by someone else, or the act would lose work), 4 lease lost / stale token.
"""

from __future__ import annotations

import sys

from dibs.ground.version import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from typing import Any

#: name -> (module, one-line summary), in the order ``dibs --help`` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "init": ("dibs.faces.cli.setup", "set up dibs in this repository (store, settings, excludes)"),
    "agent": ("dibs.faces.cli.agents", "register, list, show and unregister agents"),
    "start": ("dibs.faces.cli.worktrees", "claim an issue and make its worktree and branch"),
    "finish": ("dibs.faces.cli.worktrees", "release, remove the worktree; never lose work"),
    "run": ("dibs.faces.cli.worktrees", "run a command as an agent: start, heartbeat, release"),
    "pool": ("dibs.faces.cli.worktrees", "a pool of reusable worktrees: init, take, give, status"),
    "worktrees": ("dibs.faces.cli.worktrees", "every worktree: path, branch, agent, issue, health"),
    "claim": ("dibs.faces.cli.claims", "claim resources for an agent, all or none"),
    "ready": (
        "dibs.faces.cli.agentic",
        "tasks ready to take, from task files (and why others wait)",
    ),
    "next": ("dibs.faces.cli.agentic", "take the best ready task, atomically"),
    "limit": ("dibs.faces.cli.agentic", "shared rate limits: token buckets all agents take from"),
    "doc": ("dibs.faces.cli.agentic", "versioned documents: write only if nobody changed it"),
    "mcp": ("dibs.faces.cli.agentic", "serve the dibs verbs to agents over MCP (stdio)"),
    "renew": ("dibs.faces.cli.claims", "extend leases you hold"),
    "release": ("dibs.faces.cli.claims", "let go of claims you hold"),
    "heartbeat": ("dibs.faces.cli.claims", "renew every lease of an agent at once"),
    "claims": ("dibs.faces.cli.claims", "list live claims"),
    "status": ("dibs.faces.cli.info", "who holds what: agents, claims and a summary"),
    "log": ("dibs.faces.cli.info", "show or follow the event log"),
    "send": ("dibs.faces.cli.inbox", "send a message to agents, everyone, or a resource's holder"),
    "inbox": ("dibs.faces.cli.inbox", "read your inbox: messages, evictions, landings"),
    "metrics": (
        "dibs.faces.cli.observe",
        "coordination figures from the log: conflicts, waits, holds",
    ),
    "dashboard": (
        "dibs.faces.cli.observe",
        "a live web page of agents, claims, queue, and metrics",
    ),
    "evict": ("dibs.faces.cli.info", "force a claim away (logged with who and why)"),
    "doctor": ("dibs.faces.cli.info", "check the log and state; --repair mends them"),
    "hooks": ("dibs.faces.cli.guards", "install, remove or show the commit and edit guards"),
    "guard": ("dibs.faces.cli.guards", "what the hooks run: refuse edits of files others hold"),
    "check": ("dibs.faces.cli.guards", "compare a branch's changes with the agent's claims"),
    "plan": (
        "dibs.faces.cli.plans",
        "declare intended files, see collisions, claim a plan at once",
    ),
    "archive": (
        "dibs.faces.cli.plans",
        "copy a finished swarm's events to history/, clear its plans",
    ),
    "land": ("dibs.faces.cli.queue", "queue a branch to land on the target, and see it through"),
    "queue": ("dibs.faces.cli.queue", "the merge queue: entries, state, timings; cancel one"),
    "gate": ("dibs.faces.cli.queue", "record a manual gate (a review) as passed or failed"),
    "gates": ("dibs.faces.cli.queue", "which gates an issue passed, failed or still needs"),
    "conflicts": ("dibs.faces.cli.queue", "predict conflicts among live branches and the target"),
    "store": ("dibs.faces.cli.setup", "move the store: copy the local store into PostgreSQL"),
    "demo": ("dibs.faces.cli.demo", "watch agents race for issues on a throw-away repository"),
}


def top_help() -> str:
    """The text of ``dibs --help``."""
    width = max(len(name) for name in COMMANDS)
    lines = [
        "usage: dibs [--version] [-h] COMMAND [ARGS...]",
        "",
        "Let many coding agents work on one git repository without colliding.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += [
        "",
        "Every command takes --json (machine output), -C DIR (run as if in DIR) and -v",
        "(show tracebacks). Agent commands take --agent/--token or DIBS_AGENT/DIBS_TOKEN.",
        "Run `dibs COMMAND --help` for a command's own options.",
        "",
        "exit codes: 0 ok, 1 error, 2 usage, 3 refused (held by someone else), 4 lease lost",
    ]
    return "\n".join(lines) + "\n"


def build_parser(name: str) -> argparse.ArgumentParser:
    """The parser of command *name* (used by `main` and by the docs generator)."""
    import argparse

    # argparse looks up a translation of each of its own strings through gettext, which
    # imports locale and probes the disk for catalogues on every call (2 ms a CLI run).
    # dibs speaks English only, and agents parse its messages: keep them untranslated.
    argparse._ = argparse.ngettext = _untranslated  # type: ignore[attr-defined]

    class Formatter(argparse.RawDescriptionHelpFormatter):
        """argparse's formatter without ``shutil``, which costs 3 ms to import.

        argparse builds a formatter on every ``add_argument`` (to check the metavar) and its
        default asks ``shutil.get_terminal_size``; ``os.get_terminal_size`` is enough.
        """

        def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24):
            super().__init__(prog, indent_increment, max_help_position, _terminal_width())

    module_name = COMMANDS[name][0]
    __import__(module_name)
    module = sys.modules[module_name]
    parser = argparse.ArgumentParser(
        prog=f"dibs {name}",
        description=COMMANDS[name][1][0].upper() + COMMANDS[name][1][1:] + ".",
        formatter_class=Formatter,
    )
    getattr(module, "configure_" + name)(parser)
    return parser


def _guard_host_args(args: list[str]) -> Any:
    """Parse ``dibs guard claude|codex|gemini|cursor``'s few flags by hand, or None to let
    argparse do it.

    The edit guard runs on every edit an agent makes; argparse and the gettext lookups it
    brings cost ~4 ms of its ~35 ms budget. Anything unusual (``--help``, a typo) goes to
    argparse, which explains it.
    """
    if args[:1] != ["guard"] or args[1:2] not in (["claude"], ["codex"], ["gemini"], ["cursor"]):
        return None
    from types import SimpleNamespace

    ns = SimpleNamespace(
        host=args[1],
        mode=None,
        auto_claim=None,
        json=False,
        verbose=False,
        directory=None,
        agent=None,
        token=None,
    )
    rest = args[2:]
    valued = {"--mode": "mode", "-C": "directory", "--agent": "agent", "--token": "token"}
    while rest:
        flag = rest.pop(0)
        if flag in valued and rest:
            setattr(ns, valued[flag], rest.pop(0))
        elif flag == "--auto-claim":
            ns.auto_claim = True
        elif flag == "--json":
            ns.json = True
        elif flag in ("-v", "--verbose"):
            ns.verbose = True
        else:
            return None
    return ns if ns.mode in (None, "block", "warn") else None


def _quick_args(name: str, args: list[str]) -> Any:
    """The namespace of a plain ``dibs claim | renew | release | heartbeat`` call, read without
    argparse (`dibs.faces.cli.claims.quick_args`), or None."""
    if COMMANDS[name][0] != "dibs.faces.cli.claims":
        return None
    from dibs.faces.cli.claims import quick_args

    return quick_args(name, args)


def _untranslated(message: str, plural: str | None = None, n: int = 1) -> str:
    return message if plural is None or n == 1 else plural


def _terminal_width() -> int:
    import os

    try:
        columns = int(os.environ.get("COLUMNS", "0")) or os.get_terminal_size(2).columns
    except (ValueError, OSError):
        columns = 80
    return max(columns - 2, 40)


def _unknown(name: str) -> int:
    import difflib

    close = difflib.get_close_matches(name, COMMANDS, n=1)
    guess = f" (did you mean `dibs {close[0]}`?)" if close else ""
    sys.stderr.write(f"dibs: unknown command {name!r}{guess}\nhint: see `dibs --help`\n")
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the dibs command line; returns the exit code."""
    if argv is None:
        return _relayed_or_run(sys.argv)
    return _main(list(argv))


def _relayed_or_run(argv: list[str]) -> int:
    """A call from the shell: through the helper when one runs (`dibs.faces.cli.helper`), else
    here; a direct call on a PostgreSQL store starts the helper for the next calls."""
    from dibs.faces.cli import helper

    if not helper.enabled(argv[1:]):
        return _main(argv[1:])
    code = helper.relay(argv)
    if code is not None:
        return code
    if helper.required():
        sys.stderr.write(
            "dibs: no helper took this call (DIBS_HELPER=only); nothing was done\n"
            "hint: start one (`python -m dibs.faces.cli.helper_server &`), or unset "
            "DIBS_HELPER\n"
        )
        return 1
    code = _main(argv[1:])
    if "dibs.store.postgres" in sys.modules:  # this call opened a PostgreSQL store
        helper.remember()
        helper.start_server()
    return code


def _main(args: list[str]) -> int:
    from dibs.ground.platform import problem

    stop = problem()
    if stop is not None:
        # Before anything else: on native Windows the first lock would be a traceback.
        sys.stderr.write(f"dibs: {stop.message}\nhint: {stop.hint}\n")
        return stop.exit_code
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(top_help())
        return 0 if args else 2
    if args[0] == "--version":
        sys.stdout.write(f"dibs {__version__}\n")
        return 0
    name = args[0]
    if name not in COMMANDS:
        return _unknown(name)
    fast = _guard_host_args(args)
    if fast is not None:
        from dibs.faces.cli.guards import run_guard_host
        from dibs.faces.cli.output import run_command

        fast.handler = run_guard_host
        return run_command(fast)
    parsed = _quick_args(name, args[1:])
    if parsed is None:
        parser = build_parser(name)
        try:
            parsed = parser.parse_args(args[1:])
        except SystemExit as exc:  # argparse: --help exits 0, a usage error exits 2
            return exc.code if isinstance(exc.code, int) else 2
    from dibs.faces.cli.output import run_command

    code = run_command(parsed)
    if name in _TELLS and _about_issues(name, parsed):
        # After the command, outside its transaction: a slow tracker never holds a claim up.
        from dibs.faces.cli.output import tell_trackers

        tell_trackers(parsed)
    return code


#: Commands whose events the task sources and `[events]` commands hear of
#: (dibs.integrations.tasks.sync).
_TELLS = frozenset(("claim", "release", "start", "finish", "run", "land", "queue", "evict"))


def _about_issues(name: str, parsed: argparse.Namespace) -> bool:
    """Whether the command may have touched an ``issue:`` claim; a path claim on the editor
    hot path skips the delivery pass (and its second store open)."""
    if getattr(parsed, "handler", None) is None:
        return False
    if name not in ("claim", "release"):
        return True
    resources = getattr(parsed, "resources", None) or []
    if name == "release" and (getattr(parsed, "all", False) or not resources):
        return True
    return any(str(r).strip().lower().startswith("issue:") for r in resources)
