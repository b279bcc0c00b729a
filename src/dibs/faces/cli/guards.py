"""``dibs hooks install|uninstall|status``, ``dibs guard commit|<host>``, ``dibs check``."""

from __future__ import annotations

import sys

from dibs.faces.cli.output import common, coordinator, print_json, subcommands

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


_HOST_FLAGS = {
    "claude": "Claude Code (.claude/settings.json)",
    "codex": "Codex CLI (.codex/hooks.json)",
    "gemini": "Gemini CLI (.gemini/settings.json)",
    "cursor": "Cursor (.cursor/hooks.json)",
}


def _flags(parser: argparse.ArgumentParser, verb: str) -> None:
    parser.add_argument("--git", action="store_true", help=f"{verb} the git pre-commit guard")
    for host, where in _HOST_FLAGS.items():
        parser.add_argument(
            f"--{host}", action="store_true", help=f"{verb} the edit guard of {where}"
        )
    parser.add_argument(
        "--user",
        action="store_true",
        help="the user's own hook file of each host (~/.claude, $CODEX_HOME, ~/.gemini, "
        "~/.cursor): every session is guarded, whatever folder or clone it starts in",
    )


def configure_hooks(parser: argparse.ArgumentParser) -> None:
    """``dibs hooks install [--git] [--claude] [--codex] [--gemini] [--cursor] [--user]``."""
    add = subcommands(parser)
    install = add(
        "install",
        help="install the guards (--git and --claude when no guard is named)",
        description="Install the commit guard (git pre-commit) and/or the edit guard of agent "
        "hosts (Claude Code, Codex CLI, Gemini CLI, Cursor).",
        epilog="The git hook goes where git runs hooks for every worktree of the clone; an\n"
        "existing pre-commit hook is kept and still runs after the guard. Host hooks are\n"
        "merged into the host's file (nothing else there changes) and run a small launcher\n"
        "that finds dibs on any machine and refuses edits when it cannot (commit the\n"
        "project files). Codex runs a hook only once trusted: see `dibs hooks status`.\n\n"
        "  dibs hooks install                      # git + Claude Code, in this project\n"
        "  dibs hooks install --codex --trust --gemini\n"
        "  dibs hooks install --claude --user      # every Claude Code session of this user",
    )
    _flags(install, "install")
    install.add_argument(
        "--mode", choices=("block", "warn"), help="refuse, or only warn (default: guard.mode)"
    )
    install.add_argument(
        "--trust",
        action="store_true",
        help="with --codex: record the hook's hash in $CODEX_HOME/config.toml, as Codex's "
        "/hooks screen does (Codex runs untrusted hooks never)",
    )
    common(install)
    install.set_defaults(handler=run_hooks_install)
    uninstall = add("uninstall", help="remove the guards", description="Remove the guards.")
    _flags(uninstall, "remove")
    common(uninstall)
    uninstall.set_defaults(handler=run_hooks_uninstall)
    status = add(
        "status",
        help="which guards are installed, reachable and trusted",
        description="Show the guards: per host, installed (project, user), reachable (the\n"
        "installed command runs and finds dibs) and, for Codex, trusted (and how to trust it).",
    )
    common(status)
    status.set_defaults(handler=run_hooks_status)


def _which(args: argparse.Namespace, *, installing: bool) -> list[str]:
    from dibs.ground.errors import UsageError

    if args.user and args.git:
        raise UsageError(
            "--user is for agent hosts: the git hook already guards every worktree of the clone",
            hint="drop --git, or run the --git install without --user",
        )
    named = [name for name in ("git", *_HOST_FLAGS) if getattr(args, name)]
    if named:
        return named
    if args.user:
        return ["claude"]
    return ["git", "claude"] if installing else ["git", *_HOST_FLAGS]


