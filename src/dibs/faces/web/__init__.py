"""The dashboard: a read-only web face on a coordinator (Starlette + uvicorn).

Routes (all GET):

* ``/``                    the live page (static HTML, CSS and a small script; no build step)
* ``/api/state``           agents, claims, queue, pool, worktrees, summary (JSON; `views`)
* ``/api/events?since=S``  events after seq S (JSON; ``limit`` caps them, default 1,000)
* ``/api/metrics``         `dibs.integrations.metrics.compute` over the log (``?since=2h``)
* ``/api/tasks``           the ready tasks of the task sources (`dibs.integrations.tasks.ready`)
* ``/api/stream``          server-sent events: ``seq`` whenever the log grows
* ``/metrics``             Prometheus text (prometheus_client)

With a token, every request must carry it (``Authorization: Bearer T`` or ``?token=T``);
without one a 401 that says nothing else. Binding to anything but loopback needs a token.

Starlette, uvicorn and prometheus_client are imported only here (``pip install 'dibs[web]'``).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os

from dibs.faces.web.views import StatePage
from dibs.ground.errors import DibsError, UsageError
from dibs.service.checks import MAX_SEQ

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from typing import Any

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

    from dibs.service import Coordinator

STATIC = os.path.join(os.path.dirname(__file__), "static")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
#: Seconds between looks at the log for the live stream.
POLL = 0.25


def _missing(exc: ImportError) -> UsageError:
    return UsageError(
        f"the dashboard needs the web extra ({exc.name} is not installed)",
        hint="pip install 'dibs[web]'",
    )


def ready_tasks(coord: Coordinator) -> dict[str, Any]:
    """The ready tasks, how many others are not ready, and the tasks skipped as malformed."""
    from dibs.integrations import tasks

    report = tasks.ready(coord)
    waiting = len(report["tasks"]) - len(report["ready"])
    return {"ready": report["ready"], "not_ready": waiting, "problems": report["problems"]}


def app(coord: Coordinator, *, token: str | None = None) -> Starlette:
    """The Starlette application serving *dibs* (read-only)."""
    try:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.responses import (
            FileResponse,
            JSONResponse,
            PlainTextResponse,
            StreamingResponse,
        )
        from starlette.responses import Response as PlainResponse
        from starlette.routing import Route
        from starlette.staticfiles import StaticFiles
    except ImportError as exc:
        raise _missing(exc) from None

    class Auth:
        """401 for any request without the token; compared in constant time."""

        def __init__(self, inner: Any):
            self.inner = inner

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if token is None or scope["type"] != "http":
                await self.inner(scope, receive, send)
                return
            from starlette.requests import Request

            request = Request(scope)
            given = request.query_params.get("token", "")
            header = request.headers.get("authorization", "")
            if header.lower().startswith("bearer "):
                given = header[7:].strip()
            if not hmac.compare_digest(given.encode(), token.encode()):
                response = PlainResponse(
                    "unauthorized\n",
                    status_code=401,
                    media_type="text/plain",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
            await self.inner(scope, receive, send)

    state_page = StatePage(coord)

    async def page(_request: Request) -> Response:
        return FileResponse(os.path.join(STATIC, "index.html"))

    async def api_state(_request: Request) -> Response:
        body = await asyncio.to_thread(state_page.json)
        return PlainResponse(body, media_type="application/json")

    async def api_events(request: Request) -> Response:
        try:
            since = int(request.query_params.get("since", "0"))
            limit = int(request.query_params.get("limit", "1000"))
        except ValueError:
            return JSONResponse({"error": "since and limit must be whole numbers"}, 400)
        if not 0 <= since <= MAX_SEQ or not 1 <= limit <= 100_000:
            return JSONResponse({"error": f"0 <= since <= {MAX_SEQ}, 1 <= limit <= 100000"}, 400)

        return JSONResponse(await asyncio.to_thread(coord.events, since, limit))

    async def api_metrics(request: Request) -> Response:
        from dibs.integrations import metrics

        since = request.query_params.get("since") or None
        try:
            if since:
                metrics.parse_duration(since)
        except UsageError as exc:
            return JSONResponse({"error": exc.message}, 400)
        return JSONResponse(await asyncio.to_thread(metrics.of_store, coord, since=since))

    async def api_tasks(_request: Request) -> Response:
        try:
            return JSONResponse(await asyncio.to_thread(ready_tasks, coord))
        except DibsError as exc:  # a task source that cannot be read at all
            return JSONResponse({"error": exc.message}, 400)

    async def stream(request: Request) -> Response:
        async def events() -> AsyncIterator[str]:
            last = -1
            yield "retry: 1000\n\n"
            while not await request.is_disconnected():
                seq = await asyncio.to_thread(coord.seq)
                if seq != last:
                    last = seq
                    yield f"event: seq\ndata: {json.dumps({'seq': seq})}\n\n"
                await asyncio.sleep(POLL)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    async def prometheus(_request: Request) -> Response:
        text = await asyncio.to_thread(prometheus_text, coord)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/", page),
        Route("/api/state", api_state),
        Route("/api/events", api_events),
        Route("/api/metrics", api_metrics),
        Route("/api/tasks", api_tasks),
        Route("/api/stream", stream),
        Route("/metrics", prometheus),
    ]
    application = Starlette(routes=routes, middleware=[Middleware(Auth)])
    application.mount("/static", StaticFiles(directory=STATIC), name="static")
    return application


def prometheus_text(coord: Coordinator) -> str:
    """The figures of `dibs metrics` (whole log) and the live state, as Prometheus text."""
    try:
        from prometheus_client import CollectorRegistry, generate_latest
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
    except ImportError as exc:
        raise _missing(exc) from None
    from dibs.integrations import metrics

    report = metrics.of_store(coord)
    status = coord.status()

    from dibs.ground.version import __version__
    from dibs.integrations.queue import required_gates

    gates = required_gates(coord.settings)[1]

    class Figures:
        def collect(self) -> Iterator[Any]:
            claims, evictions, queue = report["claims"], report["evictions"], report["queue"]
            yield _labelled(
                GaugeMetricFamily,
                "dibs_build_info",
                "the dibs serving these figures (always 1)",
                "version",
                {__version__: 1},
            )
            yield CounterMetricFamily(
                "dibs_acquisitions", "leases granted", value=claims["acquisitions"]
            )
            yield _labelled(
                CounterMetricFamily,
                "dibs_claim_calls",
                "claim calls, granted or refused (a refused --wait call counts once)",
                "outcome",
                {"granted": claims["claim_calls"], "refused": claims["refusals"]},
            )
            yield CounterMetricFamily(
                "dibs_wait_timeouts",
                "--wait claim calls still refused when the wait ran out",
                value=claims["wait_timeouts"],
            )
            yield _labelled(
                CounterMetricFamily,
                "dibs_evictions",
                "leases evicted, by reason",
                "reason",
                {**dict.fromkeys(metrics.EVICT_REASONS, 0), **evictions["by_reason"]},
            )
            yield _labelled(
                CounterMetricFamily,
                "dibs_landings",
                "merge queue outcomes",
                "outcome",
                {outcome: queue[outcome] for outcome in metrics.LANDING_OUTCOMES},
            )
            causes = dict.fromkeys((*metrics.FAIL_CAUSES, *(f"gate:{g}" for g in gates)), 0)
            yield _labelled(
                CounterMetricFamily,
                "dibs_landing_failures",
                "failed landings, by cause",
                "cause",
                {**causes, **queue["failed_by"]},
            )
            yield _labelled(
                CounterMetricFamily,
                "dibs_flaky_gates",
                "landings whose gate failed, then passed on a retry, by gate",
                "gate",
                {**dict.fromkeys(gates, 0), **queue["flaky_by_gate"]},
            )
            yield CounterMetricFamily(
                "dibs_cached_gate_failures",
                "landings refused by the failure cache (same base, commits and gate) unrun",
                value=queue["cached_failures"],
            )
            for name, doc, summary in (
                (
                    "dibs_wait_seconds",
                    "seconds --wait claim calls waited, granted or timed out",
                    claims["wait_seconds"],
                ),
                (
                    "dibs_lock_wait_seconds",
                    "seconds --wait claim calls on lock:* resources waited",
                    claims["lock_wait_seconds"],
                ),
                ("dibs_hold_seconds", "seconds leases were held", claims["hold_seconds"]),
                (
                    "dibs_pool_allocation_seconds",
                    "seconds pool takes waited",
                    report["pool"]["allocation_seconds"],
                ),
                ("dibs_land_seconds", "seconds a landing took", queue["land_seconds"]),
            ):
                buckets = [
                    (f"{bound:g}", count)
                    for bound, count in zip(metrics.BUCKETS, summary["buckets"], strict=True)
                ]
                buckets.append(("+Inf", summary["count"]))
                yield HistogramMetricFamily(name, doc, buckets=buckets, sum_value=summary["sum"])
            agents = GaugeMetricFamily("dibs_agents", "registered agents", labels=["status"])
            for status_name in ("live", "stuck", "stale", "dead"):
                count = sum(1 for a in status["agents"] if a["status"] == status_name)
                agents.add_metric([status_name], count)
            yield agents
            stuck = sum(1 for a in status["agents"] if a["status"] == "stuck")
            yield GaugeMetricFamily(
                "dibs_agents_stuck",
                "live agents without progress for agents.stuck_after",
                value=stuck,
            )
            unread = GaugeMetricFamily(
                "dibs_inbox_unread", "unread messages in an agent's inbox", labels=["agent"]
            )
            for name, depth in status["inbox"].items():
                unread.add_metric([name], depth)
            yield unread
            yield GaugeMetricFamily("dibs_claims_live", "live claims", value=len(status["claims"]))
            yield GaugeMetricFamily(
                "dibs_queue_length", "queue entries", value=len(status["queue"])
            )
            slots = status["pool"]
            yield GaugeMetricFamily("dibs_pool_slots", "pool slots", value=len(slots))
            busy = sum(1 for slot in slots if slot["agent"])
            yield GaugeMetricFamily("dibs_pool_slots_busy", "pool slots taken", value=busy)
            yield GaugeMetricFamily(
                "dibs_pool_utilization",
                "share of pool slot time taken since the log began (0-1; a slot taken now counts)",
                value=report["pool"]["utilization"],
            )
            yield GaugeMetricFamily("dibs_log_seq", "events in the log", value=status["seq"])

    registry = CollectorRegistry()
    registry.register(Figures())
    return generate_latest(registry).decode()


def _labelled(family: Any, name: str, doc: str, label: str, values: dict[str, float]) -> Any:
    """One family with a sample per label value (every known value, 0 included)."""
    made = family(name, doc, labels=[label])
    for value_name, value in sorted(values.items()):
        made.add_metric([value_name], value)
    return made


def serve(
    coord: Coordinator, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None
) -> None:
    """Serve the dashboard until interrupted.

    Raises:
        UsageError: a non-loopback address without a token, or a bad port.
    """
    if host not in LOOPBACK and not token:
        raise UsageError(
            f"serving on {host} would show every claim to the network without a token",
            hint="pass --token SECRET (or DIBS_DASHBOARD_TOKEN), or bind to 127.0.0.1",
        )
    if not 0 <= port <= 65535:
        raise UsageError(f"port {port} is out of range", hint="give 1-65535, or 0 for any")
    try:
        import uvicorn
    except ImportError as exc:
        raise _missing(exc) from None
    import socket
    import sys

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(512)  # from here on a connection waits in the backlog, never refused
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror}", hint="pick another --port"
        ) from None
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    sys.stderr.write(f"dibs dashboard on http://{shown}:{sock.getsockname()[1]}/\n")
    sys.stderr.flush()
    application = app(coord, token=token)
    import contextlib

    from dibs.ground.heap import settle_heap

    with contextlib.suppress(DibsError):  # a store that cannot be read says so per request
        coord.read()
    settle_heap()  # the state lives as long as the server: no collector pauses over it
    config = uvicorn.Config(application, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
