"""Who is acting, and how dibs knows: the one home for identity.

Two kinds of actor may touch an agent's claims, worktree, branch, gates or documents:

* an **agent**, proven by its session token: ``--agent/--token``, else
  ``DIBS_AGENT``/``DIBS_TOKEN``, else the identity `dibs start` recorded in the worktree's git
  dir (`resolve`); the token is checked against the hash the log keeps (`verify`);
* a **person acting as themselves** (an *operator*): the OS user and host this process runs as
  (`operator`), never a name typed on the command line. A person acts only with an explicit
  override (``--as-operator``, or a verb that is an override by nature such as ``evict``), and
  the log records ``by: user@host``. Agent names cannot contain ``@``, so the two never mix.

Naming an agent proves nothing: an act with an agent's name and no (or a wrong) token is
refused with exit 1 (`AuthError`); a verified agent acting on another agent's work is refused
with exit 3 (`Refused`, `not_yours`).

Hot path: this module imports only what the claim path imports (``pwd`` only when an operator
acts).
"""

from __future__ import annotations

import os

from dibs.core.leases import authenticate
from dibs.ground.errors import AuthError, DibsError, Refused

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

    from dibs.core.state import AgentRecord, State
    from dibs.ground.git.discover import Repo

#: The flag a person passes to act on another agent's work as themselves.
OPERATOR_FLAG = "--as-operator"


def secret_hash(token: str) -> str:
    """The stored form of a session token (the token itself is never written down)."""
    try:
        # The builtin module: hashlib would load OpenSSL, 3 ms on every CLI call.
        from _blake2 import blake2b
    except ImportError:  # pragma: no cover - every CPython has _blake2
        from hashlib import blake2b
    # Undecodable bytes (from the environment) cannot be any token dibs issued: hash them as
    # they came, so that they are simply a wrong token.
    return blake2b(token.encode(errors="surrogateescape"), digest_size=20).hexdigest()


def resolve(
    repo: Repo | None,
    environ: Mapping[str, str],
    agent: str | None = None,
    token: str | None = None,
) -> tuple[str | None, str | None]:
    """Who claims to act: flags, then DIBS_AGENT/DIBS_TOKEN, then the worktree's identity.

    Nothing is verified here: pair the answer with `verify` (or `verified`) against a state.
    """
    agent = agent or environ.get("DIBS_AGENT") or None
    token = token or environ.get("DIBS_TOKEN") or None
    if agent is None and repo is not None:
        from dibs.ground.git.discover import worktree_identity

        recorded = worktree_identity(repo)
        if recorded is not None:
            agent, token = recorded
    return agent, token


def require(agent: str | None, token: str | None) -> tuple[str, str]:
    """*agent* and its token's hash; `AuthError` (exit 1) when either is missing."""
    if not agent:
        raise AuthError(
            "no agent given",
            hint="pass --agent NAME --token TOKEN, or set DIBS_AGENT and DIBS_TOKEN "
            f"(see `dibs agent register NAME --eval`); a person passes {OPERATOR_FLAG}",
        )
    if not token:
        raise AuthError(
            f"no session token for agent {agent!r}",
            hint="pass --token TOKEN or set DIBS_TOKEN (printed by `dibs agent register`); "
            "naming an agent proves nothing",
        )
    return agent, secret_hash(token)


def verify(state: State, agent: str | None, token: str | None) -> AgentRecord:
    """The record of *agent* when *token* is its session token.

    Raises:
        AuthError: no agent, no token, or the wrong token (exit 1).
        NotFound: no agent of that name is registered (exit 1).
        LeaseLost: the token belonged to an earlier registration of that name (exit 4).
    """
    name, secret = require(agent, token)
    return authenticate(state, name, secret)


def verified(state: State, agent: str | None, token: str | None) -> str | None:
    """*agent* when *token* is its session token, else None (for guards that only look)."""
    try:
        return verify(state, agent, token)["name"]
    except DibsError:
        return None


def operator() -> str:
    """The person running this process: ``user@host`` from the OS (neither ``$USER`` nor
    ``DIBS_HOST``: nothing a caller types)."""
    import pwd

    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = f"uid{uid}"
    from dibs.ground import platform

    return f"{user}@{platform.host_name()}"


class Actor:
    """Who acts on something: a verified agent (``agent``) or an operator (``operator``).

    ``by`` is what the log records: the agent's name, or ``user@host`` for a person.
    """

    __slots__ = ("agent", "by")

    def __init__(self, agent: str | None, by: str):
        self.agent = agent
        self.by = by

    @property
    def is_operator(self) -> bool:
        """Whether a person acts (with an override), not an agent."""
        return self.agent is None

    def __repr__(self) -> str:
        return f"Actor(agent={self.agent!r}, by={self.by!r})"


def actor(
    state: State, agent: str | None, token: str | None, *, as_operator: bool = False
) -> Actor:
    """The verified actor: the person running this process with *as_operator*, else the
    agent proven by *token* (`verify`'s errors when it is not)."""
    if as_operator:
        return Actor(None, operator())
    return Actor(verify(state, agent, token)["name"], agent or "")


def not_yours(acting: Actor, owner: str | None, what: str) -> Refused | None:
    """The refusal (exit 3) when a verified agent acts on *owner*'s *what*; None when allowed.

    An operator may act on anyone's work; an agent only on its own (or on what nobody owns).
    """
    if acting.is_operator or owner is None or owner == acting.agent:
        return None
    return Refused(
        f"{what} is {owner}'s work, not {acting.agent}'s",
        hint=f"only {owner} (with its token) may do that; a person overrides it as themselves "
        f"with {OPERATOR_FLAG} (logged with the OS user and host)",
        owner=owner,
        actor=acting.agent,
    )