def run_hooks_install(args: argparse.Namespace) -> int:
    """Install and say where."""
    from dibs.integrations.setup import git_hooks as hooks
    from dibs.integrations.setup import host_hooks

    with coordinator(args) as coord:
        repo = coord.repo
        assert repo is not None  # noqa: S101 -- Coordinator.open always finds a repository
        mode = args.mode or coord.settings["guard.mode"]
        done: dict[str, Any] = {}
        for name in _which(args, installing=True):
            if name == "git":
                done["git"] = hooks.install_git(repo, mode)
            else:
                done[name] = host_hooks.install(repo, name, mode, user=args.user)
        if args.trust and "codex" in done:
            done["codex"]["trust"] = host_hooks.trust_codex(repo, user=args.user)
    if args.json:
        print_json(done)
        return 0
    if "git" in done:
        kept = (
            f" (the old hook is kept as {done['git']['chained']})" if done["git"]["chained"] else ""
        )
        sys.stdout.write(f"installed the commit guard ({mode}) in {done['git']['hook']}{kept}\n")
    for name, result in done.items():
        if name != "git":
            sys.stdout.write(f"installed the {name} edit guard ({mode}) in {result['file']}\n")
    if "codex" in done and "trust" in done["codex"]:
        sys.stdout.write(f"trusted the codex hook in {done['codex']['trust']['config']}\n")
    elif "codex" in done:
        sys.stdout.write("codex runs it once trusted: see `dibs hooks status` (or --trust)\n")
    return 0


def run_hooks_uninstall(args: argparse.Namespace) -> int:
    """Remove and say what was removed."""
    from dibs.integrations.setup import git_hooks as hooks
    from dibs.integrations.setup import host_hooks

    with coordinator(args) as coord:
        repo = coord.repo
        assert repo is not None  # noqa: S101 -- Coordinator.open always finds a repository
        done: dict[str, Any] = {}
        for name in _which(args, installing=False):
            if name == "git":
                done["git"] = hooks.uninstall_git(repo)
            else:
                done[name] = host_hooks.uninstall(repo, name, user=args.user)
    if args.json:
        print_json(done)
        return 0
    for name, result in done.items():
        removed = "removed" if result["removed"] else "was not installed"
        sys.stdout.write(f"{name} guard {removed}\n")
    return 0


def run_hooks_status(args: argparse.Namespace) -> int:
    """Show what is installed, whether it runs, and (Codex) whether it is trusted."""
    from dibs.integrations.setup import git_hooks as hooks

    with coordinator(args) as coord:
        repo = coord.repo
        assert repo is not None  # noqa: S101 -- Coordinator.open always finds a repository
        found = hooks.status(repo)
    if args.json:
        print_json(found)
        return 0
    git = found["git"]
    chained = f", chained to {git['chained']}" if git["chained"] else ""
    commit = f"{git['mode']} in {git['hook']}{chained}" if git["installed"] else "not installed"
    out = [f"commit guard: {commit}\n"]
    for host in _HOST_FLAGS:
        item = found[host]
        where = [
            f"{item[s]['mode']} in {item[s]['file']}"
            for s in ("project", "user")
            if item[s]["installed"]
        ]
        if not where:
            out.append(f"{host}: not installed\n")
            continue
        line = f"{host}: {', '.join(where)}; "
        line += "reachable" if item["reachable"] else f"NOT reachable: {item['problem']}"
        if host == "codex":
            line += "; trusted" if item["trusted"] else "; NOT trusted (codex skips it silently)"
        out.append(line + "\n")
        if host == "claude" and not item["user"]["installed"]:
            out.append(
                "  (Claude Code reads project hooks only from the folder it starts in: sessions\n"
                "  started in a subfolder or another clone run none; `--user` covers them)\n"
            )
        if host == "codex" and item.get("how_to_trust"):
            out.append("  to trust it: " + item["how_to_trust"].replace("\n", "\n  ") + "\n")
    sys.stdout.write("".join(out))
    return 0


def configure_guard(parser: argparse.ArgumentParser) -> None:
    """``dibs guard commit | claude | codex | gemini | cursor``."""
    add = subcommands(parser)
    commit = add(
        "commit",
        help="what the git pre-commit hook runs",
        description="Refuse a commit that stages a file another agent holds.",
        epilog="Checks every staged file (and, for line-range claims, the staged hunks)\n"
        "against other agents' live exclusive claims. Exit 3 refuses the commit.",
    )
    commit.add_argument("--mode", choices=("block", "warn"), help="default: guard.mode")
    common(commit, identity=True)
    commit.set_defaults(handler=run_guard_commit)
    helps = {
        "claude": "Claude Code's PreToolUse hook (Edit, Write, NotebookEdit, Bash)",
        "codex": "Codex CLI's PreToolUse hook (apply_patch, shell)",
        "gemini": "Gemini CLI's BeforeTool hook (write_file, replace, run_shell_command)",
        "cursor": "Cursor's preToolUse hook",
    }
    for host, text in helps.items():
        sub = add(
            host,
            help=f"what {text} runs (hook JSON on stdin)",
            description=f"Refuse a tool call that writes a file another agent holds: {text}.",
            epilog="Reads the host's hook JSON on stdin and answers in the host's own protocol\n"
            "(a JSON refusal with the reason the agent reads; a warning as context the model\n"
            "sees). Session events (SessionStart, SessionEnd, SubagentStop) keep one dibs agent\n"
            "per session. Anything the guard cannot check is refused, saying how to get\n"
            "unstuck. With guard.auto_claim, a first edit of a free file claims it for the\n"
            "acting agent (the session's own agent when DIBS_AGENT is not set).",
        )
        sub.add_argument("--mode", choices=("block", "warn"), help="default: guard.mode")
        sub.add_argument(
            "--auto-claim",
            action="store_true",
            default=None,
            help="claim free files on first edit (default: guard.auto_claim)",
        )
        common(sub, identity=True)
        sub.set_defaults(handler=run_guard_host, host=host)


