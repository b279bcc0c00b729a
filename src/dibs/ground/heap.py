"""The heap of a long-lived process: stop the cyclic collector walking a large state again
and again.

A namespace's state is plain dicts and lists that hold no reference cycles, so the cyclic
garbage collector can never free any of it; yet each of its full collections walks every
object alive. With 10,000 agents that is a pause of 0.1 to 0.5 s, once or twice a minute, in
the middle of whatever request was being answered (`bench/fleet.py`: 16 client processes,
each paused so, fell seconds behind their schedule). `settle_heap` collects once and moves
everything alive into the permanent generation (``gc.freeze``): later collections walk only
what came after. Objects stay reference-counted, so a frozen agent that leaves is still
freed.

For processes that keep a state for long: the CLI helper, the MCP server, the dashboard, a
long-running program on the Python API (`dibs.settle_heap`, after its first read). A short
CLI call never needs it: the collection it starts with would cost more than it saves.
"""

from __future__ import annotations

import gc


def settle_heap() -> None:
    """Collect, then freeze what is alive (see the module docstring)."""
    gc.collect()
    gc.freeze()
