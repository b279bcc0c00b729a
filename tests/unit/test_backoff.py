"""The one retry loop's arithmetic (dibs.ground.backoff): doubling to a cap, spread, within
a deadline. No sleeping: pauses are computed, not waited."""

from __future__ import annotations

from dibs.ground.backoff import Backoff, jitter


def test_pauses_double_up_to_the_cap() -> None:
    """Unspread, the pauses are first, twice that, and so on, never above the cap."""
    pause = Backoff(1000.0, first=0.05, cap=0.3, spread=False)
    assert [0.05, 0.1, 0.2, 0.3, 0.3] == [pause.pause() for _ in range(5)]


def test_spread_pauses_stay_between_half_and_the_whole_delay() -> None:
    """Each spread pause is the delay times a jitter in [0.5, 1)."""
    pause = Backoff(1000.0, first=1.0, cap=1.0)
    pauses = [pause.pause() for _ in range(200)]
    assert all(0.5 <= p < 1.0 for p in pauses)
    assert all(0.5 <= jitter() < 1.0 for _ in range(200))


def test_a_deadline_reached_gives_up_and_pauses_no_more() -> None:
    """With no time left, the loop is told to stop and a pause is zero, never negative."""
    pause = Backoff(0.0, first=5.0)
    assert pause.expired()
    assert 0.0 == pause.pause()
    assert 0.0 == pause.told(30.0)


def test_without_a_deadline_the_loop_never_expires() -> None:
    """within=None: the caller decides when to stop."""
    pause = Backoff(None, first=0.05, spread=False)
    assert not pause.expired()
    assert float("inf") == pause.remaining()
    assert 0.05 == pause.pause()


def test_told_pauses_stretch_by_up_to_half_again() -> None:
    """Told to come back in 2 s, a waiter pauses from 2 s up to (not including) 3 s."""
    pause = Backoff(1000.0)
    assert all(2.0 <= pause.told(2.0) < 3.0 for _ in range(200))