def run_guard_commit(args: argparse.Namespace) -> int:
    """Check the staged changes; print why a commit is refused."""
    from dibs.ground.errors import DibsError
    from dibs.integrations.guard import guard_commit

    mode = args.mode
    try:
        with coordinator(args) as coord:
            mode = mode or coord.settings["guard.mode"]
            code, messages, blocks = guard_commit(coord, mode=mode)
            if code == 0:
                _commit_progress(coord)
    except DibsError as exc:
        if (mode or "block") == "warn":
            sys.stderr.write(f"dibs warn: the commit guard could not check: {exc.message}\n")
            return 0
        raise
    if args.json:
        print_json({"allowed": code == 0, "blocks": [b.to_json() for b in blocks]})
    if messages:
        head = "commit refused" if code else "warning"
        sys.stderr.write(f"dibs: {head}:\n" + "".join(f"  {m}\n" for m in messages))
        if code:
            sys.stderr.write(
                "hint: unstage those files, or ask the holder (dibs status) to release them\n"
            )
    return code


def _commit_progress(coord: Any) -> None:
    """A commit by a verified agent is progress (`agents.stuck_after`)."""
    from dibs.integrations import inbox
    from dibs.service.identity import verified

    state, now = coord.read()
    name = verified(state, coord.agent, coord.token)
    if name is not None:
        inbox.note_progress(coord, state, now, name, "commit")


def run_guard_host(args: argparse.Namespace) -> int:
    """Decide one hook call of an agent host; never lets an unchecked edit through."""
    import os

    from dibs.faces.hooks import failure

    host = args.host
    mode = args.mode or os.environ.get("DIBS_GUARD_MODE") or "block"
    event = ""
    try:
        from dibs.faces.hooks import Payload

        payload = Payload(host, sys.stdin.read())
        event = payload.event
        code, out = _guard_payload(args, payload)
    except Exception as exc:  # noqa: BLE001 -- fail closed: an unchecked edit is refused
        from dibs.ground.errors import DibsError

        problem = exc.message if isinstance(exc, DibsError) else f"{type(exc).__name__}: {exc}"
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exc()
        code, out = failure(host, event, problem, mode=mode if mode == "warn" else "block")
    if out:
        sys.stdout.write(out + "\n")
    return code


def _guard_payload(args: argparse.Namespace, payload: Any) -> tuple[int, str]:
    import contextlib
    import os

    from dibs.faces.hooks import DEAF_WHEN_ALLOWED, TOOL_EVENTS, reply
    from dibs.ground.errors import DibsError, NotFound
    from dibs.integrations import sessions
    from dibs.integrations.guard import Verdict, check_call
    from dibs.service import Coordinator

    call = payload.call
    go = reply(payload.host, payload.event, Verdict(True))
    if payload.event and payload.event not in TOOL_EVENTS and not payload.session:
        return go
    if payload.event in TOOL_EVENTS and call is None:
        return go  # not a writing tool: nothing to guard
    places = [args.directory or payload.cwd]
    if call is not None:
        places += [os.path.dirname(os.path.join(payload.cwd, p)) for p, _ in call.writes[:1]]
    coord = None
    for place in places:
        with contextlib.suppress(NotFound, OSError):
            coord = Coordinator.open(_existing(place), agent=args.agent, token=args.token)
            break
    if coord is None:
        return go  # not in a git repository: nothing dibs guards
    with coord:
        session, host = payload.session, payload.host
        if call is None:  # a session event: keep one agent per session; never blocks
            told = _session_event(coord, payload)
            return reply(payload.host, payload.event, Verdict(True, told)) if told else go
        mode = args.mode or coord.settings["guard.mode"]
        auto = (
            args.auto_claim if args.auto_claim is not None else coord.settings["guard.auto_claim"]
        )
        with contextlib.suppress(DibsError):
            sessions.sweep(coord)
        verdict = check_call(
            coord, call, mode=mode, auto_claim=auto, ttl=coord.settings["guard.auto_claim_ttl"]
        )
        heard = not verdict.allow or payload.event not in DEAF_WHEN_ALLOWED
        told = _inbox(coord, payload, verdict, push=heard)
        if told:
            verdict.message = "\n\n".join(m for m in (verdict.message, told) if m)
        if not heard and verdict.message and session:
            with contextlib.suppress(OSError):
                sessions.keep_note(coord, session, verdict.message, host=host)
        return reply(payload.host, payload.event, verdict)


