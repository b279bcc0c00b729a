"""Plans: declare what each agent means to touch, see collisions before anyone starts, claim a
plan all at once, and archive a finished swarm.

The workflow users asked for (seed 004): planning → conflict detection → claim registration →
implementation → release. A plan is a declaration, not a claim: any agent (or an orchestrator)
may write one for a named agent; `commit` turns the acting agent's own plan into claims, all or
none. Plans live in the log as ``record`` events (table ``plans``); `archive` copies the
finished swarm's events to a dated file under the store's ``history/`` folder.
"""

from __future__ import annotations

import os

from dibs.core.events import new_event
from dibs.core.leases import Decision, eviction_reason
from dibs.core.resources import overlaps, parse_resource
from dibs.ground import platform
from dibs.ground.errors import Conflict, DibsError, NotFound, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.service import Coordinator

TABLE = "plans"


def _globs(texts: Iterable[str]) -> list[str]:
    """Normalise plan entries: ``src/**`` or ``path:src/**`` become ``path:src/**``."""
    out: list[str] = []
    for text in texts:
        resource = parse_resource(text if text.startswith("path:") else f"path:{text}")
        if resource.text not in out:
            out.append(resource.text)
    if not out:
        raise UsageError("a plan needs at least one path", hint="e.g. dibs plan add 'src/auth/**'")
    return out


def _actor(coord: Coordinator, agent: str | None) -> str:
    from dibs.service.checks import check_agent_name

    name = agent or coord.agent
    if not name:
        raise UsageError("whose plan? no agent is set", hint="pass --agent NAME or set DIBS_AGENT")
    return check_agent_name(name)


def add(
    coord: Coordinator, paths: Iterable[str], *, agent: str | None = None, issue: str | None = None
) -> dict[str, Any]:
    """Add *paths* to *agent*'s plan (a declaration: nothing is claimed)."""
    name = _actor(coord, agent)
    globs = _globs(paths)
    if issue is not None:
        issue = parse_resource(f"issue:{issue.removeprefix('issue:')}").name

    def decide(state: State, ctx: Context) -> Decision:
        from dibs.service.identity import operator, verified

        # A declaration anyone may write: recorded as who really wrote it, never a typed name.
        by = verified(state, coord.agent, coord.token) or operator()
        plan = dict(state.tables.get(TABLE, {}).get(name) or {"agent": name, "globs": []})
        plan["globs"] = plan["globs"] + [g for g in globs if g not in plan["globs"]]
        plan.update(issue=issue or plan.get("issue"), by=by, committed=False)
        plan.setdefault("added", ctx.now.iso())
        event = new_event("plan-add", ctx.now, agent=name, table=TABLE, key=name, value=plan)
        return Decision([event], result=plan)

    return dict(coord.transact(decide).result)


def drop(
    coord: Coordinator, *, agent: str | None = None, as_operator: bool = False
) -> dict[str, Any]:
    """Forget *agent*'s plan (its claims, if committed, stay until released).

    Only that agent (with its token) drops its plan, or a person with *as_operator*.
    """
    from dibs.service.identity import actor, not_yours, require

    if not as_operator:
        require(coord.agent, coord.token)
    name = _actor(coord, agent)

    def decide(state: State, ctx: Context) -> Decision:
        try:
            acting = actor(state, coord.agent, coord.token, as_operator=as_operator)
        except DibsError as exc:
            return Decision(error=exc)
        refusal = not_yours(acting, name, f"the plan of {name}")
        if refusal is not None:
            return Decision(error=refusal)
        plan = state.tables.get(TABLE, {}).get(name)
        if plan is None:
            return Decision(error=NotFound(f"{name} has no plan", hint="see `dibs plan list`"))
        event = new_event(
            "plan-drop", ctx.now, agent=name, table=TABLE, key=name, value=None, by=acting.by
        )
        return Decision([event], result=plan)

    return dict(coord.transact(decide).result)


def listing(coord: Coordinator) -> list[dict[str, Any]]:
    """Every plan, by agent."""
    state, _ = coord.read()
    plans = state.tables.get(TABLE, {})
    return [plans[name] for name in sorted(plans)]


def commit(coord: Coordinator) -> dict[str, Any]:
    """Claim every path of the acting agent's plan, all or none (needs its token)."""
    from dibs.service.identity import verify

    name = _actor(coord, None)
    state, _ = coord.read()
    verify(state, name, coord.token)
    plan = state.tables.get(TABLE, {}).get(name)
    if plan is None:
        raise NotFound(f"{name} has no plan", hint="add one with `dibs plan add GLOB...`")
    wanted = list(plan["globs"]) + ([f"issue:{plan['issue']}"] if plan.get("issue") else [])
    try:
        claims = coord.claim(wanted, note=f"plan of {name}")
    except Conflict as exc:
        blocked = exc.details.get("blocked") or [exc.details.get("resource")]
        raise Conflict(
            f"the plan of {name} collides: {exc.message}",
            hint="run `dibs plan check` for a way to resolve it; nothing was claimed",
            **{**exc.details, "blocked": blocked},
        ) from exc

    def decide(state: State, ctx: Context) -> Decision:
        current = state.tables.get(TABLE, {}).get(name)
        if current is None:
            return Decision()
        value = {**current, "committed": True}
        event = new_event("plan-commit", ctx.now, agent=name, table=TABLE, key=name, value=value)
        return Decision([event])

    coord.transact(decide)
    return {"agent": name, "claims": claims}


