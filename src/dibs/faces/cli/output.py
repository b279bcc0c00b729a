"""What every command shares: common flags, opening the coordinator, output, the error handler."""

from __future__ import annotations

import os
import sys

from dibs.ground.errors import EXIT_ERROR, DibsError
from dibs.ground.humanize import seconds

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from typing import Any

    from dibs.service import Coordinator


def common(parser: argparse.ArgumentParser, *, identity: bool = False) -> None:
    """Add the flags every command takes (and, with *identity*, --agent/--token)."""
    group = parser.add_argument_group("common options")
    group.add_argument("--json", action="store_true", help="print JSON for machines")
    group.add_argument(
        "-C", dest="directory", metavar="DIR", help="run as if dibs was started in DIR"
    )
    group.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    if identity:
        group.add_argument(
            "--agent", metavar="NAME", help="the agent to act as (default: $DIBS_AGENT)"
        )
        group.add_argument(
            "--token", metavar="TOKEN", help="its session token (default: $DIBS_TOKEN)"
        )


def operator_flag(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--as-operator``: a person overrides another agent's *what* as themselves."""
    parser.add_argument(
        "--as-operator",
        action="store_true",
        help=f"act as yourself (OS user and host, logged), not as an agent: {what}",
    )


def subcommands(parser: argparse.ArgumentParser) -> Callable[..., argparse.ArgumentParser]:
    """A function adding verbs under *parser* (``dibs agent register``), with its formatter."""
    import functools

    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    return functools.partial(sub.add_parser, formatter_class=parser.formatter_class)


_opened: list[Coordinator] = []


def coordinator(args: argparse.Namespace) -> Coordinator:
    """Open the coordinator for this invocation (repository from -C or the current folder)."""
    from dibs.service import Coordinator
    from dibs.service.identity import resolve

    opened = Coordinator.open(args.directory)
    # Flags, then the environment, then (inside a worktree `dibs start` made) the agent it
    # recorded there. Nothing is trusted yet: each act verifies the token against the log.
    opened.agent, opened.token = resolve(
        opened.repo, os.environ, getattr(args, "agent", None), getattr(args, "token", None)
    )
    _opened.append(opened)
    return opened


#: Arguments passed on as they are: the command `dibs run` starts gets its bytes unchanged,
#: and `-C DIR` is a path for the operating system, which may be any bytes.
_PASSED_ON = frozenset(("command", "directory"))


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse any argument that is not UTF-8 text (exit 2), before anything is done."""
    for name, value in vars(args).items():
        if name in _PASSED_ON:
            continue
        for item in value if isinstance(value, list) else (value,):
            if isinstance(item, str) and not item.isascii():
                from dibs.service.checks import check_utf8

                check_utf8(item, f"the {name.replace('_', '-')} argument")


def read_stdin_text() -> str:
    """Standard input as text: UTF-8 without NUL bytes, else `UsageError` (exit 2)."""
    from dibs.ground.errors import UsageError

    data = sys.stdin.buffer.read()
    try:
        text = data.decode()
    except UnicodeDecodeError as exc:
        problem = f"byte {exc.start} is not UTF-8"
    else:
        if "\0" not in text:
            return text
        problem = f"character {text.index(chr(0))} is NUL"
    raise UsageError(
        f"standard input is not text ({problem}); nothing was done",
        hint="pass UTF-8 text; binary files cannot be written this way",
    )


def run_command(args: argparse.Namespace) -> int:
    """Call the command's handler and turn errors into messages and exit codes."""
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        _check_arguments(args)
        return handler(args)
    except DibsError as exc:
        return report_error(args, exc)
    except KeyboardInterrupt:
        sys.stderr.write("dibs: interrupted\n")
        return 130
    except BrokenPipeError:
        # The reader went away (`dibs log | head`): not an error worth a traceback.
        sys.stderr.close()
        return 0
    except Exception as exc:  # the one place that turns surprises into a message
        if getattr(args, "verbose", False):
            raise
        sys.stderr.write(
            f"dibs: internal error: {type(exc).__name__}: {exc}\n"
            "hint: run again with -v for the traceback, and please report it\n"
        )
        return EXIT_ERROR
    finally:
        notes()


def report_error(args: argparse.Namespace, exc: DibsError) -> int:
    """Print *exc* (``dibs: message`` + hint on stderr; JSON on stdout with --json)."""
    if getattr(args, "verbose", False):
        import traceback

        traceback.print_exc()
    if getattr(args, "json", False):
        print_json(exc.to_json())
    sys.stderr.write(f"dibs: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"hint: {exc.hint}\n")
    return exc.exit_code


def print_json(data: Any) -> None:
    """Print *data* as indented JSON."""
    import json

    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def emit(args: argparse.Namespace, data: Any, text: str) -> int:
    """Print *data* as JSON with ``--json``, else the line(s) *text*; exit code 0."""
    if getattr(args, "json", False):
        print_json(data)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def notes() -> None:
    """Tell people about repairs the stores made on the way (a torn tail after a crash)."""
    for opened in _opened:
        for note in getattr(opened.store, "repairs", ()):
            sys.stderr.write(f"dibs: note: {note}\n")
    _last[:] = [o for o in _opened[-1:] if o.repo is not None]
    _opened.clear()


#: The coordinator the last command opened (closed by now; its repository and settings stay).
_last: list[Coordinator] = []


def _nobody_listens(done: Coordinator) -> bool:
    """Whether no tracker or `[events]` command listens (an error: let the pass report it).
    The usual "nobody" is answered without importing the task package."""
    from dibs.integrations import listeners

    try:
        if not listeners.may_listen(done):
            return True
        from dibs.integrations.tasks import sync

        return not sync.enabled(done)
    except (DibsError, OSError):
        return False


def tell_trackers(args: argparse.Namespace) -> None:
    """After a command, outside its transaction: the task sources and `[events]` commands hear
    of what it did (dibs.integrations.tasks.sync). Run from the main checkout: the command may have
    removed the worktree it ran in (`dibs finish`)."""
    from dibs.integrations import listeners
    from dibs.service import Coordinator

    where = getattr(args, "directory", None)
    try:
        if _last:
            done = _last[0]
            assert done.repo is not None  # noqa: S101 -- notes() keeps only those with one
            where = done.repo.main_root
            same = os.path.normpath(where) == os.path.normpath(done.repo.root)
            if same and _nobody_listens(done):
                # The command ran in the main checkout: opening it again would read the same
                # settings and find nobody to tell, at the cost of a second store open.
                return
        with Coordinator.open(where) as coord:
            if listeners.may_listen(coord):
                from dibs.integrations.tasks import sync

                sync.deliver(coord)
    except (DibsError, OSError) as exc:
        said = exc.message if isinstance(exc, DibsError) else str(exc)
        sys.stderr.write(f"dibs: could not tell the trackers: {said}\n")


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str], *, upper: bool = True) -> str:
    """Rows as aligned columns under *headers* (upper-cased unless they are names)."""
    text = [[str(cell) for cell in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    shown = [h.upper() if upper else h for h in headers]
    lines = ["  ".join(h.ljust(w) for h, w in zip(shown, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in text]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def claim_rows(claims: Iterable[Mapping[str, Any]]) -> list[list[Any]]:
    """Table rows for lease views."""
    return [
        [
            c["resource"],
            c["agent"],
            c["mode"],
            c["token"],
            "expired" if c["expires_in"] <= 0 else "in " + seconds(c["expires_in"]),
            c.get("note", ""),
        ]
        for c in claims
    ]


CLAIM_HEADERS = ("resource", "agent", "mode", "token", "expires", "note")
