"""Shared rate limits: token buckets every agent takes from atomically.

``set NAME --capacity N --per S`` makes a bucket of N tokens refilled at N per S seconds;
``update NAME --remaining R --reset-at T`` corrects it from an API's own headers (R left until
the wall time T, then full); ``take NAME --cost C`` takes C tokens or says how long to wait.
The bucket lives in the log (table ``limits``), and the arithmetic runs inside the store's
transaction with the store's clock, so two agents never spend the same token.
"""

from __future__ import annotations

import contextlib
import os
import re

from dibs.core.events import new_event
from dibs.core.leases import Decision
from dibs.ground.errors import DibsError, LockTimeout, NotFound, Refused, UsageError
from dibs.service.checks import check_number, check_wait

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    from dibs.core.leases import Context
    from dibs.core.state import State
    from dibs.service import Coordinator

TABLE = "limits"


class Exhausted(Refused):
    """Not enough tokens in the bucket."""

    code = "rate-limited"


def _name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise UsageError(f"{name!r} is not a limit name", hint="letters, digits, '.', '_', '-'")
    return name


#: Bucket sizes, costs and periods stay below this.
MAX_AMOUNT = 1e12
#: Reset times are unix seconds up to the end of year 9999.
MAX_WALL = 253402300799.0


def _positive(value: float, what: str) -> float:
    return float(check_number(value, what, low=0, high=MAX_AMOUNT, above=True))


def _level(bucket: dict[str, Any], now_wall: float) -> float:
    """Tokens in *bucket* at *now_wall* (refilled since its last change, capped)."""
    reset_at = bucket.get("reset_at")
    if reset_at is not None and now_wall < reset_at:
        return float(bucket["tokens"])  # the API said: this many until reset_at
    since = bucket["at"] if reset_at is None else max(bucket["at"], reset_at)
    tokens = (
        bucket["capacity"] if reset_at is not None and bucket["at"] < reset_at else bucket["tokens"]
    )
    rate = bucket["capacity"] / bucket["per"]
    return float(min(bucket["capacity"], tokens + max(0.0, now_wall - since) * rate))


def _event(ctx: Context, op: str, name: str, value: dict[str, Any], **extra: Any) -> Any:
    return new_event(op, ctx.now, table=TABLE, key=name, value=value, **extra)


def _by(coord: Coordinator, state: State, as_operator: bool) -> str:
    """Who reshapes a shared bucket: a verified agent, or a person with *as_operator*."""
    from dibs.service.identity import actor

    return actor(state, coord.agent, coord.token, as_operator=as_operator).by


def set_limit(
    coord: Coordinator, name: str, *, capacity: float, per: float, as_operator: bool = False
) -> dict[str, Any]:
    """Make (or reshape) bucket *name*: *capacity* tokens, refilled at capacity per *per* s.

    Every agent's calls depend on the bucket: only a verified agent (its token) or a person
    with *as_operator* may set it (``by`` is logged).
    """
    name, capacity, per = _name(name), _positive(capacity, "capacity"), _positive(per, "per")
    return _reshape(
        coord,
        as_operator,
        lambda state, ctx, by: decide_set(state, ctx, by, name, capacity=capacity, per=per),
    )


def decide_set(
    state: State, ctx: Context, by: str, name: str, *, capacity: float, per: float
) -> Decision:
    """Bucket *name* made or reshaped by *by*: a full new bucket, or the old one's tokens now
    (capped by the new capacity). Pure."""
    old = state.tables.get(TABLE, {}).get(name)
    tokens = capacity if old is None else min(capacity, _level(old, ctx.now.wall))
    value = {"capacity": capacity, "per": per, "tokens": tokens, "at": ctx.now.wall}
    event = _event(ctx, "limit-set", name, value, by=by)
    return Decision([event], result={"name": name, **value})


def update(
    coord: Coordinator,
    name: str,
    *,
    remaining: float,
    reset_at: float,
    as_operator: bool = False,
) -> dict[str, Any]:
    """Trust the API: *remaining* tokens until the wall time *reset_at*, then a full bucket.

    Like `set_limit`, only for a verified agent or a person with *as_operator*.
    """
    name = _name(name)
    remaining = check_number(remaining, "remaining", low=0, high=MAX_AMOUNT)
    hint = "give unix seconds (or ISO 8601 on the command line) from 1970 to 9999"
    reset_at = check_number(reset_at, "reset-at", low=0, high=MAX_WALL, hint=hint)
    return _reshape(
        coord,
        as_operator,
        lambda state, ctx, by: decide_update(
            state, ctx, by, name, remaining=remaining, reset_at=reset_at
        ),
    )


