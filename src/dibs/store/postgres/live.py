"""Expiry outside the log: which rows of ``dibs.live`` a client must read, and what they mean.

On PostgreSQL a lease's expiry and an agent's last-seen time are kept in ``dibs.live`` as well
as in the log: the lock holder writes them with every decision, and renewals and heartbeats
that decide nothing extend them there alone, in one statement and without the namespace lock
(see docs/explanation/postgres.md). A client's cached `State` therefore holds lower bounds:
a lease the cache finds live is live, one it finds expired may have been renewed since. So
before the rules run on an expired-looking lease or a stale-looking agent, the client reads
its row (`expiring`, then `patch`); under the namespace lock it locks the row first, which
makes the answer final (`confirm`).

Pure: no I/O. The store calls these around the same `dibs.core` decisions as every store.
"""

from __future__ import annotations

from dibs.core.due import agent_expiry
from dibs.core.state import ttl_ns

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from dibs.core.leases import Decision
    from dibs.core.state import State

    #: (agent, resource): a lease's row, or with resource '' the agent's own row.
    Key = tuple[str, str]


def expiring(state: State, before: int, confirmed: dict[Key, int]) -> tuple[list[str], list[str]]:
    """The rows whose cached expiry is at or before *before*, as (agents, resources).

    Rows confirmed expired under the lock (*confirmed*: key -> the expiry then, only ever
    set by `confirm`) are left out while the cache still holds that expiry: a renewal never
    revives an expired row, and an event that changed it changed the cached value too.
    `State.expiry` keeps the times in order, so this costs the rows it finds.
    """
    keys = state.expiry().expiring(state.agents, state.claims, before, confirmed)
    return [name for name, _ in keys], [text for _, text in keys]


def patch(state: State, rows: tuple[list[str], list[str], list[Any], list[Any], list[int]]) -> None:
    """Take the expiries of *rows* (agents, resources, tokens, secrets, expires) into *state*.

    A row counts only for the lease it was written for (same fencing token) or the same
    registration (same secret): anything else is a row the lock holder is about to replace.
    """
    for name, text, token, secret, expires in zip(*rows, strict=True):
        if text == "":
            agent = state.agents.get(name)
            if agent is not None and agent["secret"] == secret:
                agent["seen"] = int(expires) - ttl_ns(agent["ttl"])
                state.touch(name)
        else:
            lease = state.claims.get(text, {}).get(name)
            if lease is not None and lease["token"] == token:
                lease["expires"] = int(expires)
                state.touch(name, text)


def confirm(
    state: State, agents: list[str], resources: list[str], now: int, confirmed: dict[Key, int]
) -> None:
    """Remember the rows read under their lock that are expired at *now*: final answers."""
    for name, text in zip(agents, resources, strict=True):
        if text == "":
            agent = state.agents.get(name)
            if agent is not None and agent_expiry(agent) <= now:
                confirmed[(name, "")] = agent_expiry(agent)
        else:
            lease = state.claims.get(text, {}).get(name)
            if lease is not None and lease["expires"] <= now:
                confirmed[(name, text)] = lease["expires"]


def renewal(state: State, decision: Decision) -> dict[str, Any] | None:
    """The parameters of a lock-free renewal that does what *decision* says, or None.

    Only a decision that renews and decides nothing qualifies: no refusal, and events that are
    one ``heartbeat`` or ``renew`` events keeping each lease's ttl and note (anything else, an
    eviction on the way or a changed ttl, is a decision and goes to the log).
    """
    events = decision.events
    if decision.error is not None or not events:
        return None
    name = events[0].get("agent")
    agent = state.agents.get(name) if isinstance(name, str) else None
    if agent is None or any(e.get("agent") != name for e in events):
        return None
    if len(events) == 1 and events[0]["op"] == "heartbeat":
        held = sorted(state.leases_of(agent["name"]), key=lambda lease: lease["resource"])
        everything = True
    elif all(e["op"] == "renew" and "note" not in e for e in events):
        held = []
        for event in sorted(events, key=lambda e: str(e["resource"])):
            lease = state.claims.get(event["resource"], {}).get(agent["name"])
            if lease is None or event.get("ttl", lease["ttl"]) != lease["ttl"]:
                return None
            held.append(lease)
        everything = False
    else:
        return None
    return {
        "agent": agent["name"],
        "secret": agent["secret"],
        "everything": everything,
        "resources": [lease["resource"] for lease in held],
        "tokens": [lease["token"] for lease in held],
    }


def renewed(state: State, params: dict[str, Any], now: int) -> None:
    """Take a lock-free renewal that succeeded at *now* into *state* (as the server did)."""
    agent = state.agents.get(params["agent"])
    if agent is not None:
        agent["seen"] = now
        state.touch(params["agent"])
    for text in params["resources"]:
        lease = state.claims.get(text, {}).get(params["agent"])
        if lease is not None:
            lease["expires"] = now + ttl_ns(lease["ttl"])
            state.touch(params["agent"], text)


def live_params(events: list[Any]) -> dict[str, list[Any]]:
    """What ``dibs.apply_live`` needs of each event besides what the log columns carry."""
    monos: list[int | None] = []
    ttls: list[int | None] = []
    secrets: list[str | None] = []
    for event in events:
        monos.append(event.get("mono"))
        ttl = event.get("ttl")
        ttls.append(ttl_ns(ttl) if ttl is not None else None)
        secrets.append(event.get("secret"))
    return {"monos": monos, "ttls": ttls, "secrets": secrets}


def renewal_blocked(decision: Decision) -> bool:
    """Whether *decision* would have renewed but for leases it found expired (they may have
    been renewed outside the log since the cache last looked)."""
    ops = {e["op"] for e in decision.events}
    return bool(ops) and ops <= {"heartbeat", "renew", "auto-evict"} and "auto-evict" in ops


def without_expiry(data: dict[str, Any]) -> dict[str, Any]:
    """*data* (`State.to_json`) without the times dibs.live may have moved past the log.

    A checkpoint is written from a cache that took renewals made outside the log, so its
    lease expiries and agents' last-seen times may differ from a replay of the log alone;
    `dibs doctor` compares everything else.
    """
    agents = {
        name: {k: v for k, v in agent.items() if k not in ("seen", "seen_wall", "seen_boot")}
        for name, agent in data["agents"].items()
    }
    claims = {
        text: {
            name: {k: v for k, v in lease.items() if k != "expires"} for name, lease in held.items()
        }
        for text, held in data["claims"].items()
    }
    return data | {"agents": agents, "claims": claims}
