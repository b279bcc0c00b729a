"""Deadlocks among waiting claims: the wait-for graph and the cycle a new wait would close.

A ``--wait`` claim that is blocked records a *wait* (table ``waits``, key: the agent): the
resources it wants, its mode, until when the record holds, and which process waits. Agent A
*waits for* agent B when B holds, in a mode that excludes A's, a resource A waits for. A wait
that closes a cycle in that graph can never end by waiting: every agent on the cycle sleeps
until its timeout. So the claim whose wait would close it is refused at once (`Deadlock`).

Which waiter is refused: the one whose wait closes the cycle, i.e. the last to arrive. It is
the only choice that needs no knowledge beyond the one atomic step that records the wait: the
others' waits were legal when they were recorded, and the store decides one transaction at a
time, so of two agents closing a cycle at the same moment the second sees the first's edge and
is the one refused. The refused agent loses nothing it holds, and its refusal (exit 3) names the
cycle, so it can release what it holds and let the others through.

Pure: no I/O, no clock. Graph edges are computed from the current holders at decision time,
so a wait stays accurate when the resource it wants changes hands.
"""

from __future__ import annotations

from dibs.core.events import new_event

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from dibs.core.events import Event
    from dibs.ground.now import Now

    #: One step of a cycle: (waiter, resource it waits for, holder of that resource).
    Step = tuple[str, str, str]

__all__ = ["TABLE", "describe", "find_cycle", "wait_end"]

#: The state table of recorded waits (key: the waiting agent).
TABLE = "waits"


def find_cycle(
    graph: Mapping[str, Mapping[str, str]], agent: str, wants: Mapping[str, str]
) -> list[Step] | None:
    """The shortest cycle that *agent*'s new wait would close, or None.

    Args:
        graph: the recorded waits: waiter -> {holder: the resource it waits for from them}.
            Edges out of *agent* itself are ignored (its new wait replaces them).
        agent: the claimant about to wait.
        wants: its new edges: holder -> the resource it waits for from them.

    Returns:
        The cycle as steps ``(waiter, resource, holder)``, starting with *agent* and ending
        with a step whose holder is *agent*. Ties between cycles of one length are broken by
        name order, so the answer is deterministic.
    """
    parents: dict[str, tuple[str, str]] = {}  # node -> (the node before it, resource)
    frontier: list[str] = []
    for holder in sorted(wants):
        if holder == agent:
            return [(agent, wants[holder], agent)]
        parents[holder] = (agent, wants[holder])
        frontier.append(holder)
    while frontier:
        following: list[str] = []
        for node in frontier:
            edges = graph.get(node, {})
            for holder in sorted(edges):
                if holder == agent:
                    return [*_path(parents, agent, node), (node, edges[holder], agent)]
                if holder not in parents:
                    parents[holder] = (node, edges[holder])
                    following.append(holder)
        frontier = following
    return None


def _path(parents: Mapping[str, tuple[str, str]], agent: str, node: str) -> list[Step]:
    steps: list[Step] = []
    while node != agent:
        before, resource = parents[node]
        steps.append((before, resource, node))
        node = before
    return steps[::-1]


def describe(cycle: list[Step]) -> str:
    """``deadlock: alice waits for issue:B held by bob, who waits for issue:A held by alice``."""
    parts = [f"{cycle[0][0]} waits for {cycle[0][1]} held by {cycle[0][2]}"]
    parts += [f"who waits for {resource} held by {holder}" for _, resource, holder in cycle[1:]]
    return "deadlock: " + ", ".join(parts)


def wait_end(agent: str, reason: str, now: Now) -> Event:
    """The ``wait-end`` event: *agent*'s recorded wait is over (granted, gave up, deadlock)."""
    return new_event("wait-end", now, agent=agent, reason=reason, table=TABLE, key=agent)