def decide_update(
    state: State, ctx: Context, by: str, name: str, *, remaining: float, reset_at: float
) -> Decision:
    """Bucket *name* as an API's headers say (*remaining* tokens until *reset_at*), set by
    *by*; refused when there is no such bucket. Pure."""
    old = state.tables.get(TABLE, {}).get(name)
    if old is None:
        return Decision(error=NotFound(f"no limit {name!r}", hint=f"dibs limit set {name} ..."))
    value = {**old, "tokens": min(float(remaining), old["capacity"]), "at": ctx.now.wall}
    value["reset_at"] = float(reset_at)
    event = _event(ctx, "limit-update", name, value, by=by)
    return Decision([event], result={"name": name, **value})


def _reshape(
    coord: Coordinator, as_operator: bool, decide: Callable[[State, Context, str], Decision]
) -> dict[str, Any]:
    """Run *decide* in one step with who reshapes the bucket (`_by`), refused when no one
    verified acts."""

    def step(state: State, ctx: Context) -> Decision:
        try:
            by = _by(coord, state, as_operator)
        except DibsError as exc:
            return Decision(error=exc)
        return decide(state, ctx, by)

    return dict(coord.transact(step).result)


def take(
    coord: Coordinator, name: str, *, cost: float = 1.0, wait: float | None = None
) -> dict[str, Any]:
    """Take *cost* tokens from *name*, atomically across agents.

    Raises:
        Exhausted: not enough tokens (exit 3), with ``retry_after`` seconds; with *wait*,
            `LockTimeout` once the wait runs out.
    """
    from dibs.ground.backoff import Backoff

    name, cost = _name(name), _positive(cost, "cost")
    wait = check_wait(wait)
    pause = Backoff(wait or 0.0)
    who = coord.agent or os.environ.get("USER") or "unknown"
    while True:
        try:
            return dict(coord.transact(lambda s, ctx: decide_take(s, ctx, name, cost, who)).result)
        except Exhausted as exc:
            if pause.expired():
                if not wait:
                    raise
                raise LockTimeout(
                    f"{exc.message} (gave up after {wait:g} s)", **exc.details
                ) from exc
            pause.sleep(pause.told(max(0.01, float(exc.details["retry_after"]))))


def decide_take(state: State, ctx: Context, name: str, cost: float, who: str) -> Decision:
    """The token bucket's verdict on taking *cost* tokens from *name* for *who* at ``ctx.now``:
    a ``limit-take`` event and what remains, or the refusal (no such limit, more than its
    capacity, or `Exhausted` with ``retry_after`` seconds). Pure: the state and the time in,
    the decision out."""
    bucket = state.tables.get(TABLE, {}).get(name)
    if bucket is None:
        return Decision(error=NotFound(f"no limit {name!r}", hint=f"dibs limit set {name} ..."))
    if cost > bucket["capacity"]:
        return Decision(error=UsageError(f"cost {cost:g} is more than {name}'s capacity"))
    level = _level(bucket, ctx.now.wall)
    if level < cost:
        rate = bucket["capacity"] / bucket["per"]
        after = (cost - level) / rate
        if bucket.get("reset_at") is not None and ctx.now.wall < bucket["reset_at"]:
            after = bucket["reset_at"] - ctx.now.wall
        return Decision(
            error=Exhausted(
                f"{name} has {level:.2f} tokens, {cost:g} asked; retry in {after:.1f} s",
                hint="wait for it: --wait SECONDS",
                retry_after=round(after, 3),
                remaining=round(level, 3),
            )
        )
    value = {**bucket, "tokens": level - cost, "at": ctx.now.wall}
    if value.get("reset_at") is not None and ctx.now.wall >= value["reset_at"]:
        del value["reset_at"]
    event = _event(ctx, "limit-take", name, value, agent=who, note=f"cost {cost:g}")
    return Decision([event], result={"name": name, "cost": cost, "remaining": value["tokens"]})


@contextlib.contextmanager
def taking(
    coord: Coordinator, name: str, *, cost: float = 1.0, wait: float | None = None
) -> Iterator[dict[str, Any]]:
    """``with taking(dibs, "github", wait=60): call_the_api()`` takes the tokens first."""
    yield take(coord, name, cost=cost, wait=wait)


def status(coord: Coordinator) -> list[dict[str, Any]]:
    """Every bucket with its tokens now."""
    state, now = coord.read()
    return [
        {"name": name, **bucket, "tokens": round(_level(bucket, now.wall), 3)}
        for name, bucket in sorted(state.tables.get(TABLE, {}).items())
    ]
