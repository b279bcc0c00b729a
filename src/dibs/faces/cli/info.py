"""``dibs status | log | evict | doctor``."""

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

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from dibs.core.events import Event


def configure_status(parser: argparse.ArgumentParser) -> None:
    """``dibs status``."""
    common(parser)
    parser.set_defaults(handler=run_status)


def run_status(args: argparse.Namespace) -> int:
    """Print the summary, the agents and the claims."""
    from dibs.faces.cli.agents import AGENT_HEADERS, _agent_rows

    with coordinator(args) as coord:
        status = coord.status()
    if args.json:
        print_json(status)
        return 0
    out = [status["summary"] + "\n"]
    if status["agents"]:
        out += ["\n", table(_agent_rows(status["agents"]), AGENT_HEADERS)]
    if status["claims"]:
        out += ["\n", table(claim_rows(status["claims"]), CLAIM_HEADERS)]
    if status["expired"]:
        rows = [[c["resource"], c["agent"], c["evictable"]] for c in status["expired"]]
        out += ["\nawaiting eviction:\n", table(rows, ("resource", "agent", "reason"))]
    if status["pool"]:
        rows = [
            [p["slot"], p["agent"] or "free", p.get("branch", "") if p["agent"] else ""]
            for p in status["pool"]
        ]
        out += ["\npool:\n", table(rows, ("slot", "agent", "branch"))]
    if status["queue"]:
        rows = [
            [e["id"], n, e["state"], e["branch"], e["issue"], e["agent"]]
            for n, e in enumerate(status["queue"], 1)
        ]
        out += ["\nqueue:\n", table(rows, ("entry", "pos", "state", "branch", "issue", "agent"))]
    sys.stdout.write("".join(out))
    return 0


def configure_log(parser: argparse.ArgumentParser) -> None:
    """``dibs log [-n N] [--follow]``."""
    parser.add_argument("-n", type=int, default=20, metavar="N", help="the last N events (20)")
    parser.add_argument("--since", type=int, metavar="SEQ", help="every event after seq SEQ")
    parser.add_argument(
        "-f", "--follow", action="store_true", help="keep printing events as they come"
    )
    parser.add_argument("--agent", metavar="NAME", help="only this agent's events")
    parser.add_argument("--resource", metavar="RES", help="only events on this resource")
    parser.add_argument("--op", metavar="OP", help="only this op (acquire, release, ...)")
    common(parser)
    parser.set_defaults(handler=run_log)


def _line(event: Event) -> str:
    fields: dict[str, object] = dict(event)
    parts = [
        f"{event['seq']:>6}",
        event["wall"].replace("T", " ").removesuffix("Z"),
        f"{event['op']:<11}",
        f"{event.get('agent', '-'):<12}",
    ]
    if "resource" in event:
        parts.append(f"{event['resource']:<24}")
    if "token" in event:
        parts.append(f"token={event['token']}")
    if event.get("mode") == "shared":
        parts.append("shared")
    parts += [f"{key}={fields[key]}" for key in ("reason", "by", "note") if key in fields]
    if "waited" in event:
        parts.append(f"waited={event['waited']}s")
    return "  ".join(parts).rstrip() + "\n"


def run_log(args: argparse.Namespace) -> int:
    """Print events; with --follow, keep printing."""
    from dibs.ground.errors import UsageError

    if args.n < 0:
        raise UsageError("-n cannot be negative")
    with coordinator(args) as coord:
        since = args.since or 0
        events = coord.log(
            limit=None if args.since is not None else args.n,
            since=since,
            agent=args.agent,
            resource=args.resource,
            op=args.op,
        )
        for event in events:
            _emit(args, event)
        if not args.follow:
            return 0
        sys.stdout.flush()
        last = events[-1]["seq"] if events else coord.seq()
        for event in coord.follow(since=last, agent=args.agent, resource=args.resource, op=args.op):
            _emit(args, event)
            sys.stdout.flush()
    return 0


