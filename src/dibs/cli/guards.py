"""``dibs hooks install|uninstall|status``, ``dibs guard commit|claude``, ``dibs check``."""

from __future__ import annotations

import sys

from dibs.cli.output import common, coordinator, print_json, subcommands

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse


def configure_hooks(parser: argparse.ArgumentParser) -> None:
    """``dibs hooks install [--git] [--claude] [--mode block|warn] | uninstall | status``."""
    add = subcommands(parser)
    install = add(
        "install",
        help="install the guards (both when neither --git nor --claude is given)",
        description="Install the commit guard (git pre-commit) and/or the edit guard "
        "(Claude Code PreToolUse hook).",
        epilog="The git hook goes where git runs hooks for every worktree of the clone; an\n"
        "existing pre-commit hook is kept and still runs after the guard. The Claude Code\n"
        "hook is merged into .claude/settings.json; nothing else there changes.",
    )
    install.add_argument("--git", action="store_true", help="the git pre-commit guard")
    install.add_argument("--claude", action="store_true", help="the Claude Code edit guard")
    install.add_argument(
        "--mode", choices=("block", "warn"), help="refuse, or only warn (default: guard.mode)"
    )
    common(install)
    install.set_defaults(handler=run_hooks_install)
    uninstall = add("uninstall", help="remove the guards", description="Remove the guards.")
    uninstall.add_argument("--git", action="store_true", help="only the git hook")
    uninstall.add_argument("--claude", action="store_true", help="only the Claude Code hook")
    common(uninstall)
    uninstall.set_defaults(handler=run_hooks_uninstall)
    status = add("status", help="which guards are installed", description="Show the guards.")
    common(status)
    status.set_defaults(handler=run_hooks_status)


def _which(args: argparse.Namespace) -> tuple[bool, bool]:
    both = not args.git and not args.claude
    return both or args.git, both or args.claude


def run_hooks_install(args: argparse.Namespace) -> int:
    """Install and say where."""
    from dibs import hooks

    with coordinator(args) as dibs:
        repo = dibs.repo
        assert repo is not None  # noqa: S101 -- Coordinator.open always finds a repository
        mode = args.mode or dibs.settings["guard.mode"]
        want_git, want_claude = _which(args)
        done = {}
        if want_git:
            done["git"] = hooks.install_git(repo, mode)
        if want_claude:
            done["claude"] = hooks.install_claude(repo, mode)
    if args.json:
        print_json(done)
        return 0
    if "git" in done:
        kept = (
            f" (the old hook is kept as {done['git']['chained']})" if done["git"]["chained"] else ""
        )
        sys.stdout.write(f"installed the commit guard ({mode}) in {done['git']['hook']}{kept}\n")
    if "claude" in done:
        sys.stdout.write(f"installed the edit guard ({mode}) in {done['claude']['settings']}\n")
    return 0


def run_hooks_uninstall(args: argparse.Namespace) -> int:
    """Remove and say what was removed."""
    from dibs import hooks

    with coordinator(args) as dibs:
        repo = dibs.repo
        assert repo is not None  # noqa: S101 -- Coordinator.open always finds a repository
        want_git, want_claude = _which(args)
        done = {}
        if want_git:
            done["git"] = hooks.uninstall_git(repo)
        if want_claude:
            done["claude"] = hooks.uninstall_claude(repo)
    if args.json:
        print_json(done)
        return 0
    for name, result in done.items():
        removed = "removed" if result["removed"] else "was not installed"
        sys.stdout.write(f"{name} guard {removed}\n")
    return 0


def run_hooks_status(args: argparse.Namespace) -> int:
    """Show what is installed."""
    from dibs import hooks

    with coordinator(args) as dibs:
        repo = dibs.repo
        assert repo is not None  # noqa: S101 -- Coordinator.open always finds a repository
        found = hooks.status(repo)
    if args.json:
        print_json(found)
        return 0
    git, claude = found["git"], found["claude"]
    chained = f", chained to {git['chained']}" if git["chained"] else ""
    commit = f"{git['mode']} in {git['hook']}{chained}" if git["installed"] else "not installed"
    edit = f"{claude['mode']} in {claude['settings']}" if claude["installed"] else "not installed"
    sys.stdout.write(f"commit guard: {commit}\nedit guard:   {edit}\n")
    return 0


def configure_guard(parser: argparse.ArgumentParser) -> None:
    """``dibs guard commit | dibs guard claude``."""
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
    claude = add(
        "claude",
        help="what the Claude Code PreToolUse hook runs (hook JSON on stdin)",
        description="Refuse an edit of a file another agent holds (Claude Code PreToolUse).",
        epilog="Reads the hook input (tool_name, tool_input.file_path, cwd, session_id) on\n"
        "stdin. Exit 2 blocks the tool call, with a one-line reason on stderr that the agent\n"
        "sees. With guard.auto_claim, a first edit of a free file claims it for the editing\n"
        "agent (the session's own agent when DIBS_AGENT is not set).",
    )
    claude.add_argument("--mode", choices=("block", "warn"), help="default: guard.mode")
    claude.add_argument(
        "--auto-claim", action="store_true", default=None, help="claim free files on first edit"
    )
    common(claude, identity=True)
    claude.set_defaults(handler=run_guard_claude)


def run_guard_commit(args: argparse.Namespace) -> int:
    """Check the staged changes; print why a commit is refused."""
    from dibs.errors import DibsError
    from dibs.guard import guard_commit

    mode = args.mode
    try:
        with coordinator(args) as dibs:
            mode = mode or dibs.settings["guard.mode"]
            code, messages, blocks = guard_commit(dibs, mode=mode)
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


def run_guard_claude(args: argparse.Namespace) -> int:
    """Decide one Claude Code tool call; exit 2 blocks it."""
    from dibs.errors import DibsError, NotFound
    from dibs.guard import HookInput, guard_claude
    from dibs.service import Coordinator

    mode = args.mode or "block"
    try:
        hook = HookInput(sys.stdin.read())
        try:
            dibs = Coordinator.open(args.directory or hook.cwd, agent=args.agent, token=args.token)
        except NotFound:
            return 0  # not in a git repository: nothing dibs guards
        with dibs:
            mode = args.mode or dibs.settings["guard.mode"]
            auto = (
                args.auto_claim
                if args.auto_claim is not None
                else dibs.settings["guard.auto_claim"]
            )
            code, message = guard_claude(
                dibs, hook, mode=mode, auto_claim=auto, ttl=dibs.settings["guard.auto_claim_ttl"]
            )
    except DibsError as exc:
        # Never switch off silently: refuse (block) or say so (warn).
        sys.stderr.write(f"dibs: the edit guard could not check: {exc.message}\n")
        return 2 if mode == "block" else 0
    if message:
        sys.stderr.write(message + "\n")
    return code


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
    from dibs.violations import check

    with coordinator(args) as dibs:
        report = check(dibs, base=args.base)
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
