"""``dibs metrics`` and ``dibs dashboard``: how coordination is going."""

from __future__ import annotations

import sys

from dibs.faces.cli.output import common, coordinator, print_json, table

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any


def configure_metrics(parser: argparse.ArgumentParser) -> None:
    """``dibs metrics [--since DURATION] [--json]``."""
    parser.epilog = (
        "Computed from the event log alone, so it works on any store and any past period:\n"
        "acquisitions and refusals (the conflict rate), --wait times, lease hold times,\n"
        "evictions by reason (crash and stale rates), pool utilisation and allocation\n"
        "latency, queue throughput and failures by gate, and each agent's activity.\n\n"
        "examples:\n  dibs metrics --since 2h\n  dibs metrics --since 7d --json"
    )
    parser.add_argument("--since", metavar="DURATION", help="only the last 90s, 15m, 2h, 7d...")
    common(parser)
    parser.set_defaults(handler=run_metrics)


def _s(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"


def _p(summary: dict[str, Any]) -> str:
    return f"p50 {_s(summary['p50'])}, p99 {_s(summary['p99'])} ({summary['count']})"


def run_metrics(args: argparse.Namespace) -> int:
    from dibs.integrations import metrics

    if args.since is not None:
        metrics.parse_duration(args.since)  # a bad duration is refused before anything is read
    with coordinator(args) as coord:
        report = metrics.of_store(coord, since=args.since)
    if args.json:
        print_json(report)
        return 0
    claims, ev, queue, pool = report["claims"], report["evictions"], report["queue"], report["pool"]
    rows: list[list[Any]] = [
        ["period", f"{report['period_seconds']:.0f} s, {report['events']} events"],
        ["claims granted", f"{claims['claim_calls']} calls, {claims['acquisitions']} resources"],
        ["refused", f"{claims['refusals']} (conflict rate {claims['conflict_rate']:.1%})"],
        [
            "--wait time",
            (
                f"p50 {_s(claims['wait_seconds']['p50'])}, p99 {_s(claims['wait_seconds']['p99'])}"
                f" ({claims['wait_seconds']['count']}, {claims['wait_timeouts']} timed out)"
            ),
        ],
        [
            "lock wait time",
            (
                f"p50 {_s(claims['lock_wait_seconds']['p50'])}, "
                f"p99 {_s(claims['lock_wait_seconds']['p99'])}"
            ),
        ],
        [
            "lease hold time",
            f"p50 {_s(claims['hold_seconds']['p50'])}, p99 {_s(claims['hold_seconds']['p99'])}",
        ],
        ["evictions", ", ".join(f"{k} {v}" for k, v in ev["by_reason"].items()) or "none"],
        ["crash / stale rate", f"{ev['crash_rate']:.1%} / {ev['stale_rate']:.1%}"],
        [
            "pool",
            (
                f"{pool['slots']} slots, {pool['utilization']:.0%} used, allocation p50 "
                f"{_s(pool['allocation_seconds']['p50'])}"
            ),
        ],
        [
            "queue",
            (
                f"{queue['landed']} landed, {queue['failed']} failed "
                f"({queue['failure_rate']:.0%}), {queue['landings_per_hour']}/h"
            ),
        ],
    ]
    if queue["failed_by"]:
        rows.append(["failures by", ", ".join(f"{k} {v}" for k, v in queue["failed_by"].items())])
    if queue["flaky"]:
        flaky = ", ".join(f"{k} {v}" for k, v in queue["flaky_by_gate"].items())
        rows.append(["flaky gates", f"{queue['flaky']} landings ({flaky})"])
    if queue["cached_failures"]:
        rows.append(["failures not run again", str(queue["cached_failures"])])
    out = [table(rows, ("figure", "value"))]
    activity = report["agents"]["activity"]
    if activity:
        kinds = ("acquired", "released", "refused", "evicted", "landed")
        agent_rows = [[name, *(row.get(k, 0) for k in kinds)] for name, row in activity.items()]
        out += ["\n", table(agent_rows, ("agent", *kinds))]
    sys.stdout.write("".join(out))
    return 0


def configure_dashboard(parser: argparse.ArgumentParser) -> None:
    """``dibs dashboard [--host H] [--port P] [--token T]``."""
    parser.epilog = (
        "A live page (no reload: server-sent events) with agents, claims counting down,\n"
        "worktrees, the queue, and charts of contention and hold times; /api/state,\n"
        "/api/events?since=SEQ and /api/metrics return JSON, /metrics Prometheus text.\n"
        "Read-only. Binding to anything but loopback needs --token (or DIBS_DASHBOARD_TOKEN);\n"
        "every request then needs it (Authorization: Bearer T, or ?token=T).\n"
        "Needs the web extra: pip install 'dibs[web]'."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (8765; 0: any free one)")
    parser.add_argument("--token", metavar="T", help="a secret every request must carry")
    common(parser)
    parser.set_defaults(handler=run_dashboard)


def run_dashboard(args: argparse.Namespace) -> int:
    import os

    from dibs.faces.web import serve

    token = args.token or os.environ.get("DIBS_DASHBOARD_TOKEN") or None
    with coordinator(args) as coord:
        serve(coord, host=args.host, port=args.port, token=token)
    return 0
