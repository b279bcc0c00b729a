"""dibs.service.identity: the one place that says who is acting and how dibs knows."""

from __future__ import annotations

import os
import pwd

import pytest

from dibs.core.leases import Context, Register, decide
from dibs.core.state import State, apply, seal
from dibs.ground.errors import EXIT_REFUSED, AuthError, NotFound
from dibs.service import identity
from tests.conftest import FakeClock


def registered(clock: FakeClock, name: str, token: str) -> State:
    state = State()
    decision = decide(
        state, Register(name, identity.secret_hash(token), host="h", ttl=90), Context(clock())
    )
    for event in seal(decision.events, state.seq):
        apply(state, event)
    return state


def test_only_the_right_token_verifies_an_agent(clock: FakeClock) -> None:
    """A name alone, a wrong token or an unknown agent never verifies."""
    state = registered(clock, "alice", "tok")
    assert "alice" == identity.verify(state, "alice", "tok")["name"]
    for agent, token, error in (
        (None, None, AuthError),
        ("alice", None, AuthError),
        ("alice", "guess", AuthError),
        ("bob", "tok", NotFound),
    ):
        with pytest.raises(error):
            identity.verify(state, agent, token)
        assert identity.verified(state, agent, token) is None


def test_an_operator_is_the_os_user_and_host_never_a_typed_name(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """USER and DIBS_HOST from the environment are ignored; the actor needs no agent."""
    monkeypatch.setenv("USER", "boss")
    monkeypatch.setenv("DIBS_HOST", "elsewhere")
    person = f"{pwd.getpwuid(os.geteuid()).pw_name}@{os.uname().nodename}"
    acting = identity.actor(State(), "alice", "guess", as_operator=True)
    assert (None, person) == (acting.agent, acting.by)
    assert acting.is_operator


def test_another_agents_work_is_refused_with_exit_3(clock: FakeClock) -> None:
    """An agent acts on its own work only; an operator on anyone's."""
    state = registered(clock, "bob", "tok")
    bob = identity.actor(state, "bob", "tok")
    refusal = identity.not_yours(bob, "alice", "the worktree of X-1")
    assert refusal is not None
    assert EXIT_REFUSED == refusal.exit_code
    assert "--as-operator" in (refusal.hint or "")
    assert identity.not_yours(bob, "bob", "it") is None
    assert (
        identity.not_yours(identity.actor(state, None, None, as_operator=True), "alice", "it")
        is None
    )