def _emit(args: argparse.Namespace, event: Event) -> None:
    if args.json:
        import json

        sys.stdout.write(json.dumps(event, ensure_ascii=False) + "\n")
    else:
        sys.stdout.write(_line(event))


def configure_evict(parser: argparse.ArgumentParser) -> None:
    """``dibs evict RES --reason TEXT``."""
    parser.epilog = (
        "A person's act: every hold on RES (or only --agent's) is removed and the\n"
        "force-evict event records who did it (the OS user and host running this: never a\n"
        "typed name) and why. The holder's next renew or release gets exit 4 (lease lost).\n"
        "Evicting never touches worktrees, branches or files."
    )
    parser.add_argument("resource", metavar="RES", help="the exact resource as claimed")
    parser.add_argument("--reason", required=True, metavar="TEXT", help="why (logged)")
    parser.add_argument("--agent", metavar="NAME", help="only this holder (shared claims)")
    import argparse as _argparse

    parser.add_argument("--by", help=_argparse.SUPPRESS)  # refused: see run_evict
    common(parser)
    parser.set_defaults(handler=run_evict)


def run_evict(args: argparse.Namespace) -> int:
    """Force-evict and say whom."""
    if args.by is not None:
        from dibs.ground.errors import UsageError

        raise UsageError(
            "--by is gone: an eviction is logged as the OS user and host that ran it",
            hint="drop --by; say why with --reason",
        )
    with coordinator(args) as coord:
        evicted = coord.evict(args.resource, reason=args.reason, agent=args.agent)
    if args.json:
        print_json(evicted)
    else:
        for item in evicted:
            sys.stdout.write(f"evicted {item['resource']} from {item['agent']}\n")
    return 0


def configure_doctor(parser: argparse.ArgumentParser) -> None:
    """``dibs doctor [--repair]``."""
    parser.epilog = (
        "Checks every line of the log, the checkpoint against a full replay, a torn tail\n"
        "left by a crash, and a log that ends before its checkpoint or high-water mark (a\n"
        "restored backup: --repair keeps the evidence in evidence/ and continues fencing\n"
        "tokens above every one granted); then compares the store with `git worktree list`\n"
        "and this host's processes: claims whose worktree is gone (release), worktrees\n"
        "nobody owns (remove if clean and landed), dead agents still holding claims (evict),\n"
        "prunable worktree entries (git worktree prune), anything held twice (report).\n"
        "Without --repair it only reports (exit 1 when something is wrong); with --repair\n"
        "it mends what it can, logs each act with by and reason, and says what it did."
    )
    parser.add_argument("--repair", action="store_true", help="mend what can be mended")
    common(parser)
    parser.set_defaults(handler=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    """Report findings; exit 1 when something is wrong and was not repaired."""
    with coordinator(args) as coord:
        report = coord.doctor(repair=args.repair)
        # A log found behind its checkpoint cannot be opened until it is repaired.
        blocked = any(f["kind"] == "log-behind" and not f["repaired"] for f in report["findings"])
        if coord.repo is not None and not blocked:
            from dibs.integrations.worktrees import reconcile

            report["findings"] = list(report["findings"]) + reconcile(coord, repair=args.repair)
            report["ok"] = not report["findings"]
    findings = report["findings"]
    if args.json:
        print_json(report)
    elif not findings:
        sys.stdout.write(f"ok: {report['store']} is healthy\n")
    else:
        for item in findings:
            if item["repaired"]:
                done = "repaired: " + item["repair"]
            elif item.get("repairable", True):
                done = "--repair would " + item["repair"]
            else:
                done = "cannot be repaired automatically: " + item["repair"]
            sys.stdout.write(f"{item['kind']}: {item['message']}\n  {done}\n")
    if "platform" in report and not args.json:
        sys.stdout.write(
            "platform: {platform}; sync {sync}; clock {clock}; boot id from {boot}; "
            "liveness by {liveness}\n".format(**report["platform"])
        )
    return 0 if all(item["repaired"] for item in findings) else 1