def _session_event(coord: Any, payload: Any) -> str:
    """Do what a session event asks (one agent per session); what to tell the model."""
    import contextlib

    from dibs.faces.hooks import CONTEXT_EVENTS, DEAF_WHEN_ALLOWED
    from dibs.ground.errors import DibsError
    from dibs.integrations import sessions

    session, host, event = payload.session, payload.host, payload.event
    try:
        if event == "SessionStart":
            sessions.note_client(coord, session, host=host)
        elif event == "SessionEnd":
            sessions.end_session(coord, session, host=host)
        elif event == "SubagentStop" and payload.subagent:
            sessions.end_subagent(coord, session, payload.subagent, host=host)
    except DibsError as exc:
        sys.stderr.write(f"dibs: {event}: {exc.message}\n")
    told = _inbox(coord, payload, None) if event in CONTEXT_EVENTS else ""
    if event in DEAF_WHEN_ALLOWED.values():
        with contextlib.suppress(OSError):
            kept = sessions.take_notes(coord, session, host=host)
            told = "\n\n".join(m for m in (kept, told) if m)
    return told


def _inbox(coord: Any, payload: Any, verdict: Any, *, push: bool = True) -> str:
    """The acting agent's unread messages for its host's context (acknowledged; left unread
    when not *push*: the host would not show them to the model), and, on an allowed call that
    writes files (a guarded edit), a note of its progress; never fails the hook."""
    import contextlib
    import os

    from dibs.ground.errors import DibsError
    from dibs.integrations import inbox, sessions
    from dibs.service.identity import resolve, verified

    with contextlib.suppress(DibsError, OSError):
        agent, token = resolve(coord.repo, os.environ, coord.agent, coord.token)
        if agent is None and payload.session:
            found = sessions.session_identity(
                coord,
                payload.session,
                host=payload.host,
                subagent=payload.subagent,
                register=False,
            )
            if found is not None:
                agent, token = found
        if agent is None:
            return ""
        if verdict is not None and verdict.allow and payload.call and payload.call.writes:
            state, now = coord.read()
            name = verified(state, agent, token)
            if name is not None:
                inbox.note_progress(coord, state, now, name, "edit")
        return inbox.push(coord, agent, token) if push else ""
    return ""


def _existing(path: str) -> str:
    """*path*, or its nearest folder that exists (a file about to be created)."""
    import os

    while path and not os.path.isdir(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def configure_check(parser: argparse.ArgumentParser) -> None:
    """``dibs check [--base REF] [--agent A]``."""
    parser.epilog = (
        "Compares the files changed on the agent's branch (since it forked from --base,\n"
        "default: the merge target) with its claims. Reports unclaimed edits, and edits of\n"
        "files another agent holds (exit 3 when there are any of those)."
    )
    parser.add_argument("--base", metavar="REF", help="compare from here (default: merge.target)")
    common(parser, identity=True)
    parser.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    """Report violations."""
    from dibs.integrations.guard.violations import check

    with coordinator(args) as coord:
        report = check(coord, base=args.base)
    if args.json:
        print_json(report)
    else:
        out = [
            f"{report['agent']}: {len(report['changed'])} files changed since {report['base']}\n"
        ]
        out += [
            f"  HELD       {item['path']}  by {item['holder']} ({item['resource']})\n"
            for item in report["held_by_others"]
        ]
        out += [f"  UNCLAIMED  {path}\n" for path in report["unclaimed"]]
        if not report["held_by_others"] and not report["unclaimed"]:
            out.append("  every change is covered by your claims\n")
        sys.stdout.write("".join(out))
    return 3 if report["held_by_others"] else 0