def _intents(state: State, ctx: Context) -> dict[str, list[tuple[str, str]]]:
    """What each agent will touch: its uncommitted plan and its live path claims."""
    intents: dict[str, list[tuple[str, str]]] = {}
    for name, plan in state.tables.get(TABLE, {}).items():
        if not plan.get("committed"):
            intents.setdefault(name, []).extend((g, "plan") for g in plan["globs"])
    for text, holders in state.claims.items():
        if not text.startswith("path:"):
            continue
        for agent, lease in holders.items():
            if eviction_reason(state, lease, ctx) is None:
                intents.setdefault(agent, []).append((text, "claim"))
    return intents


def check(coord: Coordinator) -> dict[str, Any]:
    """Collisions among plans and live claims, the overlap matrix, and how to resolve them."""
    state, now = coord.read()
    agents, found = collisions(state, coord.context(now))
    matrix = {a: {b: 0 for b in agents if b != a} for a in agents}
    for c in found:
        a, b = c["agents"]
        matrix[a][b] += 1
        matrix[b][a] += 1
    return {
        "agents": agents,
        "matrix": matrix,
        "collisions": found,
        "suggestions": suggest(agents, found),
    }


def collisions(state: State, ctx: Context) -> tuple[list[str], list[dict[str, Any]]]:
    """The agents with intents (an uncommitted plan or live path claims), and every pair of
    their paths that can match a common file: which agents, which paths, from a plan or a
    claim, and an example file. Pure: the state and the time in, the overlaps out."""
    from dibs.core.globs import witness

    intents = _intents(state, ctx)
    agents = sorted(intents)
    found = []
    for i, a in enumerate(agents):
        for b in agents[i + 1 :]:
            for ga, source_a in intents[a]:
                for gb, source_b in intents[b]:
                    ra, rb = parse_resource(ga), parse_resource(gb)
                    if not overlaps(ra, rb):
                        continue
                    example = ra.file or rb.file or witness(ra.glob, rb.glob) or ""
                    found.append(
                        {
                            "agents": [a, b],
                            "paths": [ga, gb],
                            "sources": [source_a, source_b],
                            "example": example,
                        }
                    )
    return agents, found


def suggest(agents: list[str], collisions: list[dict[str, Any]]) -> list[str]:
    """The seed's resolution strategies, made concrete for these collisions."""
    if not collisions:
        return ["no collisions: every agent can start now"]
    neighbours: dict[str, set[str]] = {a: set() for a in agents}
    for c in collisions:
        a, b = c["agents"]
        neighbours[a].add(b)
        neighbours[b].add(a)
    # Sequential: waves where no two agents of a wave collide (greedy colouring, busiest first).
    wave: dict[str, int] = {}
    for agent in sorted(agents, key=lambda x: (-len(neighbours[x]), x)):
        taken = {wave[n] for n in neighbours[agent] if n in wave}
        wave[agent] = next(k for k in range(len(agents)) if k not in taken)
    waves = [sorted(a for a in agents if wave[a] == k) for k in range(max(wave.values()) + 1)]
    steps = "; then ".join(", ".join(w) for w in waves)
    out = [f"run sequentially: {steps} (agents in one wave do not collide)"]
    for c in collisions:
        (a, b), (ga, gb), example = c["agents"], c["paths"], c["example"]
        out.append(
            f"{a} and {b} both need {example or 'the same files'} ({ga} / {gb}): "
            f"partition it (split {example or 'the file'} so each owns a part, or narrow a "
            f"glob), or hand it to one agent (drop it from {b}'s plan and let {a} make "
            "those changes)"
        )
    return out


def archive(coord: Coordinator) -> dict[str, Any]:
    """Copy events since the last archive to ``history/<date>-seq<N>.jsonl``; clear released plans.

    A released plan is a committed plan whose agent no longer holds any claim. The log itself
    keeps every event: the archive is a copy for people, one file per finished swarm.
    """
    import json

    repo = coord.repo
    folder = os.path.join(coord.store_folder or (repo.store_dir if repo else "."), "history")
    state, now = coord.read()
    since = int((state.tables.get("archives") or {}).get("last", {}).get("seq", 0))
    events = list(coord.events(since))
    # The previous archive's own bookkeeping (its record, the plans it cleared) is not news.
    if all(e["op"] == "archive" or e.get("reason") == "archived" for e in events):
        raise NotFound("nothing to archive since the last archive", hint="see `dibs log`")
    last = events[-1]["seq"]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{now.iso()[:19].replace(':', '')}-seq{since + 1}-{last}.jsonl")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in events)
        f.flush()
        platform.sync_file(f.fileno())
    os.replace(path + ".tmp", path)

    def decide(state: State, ctx: Context) -> Decision:
        plans = state.tables.get(TABLE, {})
        released = [
            name
            for name, plan in plans.items()
            if plan.get("committed") and not state.leases_of(name)
        ]
        events = [
            new_event(
                "plan-drop",
                ctx.now,
                agent=name,
                table=TABLE,
                key=name,
                value=None,
                reason="archived",
            )
            for name in released
        ]
        record = {"seq": last, "path": path}
        events.append(new_event("archive", ctx.now, table="archives", key="last", value=record))
        return Decision(events, result=released)

    cleared = coord.transact(decide).result
    return {"path": path, "events": len(events), "cleared_plans": cleared}
